package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/status"
)

// TestStatusShowsTunnelsPerNode: the server reads the tunnels each node
// holds from the apiserver proxy beside it; spoke status and /metrics show
// node-a's tunnels and flag node-b, which has no node proxy.
func TestStatusShowsTunnelsPerNode(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	api := sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sec.srv.WatchTunnels(ctx, api.Admin)

	debug := "http://" + sec.srv.Addr("debug")
	var tunnels status.Tunnels
	waitFor(t, 10*time.Second, "the server to read node-a's tunnels", func() bool {
		body, err := httpBody(debug + "/debug/tunnels")
		return err == nil && json.Unmarshal([]byte(body), &tunnels) == nil && tunnels.Nodes["node-a"] > 0
	})
	if c, ok := tunnels.Nodes["node-b"]; !ok || c != 0 {
		t.Errorf("node-b (no node proxy) should be listed with 0 tunnels: %+v", tunnels.Nodes)
	}
	metrics, _ := httpBody("http://" + sec.srv.Addr("http") + "/metrics")
	for _, want := range []string{`spoke_tunnels{node="node-a"} 2`, `spoke_tunnels{node="node-b"} 0`, "spoke_nodes_without_tunnel 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(metrics, "tunnel"))
		}
	}
	out, err := exec.Command(buildSpoke(t), "status", "--server", debug).CombinedOutput()
	if err != nil {
		t.Fatalf("spoke status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "node-b") || !strings.Contains(string(out), "NO TUNNEL") || !strings.Contains(string(out), "node-a  2") {
		t.Errorf("spoke status does not show node-a's tunnels and flag node-b:\n%s", out)
	}
	t.Logf("spoke status:\n%s", out)
}

func httpBody(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(body), err
}
