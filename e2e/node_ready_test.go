package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNodeReadyMeansTunnels: spoke node-ready (the node proxy pod's
// readiness probe), the real binary against a real node proxy, says ready
// only while it holds a tunnel to every apiserver proxy it dials, and names
// the one it lost.
func TestNodeReadyMeansTunnels(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	bin := buildSpoke(t)
	adminFile := filepath.Join(t.TempDir(), "admin-address")
	ready := func() (string, error) {
		out, err := exec.Command(bin, "node-ready", "--admin-address-file", adminFile).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := ready(); err == nil || !strings.Contains(out, "has not written its admin address") {
		t.Errorf("before Envoy starts: %v %q", err, out)
	}
	api := sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	node := sec.startNodeProxy(t, tp.bin, "node-a", false)
	writeTestFile(t, adminFile, []byte(node.Admin+"\n"))
	var out string
	waitFor(t, 10*time.Second, "node-ready to say ready", func() bool {
		var err error
		out, err = ready()
		return err == nil && strings.HasPrefix(out, "ready: tunnels to every apiserver proxy: ")
	})
	t.Logf("holding its tunnels: %s", out)
	api.Stop()
	waitFor(t, 30*time.Second, "node-ready to say not ready, naming the apiserver proxy", func() bool {
		var err error
		out, err = ready()
		return err != nil && strings.Contains(out, "not ready: no tunnel to the apiserver proxy at "+tp.settings.APIServerEndpoints[0])
	})
	t.Logf("its apiserver proxy gone: %s", out)
}
