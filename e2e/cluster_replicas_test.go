package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

// withFlag returns args with every value of flag (a "--flag value" pair)
// replaced.
func withFlag(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := 0; i+1 < len(out); i++ {
		if out[i] == flag {
			out[i+1] = value
		}
	}
	return out
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
	srv2 := startSpokeServer(t, cp2, s2, clusterCAFile, xdsHost, freePort(t))
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
	before := apiProxy2.StatSum("reverse-tunnels.upstream_rq_total")
	for node, pod := range pods {
		start := time.Now()
		logs, err := kubectlRun(t, cp2, nil, "logs", pod, "-c", "logger", "--tail", "1")
		if err != nil || !strings.Contains(logs, "logs_generator.go") {
			t.Errorf("kubectl logs through the second apiserver to %s on %s: %q %v", pod, node, logs, err)
			continue
		}
		t.Logf("second apiserver: kubectl logs to %s (%s) %v", pod, node, time.Since(start).Round(time.Millisecond))
	}
	if after := apiProxy2.StatSum("reverse-tunnels.upstream_rq_total"); after < before+len(pods) {
		t.Errorf("the second apiserver proxy carried %d streams for %d kubectl logs: the second apiserver did not use its own proxy", after-before, len(pods))
	}
	return apiProxy2
}

// checkMissingEgressSocket: a kube-apiserver whose EgressSelectorConfiguration
// names a socket that is not there (a typo, the apiserver proxy not
// running) starts and serves its API; each request that needs a node
// fails with kube-apiserver's own error naming the socket, and nothing
// else breaks. The test logs that error: it is what operators will see
// (docs/operations.md, troubleshooting).
func checkMissingEgressSocket(t *testing.T, cp *controlPlane, s model.Settings, pod string) {
	t.Helper()
	wrong := s
	wrong.EgressSocketPath = filepath.Join(t.TempDir(), "missing.sock")
	replica := cp.startReplica(t, egressSelectorFile(t, wrong, filepath.Join(t.TempDir(), "egress-selector-wrong.yaml")))
	if _, err := kubectlRun(t, replica, nil, "get", "nodes"); err != nil {
		t.Errorf("kube-apiserver with a missing egress socket does not serve its API: %v", err)
	}
	out, err := kubectlRun(t, replica, nil, "logs", pod, "-c", "logger", "--tail", "1")
	if err == nil || !strings.Contains(out+err.Error(), wrong.EgressSocketPath) {
		t.Errorf("kubectl logs through a kube-apiserver with a missing egress socket: want an error naming %s, got %q %v", wrong.EgressSocketPath, out, err)
	} else {
		t.Logf("egress selector naming a missing socket: %s", lastLine(out+err.Error()))
	}
	if logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1"); err != nil || !strings.Contains(logs, "logs_generator.go") {
		t.Errorf("the well-configured kube-apiserver beside it: %q %v", logs, err)
	}
	_ = replica.apiserver.Process.Kill()
}

// checkNodeWithoutKubeletCertificate: a node whose kubelet keeps no client
// certificate where the DaemonSet looks (this one authenticates with a
// token) gets a node proxy pod that stops in its init container with one
// line saying what is missing and what to do; the other nodes keep their
// tunnels.
func checkNodeWithoutKubeletCertificate(t *testing.T, cp *controlPlane, apiProxy *envoytest.Process, pod string, images []string) {
	t.Helper()
	tunnels := apiProxy.StatSum("total_nodes")
	startKubeNodeWith(t, cp, nodeOptions{isolated: true, index: 5}, "node-e", "172.30.5.1", "10.244.5.0/24", images...)
	// Not kubectl logs: that would need node-e's tunnel, which is what
	// fails. The message is in the pod's status.
	var line string
	waitFor(t, 60*time.Second, "node-e's node proxy to say why it cannot start", func() bool {
		pods, err := cp.client().CoreV1().Pods("spoke-system").List(context.Background(), metav1.ListOptions{FieldSelector: "spec.nodeName=node-e"})
		if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.InitContainerStatuses) != 1 {
			return false
		}
		st := pods.Items[0].Status.InitContainerStatuses[0]
		for _, term := range []*corev1.ContainerStateTerminated{st.State.Terminated, st.LastTerminationState.Terminated} {
			if term != nil && term.Message != "" {
				line = lastLine(term.Message)
				return true
			}
		}
		return false
	})
	if !strings.Contains(line, "node node-e") || !strings.Contains(line, "/var/lib/kubelet/pki/kubelet-client-current.pem is missing") || !strings.Contains(line, "--cert-dir") {
		t.Errorf("node-e's bootstrap: want what, where and what to do in one line, got %q", line)
	}
	t.Logf("node without a kubelet client certificate: its node proxy's init container says: %s", line)
	if after := apiProxy.StatSum("total_nodes"); after < tunnels {
		t.Errorf("the other nodes lost tunnels: %d before node-e, %d after", tunnels, after)
	}
	if logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1"); err != nil || !strings.Contains(logs, "logs_generator.go") {
		t.Errorf("kubectl logs beside node-e: %q %v", logs, err)
	}
}
