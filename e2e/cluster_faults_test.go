package e2e

// Deployment faults tried in the real-cluster test: each must give one
// clear line where the operator looks (docs/operations.md) and break
// nothing else.

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator/model"
)

// checkUnknownNode: a node proxy with a valid kubelet certificate for a
// node the cluster does not have (a DaemonSet pod of another cluster, a
// deleted Node) gets no config, and the server says so in one log line;
// the other nodes' paths are untouched.
func checkUnknownNode(t *testing.T, cp *controlPlane, srv *spokeServer, clusterCA *authtest.CA, tunnelCAFile, envoyBin, pod string) {
	t.Helper()
	sec := &secureServer{clusterCA: clusterCA, dir: t.TempDir(), serverCA: tunnelCAFile, logs: &envoytest.LogBuffer{}, xdsAddr: srv.xds}
	cert, key := clusterCA.KubeletClient(t, "node-ghost")
	ghost := sec.startOutsider(t, envoyBin, "node-ghost", cert, key)
	defer ghost.Stop()
	waitFor(t, 15*time.Second, "the server's line about node-ghost", func() bool { return grepLines(srv.log(), "node/node-ghost") != "" })
	time.Sleep(3 * time.Second) // time for more lines, if it repeats itself
	lines := grepLines(srv.log(), "node/node-ghost")
	if strings.Contains(lines, "\n") || !strings.Contains(lines, "not in the cluster") {
		t.Errorf("a node proxy for a node the cluster does not have: want one server log line saying so, got:\n%s", lines)
	} else {
		t.Logf("node proxy for an unknown node: %s", lines)
	}
	if ready, _ := ghost.Get("/ready"); strings.Contains(ready, "LIVE") {
		t.Error("the unknown node's proxy got a config")
	}
	if logs, err := kubectlRun(t, cp, nil, "logs", pod, "-c", "logger", "--tail", "1"); err != nil || !strings.Contains(logs, "logs_generator.go") {
		t.Errorf("kubectl logs beside the unknown node proxy: %q %v", logs, err)
	}
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
