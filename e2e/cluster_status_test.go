package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// kubectlSpoke runs `kubectl spoke ARGS` as an operator would: the real
// kubectl, which finds the plugin kubectl-spoke (the spoke binary under that
// name) on PATH, with the admin kubeconfig and nothing else.
func kubectlSpoke(t *testing.T, cp *controlPlane, args ...string) (string, error) {
	t.Helper()
	// kubectl passes a plugin the arguments after its name, and refuses
	// flags before it.
	cmd := exec.Command(kubeTool(t, "kubectl"), append(append([]string{"spoke"}, args...), "--kubeconfig", cp.adminKubeconfig(t))...)
	cmd.Env = append(os.Environ(), "PATH="+pluginDir(t)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// pluginDirs are the tests' plugin directories, made once per test.
var pluginDirs sync.Map // *testing.T -> string

// pluginDir is a directory holding the spoke binary as kubectl-spoke, for
// PATH: the kubectl plugin, as an operator installs it.
func pluginDir(t *testing.T) string {
	t.Helper()
	if dir, ok := pluginDirs.Load(t); ok {
		return dir.(string)
	}
	dir := filepath.Join(t.TempDir(), "plugins")
	t.Cleanup(func() { pluginDirs.Delete(t) })
	defer pluginDirs.Store(t, dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(buildSpoke(t), filepath.Join(dir, "kubectl-spoke")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkTunnelLossReadWithKubectl cuts node's network (its link to the
// host goes down: the node proxy can reach no server, and nothing on the
// control plane can reach the node) and reads, with kubectl alone, which
// node lost its tunnels and why: kubectl spoke status lists it without
// tunnel, its node proxy connected to no server, no tunnel refused, and
// spoke's TunnelsLost Event on the Node; kubectl describe node shows that
// Event too. The link comes back, and TunnelsRestored follows.
func checkTunnelLossReadWithKubectl(t *testing.T, cp *controlPlane, apiProxy *envoytest.Process, n *kubeNode) {
	t.Helper()
	link := func(state string) {
		if out, err := exec.Command("ip", "link", "set", n.netns, state).CombinedOutput(); err != nil {
			t.Fatalf("ip link set %s %s: %v %s", n.netns, state, err, out)
		}
	}
	link("down")
	cut := time.Now()
	restored := false
	defer func() {
		if !restored {
			link("up")
		}
	}()
	waitFor(t, 60*time.Second, n.name+"'s tunnels to go", func() bool { held, err := tunnelsPerNode(apiProxy); return err == nil && held[n.name] == 0 })
	t.Logf("%s cut off: its tunnels gone from the apiserver proxy after %v", n.name, time.Since(cut).Round(time.Second))
	var out string
	defer func() {
		if t.Failed() {
			t.Logf("the last kubectl spoke status:\n%s", out)
		}
	}()
	// The xDS stream of its node proxy ends on the server's keepalive
	// (30 s + 10 s without an answer).
	waitFor(t, 90*time.Second, "kubectl spoke status to name "+n.name+" without tunnel, its node proxy connected nowhere, and the TunnelsLost Event", func() bool {
		var err error
		out, err = kubectlSpoke(t, cp, "status")
		return err == nil && containsLine(out, n.name, "control-plane-1", "not connected to any server", "none") &&
			containsLine(out, n.name, "TunnelsLost", "no tunnel of it was refused")
	})
	t.Logf("%v after the cut, kubectl spoke status:\n%s", time.Since(cut).Round(time.Second), out)
	// On the node itself: the node proxy's log file, where the kubelet
	// writes it (this test's kubelets: <node dir>/pod-logs, the
	// --pod-logs-dir docs/operations.md names at its default).
	files, _ := filepath.Glob(filepath.Join(n.dir, "pod-logs", "spoke-system_spoke-node-proxy-*", "envoy", "*.log"))
	lost, last := false, ""
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		lost = lost || strings.Contains(string(raw), "reverse_tunnel: Connection failed") || strings.Contains(string(raw), "Failed to create any reverse connections")
		last = tail(string(raw), 5)
	}
	if !lost {
		t.Errorf("%s's node proxy log files %v do not say its tunnels fail; the last lines:\n%s", n.name, files, last)
	}
	describe := kubectl(t, cp, nil, "describe", "node", n.name)
	if !containsLine(describe, "Warning", "TunnelsLost", "spoke-server") {
		t.Errorf("kubectl describe node %s shows no TunnelsLost Event from spoke-server:\n%s", n.name, describe)
	}

	link("up")
	restored = true
	back := time.Now()
	waitFor(t, 90*time.Second, "kubectl spoke status to show "+n.name+"'s TunnelsRestored Event", func() bool {
		var err error
		out, err = kubectlSpoke(t, cp, "status")
		return err == nil && containsLine(out, n.name, "TunnelsRestored", "again")
	})
	t.Logf("%s's link up: TunnelsRestored in kubectl spoke status after %v", n.name, time.Since(back).Round(time.Second))
}

// containsLine reports whether one line of out holds every part, in order.
func containsLine(out string, parts ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := line, true
		for _, p := range parts {
			i := strings.Index(rest, p)
			if i < 0 {
				ok = false
				break
			}
			rest = rest[i+len(p):]
		}
		if ok {
			return true
		}
	}
	return false
}
