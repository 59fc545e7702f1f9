package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRotationKeepsTunnelsWorking: with 6-second tunnel certificates (renewed
// after two thirds), a CONNECT stream opened before the first rotation keeps
// echoing every 200 ms through two rotations and past the first
// certificate's expiry, new CONNECTs keep working, and the node proxy
// really switched certificates (its serial changes in Envoy's /certs).
func TestRotationKeepsTunnelsWorking(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	file := writeCluster(t, tp)
	validity := 6 * time.Second
	sec := startSecureServer(t, tp, file, validity)
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	node := sec.startNodeProxy(t, tp.bin, "node-a", false)
	target := fmt.Sprintf("127.1.1.7:%d", tp.port)
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, target)
	firstSerials := tunnelSerials(t, node.Get)

	long := openConnect(t, sock, target)
	defer long.Close()
	lines := bufio.NewReader(long)
	end := time.Now().Add(2*validity + time.Second) // two renewals, and past the first expiry
	for i := 0; time.Now().Before(end); i++ {
		_ = long.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(long, "tick %d\n", i)
		got, err := lines.ReadString('\n')
		if err != nil || got != fmt.Sprintf("node-a/pod web-a: tick %d\n", i) {
			t.Fatalf("the long-lived stream broke at tick %d (%.1fs): %q %v", i, float64(i)*0.2, got, err)
		}
		if i%5 == 0 {
			if got, status := roundTrip(t, sock, target); status != http.StatusOK || got != "node-a/pod web-a" {
				t.Fatalf("a new CONNECT failed at tick %d: %d %q", i, status, got)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if now := tunnelSerials(t, node.Get); now == firstSerials {
		t.Fatalf("the node proxy still uses its first tunnel certificate (serials %s): no rotation happened", now)
	}
}

// openConnect returns an established CONNECT stream to target.
func openConnect(t *testing.T, socket, target string) net.Conn {
	t.Helper()
	conn, _, status, err := sendCONNECT(socket, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusOK {
		conn.Close()
		t.Fatalf("CONNECT %s: status %d", target, status)
	}
	_ = conn.SetDeadline(time.Time{}) // a long-lived stream
	return conn
}

// envoyCert is one certificate Envoy holds, as its /certs admin page lists it.
type envoyCert struct {
	Serial string
	SANs   int  // subject alternative names: tunnel certificates have one, kubelet client certificates none
	CA     bool // a trust bundle entry
}

// envoyCerts lists every certificate of Envoy's /certs.
func envoyCerts(t *testing.T, get func(string) (string, error)) []envoyCert {
	t.Helper()
	body, err := get("/certs")
	if err != nil {
		t.Fatal(err)
	}
	type entry struct {
		SerialNumber string            `json:"serial_number"`
		SANs         []json.RawMessage `json:"subject_alt_names"`
	}
	var certs struct {
		Certificates []struct {
			CACert    []entry `json:"ca_cert"`
			CertChain []entry `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.Unmarshal([]byte(body), &certs); err != nil {
		t.Fatalf("/certs: %v\n%s", err, body)
	}
	var out []envoyCert
	for _, c := range certs.Certificates {
		for _, e := range c.CACert {
			out = append(out, envoyCert{Serial: e.SerialNumber, SANs: len(e.SANs), CA: true})
		}
		for _, e := range c.CertChain {
			out = append(out, envoyCert{Serial: e.SerialNumber, SANs: len(e.SANs)})
		}
	}
	return out
}

// tunnelSerials lists the serial numbers of the certificates Envoy holds
// (its /certs admin page), CA included.
func tunnelSerials(t *testing.T, get func(string) (string, error)) string {
	t.Helper()
	var serials []string
	for _, c := range envoyCerts(t, get) {
		serials = append(serials, c.Serial)
	}
	if len(serials) == 0 {
		t.Fatal("no certificates in /certs")
	}
	return strings.Join(serials, ",")
}
