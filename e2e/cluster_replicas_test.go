package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// addHostAddresses puts addresses on the host's loopback, where the
// control plane runs: each apiserver proxy listens on one, and every node
// routes to the host, so every node reaches all of them. (The VM's kernel
// has no dummy links.)
func addHostAddresses(t *testing.T, addrs ...string) {
	t.Helper()
	for _, a := range addrs {
		_ = exec.Command("ip", "addr", "del", a+"/32", "dev", "lo").Run() // left by an interrupted run
		if out, err := exec.Command("ip", "addr", "add", a+"/32", "dev", "lo").CombinedOutput(); err != nil {
			t.Fatalf("ip addr add %s dev lo: %v %s", a, err, out)
		}
		t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", a+"/32", "dev", "lo").Run() })
	}
}

// startReplica runs a second kube-apiserver on cp's etcd, with its own port
// and egress selector file, as an HA control plane's other member.
func (cp *controlPlane) startReplica(t *testing.T, egressFile string) *controlPlane {
	t.Helper()
	r := *cp
	port := freePort(t)
	r.url = fmt.Sprintf("https://127.0.0.1:%d", port)
	r.args = withFlag(withFlag(cp.args, "--secure-port", fmt.Sprint(port)), "--egress-selector-config-file", egressFile)
	r.logFile = filepath.Join(t.TempDir(), "apiserver-2.log")
	r.kubeconfig = ""
	r.start()
	return &r
}

// egressSelectorFile writes manifests' EgressSelectorConfiguration with
// the egress socket of s.
func egressSelectorFile(t *testing.T, s model.Settings, path string) string {
	t.Helper()
	egress, err := os.ReadFile("../manifests/control-plane/egress-selector-configuration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, path, []byte(strings.ReplaceAll(string(egress), model.DefaultSettings().EgressSocketPath, s.EgressSocketPath)))
	return path
}

// checkSecondAPIServer starts a second kube-apiserver, with its own spoke
// server and apiserver proxy (settings s2: its tunnel address, its egress
// socket), and checks that every node holds tunnels to the new apiserver
// proxy and that kubectl logs through the new apiserver reaches the pods.
func checkSecondAPIServer(t *testing.T, cp *controlPlane, s2 model.Settings, clusterCAFile, xdsHost, envoyBin string, nodes []string, pods map[string]string) *envoytest.Process {
	t.Helper()
	cp2 := cp.startReplica(t, egressSelectorFile(t, s2, filepath.Join(t.TempDir(), "egress-selector-2.yaml")))
	srv2 := startSpokeServer(t, cp2, s2, clusterCAFile, xdsHost, freePort(t), "control-plane-2", "")
	b, err := envoy.Bootstrap(envoy.BootstrapOptions{Role: translator.RoleAPIServer, NodeID: "apiserver-2", XDSSocket: srv2.socket})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	apiProxy2 := envoytest.Start(t, envoyBin, "apiserver-proxy-2", b)
	waitFor(t, 30*time.Second, "every node's tunnels at the second apiserver proxy", func() bool {
		held, err := tunnelsPerNode(apiProxy2)
		for _, n := range nodes {
			if err != nil || held[n] == 0 {
				return false
			}
		}
		return true
	})
	t.Logf("second apiserver: every node (%d) holds tunnels to its apiserver proxy %v after it started", len(nodes), time.Since(start).Round(time.Millisecond))
	before := apiProxy2.StatSumOf("cluster.node/", ".upstream_rq_total")
	for node, pod := range pods {
		start := time.Now()
		logs, err := kubectlRun(t, cp2, nil, "logs", pod, "-c", "logger", "--tail", "1")
		if err != nil || !strings.Contains(logs, "logs_generator.go") {
			t.Errorf("kubectl logs through the second apiserver to %s on %s: %q %v", pod, node, logs, err)
			continue
		}
		t.Logf("second apiserver: kubectl logs to %s (%s) %v", pod, node, time.Since(start).Round(time.Millisecond))
	}
	if after := apiProxy2.StatSumOf("cluster.node/", ".upstream_rq_total"); after < before+len(pods) {
		t.Errorf("the second apiserver proxy carried %d streams for %d kubectl logs: the second apiserver did not use its own proxy", after-before, len(pods))
	}
	return apiProxy2
}
