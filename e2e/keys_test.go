package e2e

import (
	"encoding/pem"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNoPrivateKeyOutsideSDS runs the secure server at debug log level with
// 3-second tunnel certificates (several rotations) and real Envoys of both
// roles, then scans everything an operator can see — the server's whole
// log, /debug/status, /debug/config of each proxy (what spoke config dump
// prints), /metrics — for PEM private key markers and for the body of any
// key the server currently holds.
func TestNoPrivateKeyOutsideSDS(t *testing.T) {
	tp := newTopology(t)
	file := writeCluster(t, tp)
	sec := startSecureServer(t, tp, file, 3*time.Second)
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	sec.startNodeProxy(t, tp.bin, "node-b", true)
	time.Sleep(5 * time.Second) // at least two renewals for everyone

	outputs := map[string]string{"server log (debug)": sec.logs.String()}
	debug, metrics := "http://"+sec.srv.Addr("debug"), "http://"+sec.srv.Addr("http")
	for _, path := range []string{
		debug + "/debug/status",
		debug + "/debug/config?proxy=apiserver", debug + "/debug/config?proxy=node/node-a", debug + "/debug/config?proxy=node/node-b&output=json",
		metrics + "/metrics",
	} {
		outputs[path] = get(t, path)
	}
	if !strings.Contains(outputs[debug+"/debug/config?proxy=node/node-a"], "spoke-tunnel-node") {
		t.Fatal("the config dump does not even name the secrets: the scan would prove nothing")
	}
	var keyBodies []string
	for _, name := range []string{"node-a", "node-b", tp.settings.APIServerProxyName} {
		c, err := sec.issuer.Certificate(name)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(c.KeyPEM)
		body := strings.Split(strings.TrimSpace(string(pem.EncodeToMemory(&pem.Block{Type: "X", Bytes: block.Bytes}))), "\n")
		keyBodies = append(keyBodies, body[1]) // the first base64 line of the key
	}
	for where, text := range outputs {
		if strings.Contains(text, "PRIVATE KEY") {
			t.Errorf("%s contains a PEM private key marker", where)
		}
		for _, body := range keyBodies {
			if strings.Contains(text, body) {
				t.Errorf("%s contains a tunnel private key", where)
			}
		}
	}
	if len(outputs["server log (debug)"]) < 1000 {
		t.Errorf("the debug log is suspiciously short (%d bytes)", len(outputs["server log (debug)"]))
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}
