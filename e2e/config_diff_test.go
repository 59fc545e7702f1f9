package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// TestConfigDiffShowsARealNack: a node proxy runs an outdated bootstrap
// (without the reverse tunnel extensions, as an old DaemonSet would), so
// the real Envoy refuses the tunnel listeners it is served. spoke config
// diff, the real binary against the server's debug API, names the type
// NACKED, each listener the Envoy does not hold, and Envoy's own message,
// without reaching the Envoy's admin; the types it ACKed are SYNCED with
// nothing differing.
func TestConfigDiffShowsARealNack(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	certPEM, keyPEM := sec.clusterCA.KubeletClient(t, "node-a")
	node := sec.startNode(t, tp.bin, "node-a", false, certPEM, keyPEM, func(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap) *envoytest.Process {
		b.BootstrapExtensions = nil
		return envoytest.StartUnready(t, bin, name, b)
	})
	waitFor(t, 20*time.Second, "the node proxy to refuse its listeners", func() bool { return node.Stat("listener_manager.lds.update_rejected") >= 1 })
	debug := sec.srv.Addr("debug")
	var out string
	waitFor(t, 10*time.Second, "spoke config diff to show the NACK", func() bool {
		raw, err := exec.Command(buildSpoke(t), "config", "diff", "--server", debug, "--proxy", "node/node-a").CombinedOutput()
		out = string(raw)
		return err == nil && strings.Contains(out, "NACKED by the Envoy")
	})
	t.Logf("spoke config diff --proxy node/node-a:\n%s", out)
	if !containsLine(out, "Listener", "NACKED") || !containsLine(out, "Listener", "not held") {
		t.Errorf("the diff does not show the refused listeners as NACKED and not held:\n%s", out)
	}
	for _, typ := range []string{"Cluster", "Secret"} {
		if !containsLine(out, typ, "SYNCED", " 0") {
			t.Errorf("%s: want SYNCED with nothing differing:\n%s", typ, out)
		}
	}

	// The bootstrap view: the node that Envoy sent, with its build.
	raw, err := exec.Command(buildSpoke(t), "config", "dump", "--server", debug, "--proxy", "node/node-a", "--type", "bootstrap").CombinedOutput()
	out = string(raw)
	if err != nil || !strings.Contains(out, "BootstrapConfigDump") || !containsLine(out, "id:", "node-a") || !containsLine(out, "cluster:", "spoke-node") ||
		!containsLine(out, "user_agent_build_version") || strings.Contains(out, "extensions:") {
		t.Errorf("config dump --type bootstrap: %v\n%s", err, out)
	}
	t.Logf("spoke config dump --proxy node/node-a --type bootstrap:\n%s", out)
}
