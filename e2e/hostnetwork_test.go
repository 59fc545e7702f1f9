package e2e

import (
	"fmt"
	"net/http"
	"testing"
)

// TestHostNetworkPodPortsReachable: `kubectl get --raw
// .../pods/kube-proxy-x:10249/proxy/metrics` CONNECTs to the node's own
// address on a hostNetwork pod's port. The node proxy accepts its own
// addresses on the ports its hostNetwork pods declare (TCP), and still on
// no other port but the kubelet's.
func TestHostNetworkPodPortsReachable(t *testing.T) {
	metricsPort := freePort(t)
	tp := newTopologyWithItems(t, nil, fmt.Sprintf(`
- apiVersion: v1
  kind: Pod
  metadata: {name: kube-proxy-a, namespace: kube-system}
  spec:
    nodeName: node-a
    hostNetwork: true
    containers: [{name: kube-proxy, ports: [{containerPort: %d}]}]
  status: {phase: Running, podIP: 127.0.1.1}
`, metricsPort))
	serve(t, "127.0.1.1", metricsPort, "node-a/kube-proxy metrics")
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	target := fmt.Sprintf("127.0.1.1:%d", metricsPort)
	if got, status := roundTrip(t, sock, target); status != http.StatusOK || got != "node-a/kube-proxy metrics" {
		t.Errorf("CONNECT %s (a hostNetwork pod's declared port): status %d, answer %q", target, status, got)
	}
	other := fmt.Sprintf("127.0.1.1:%d", metricsPort+1)
	if _, status := roundTrip(t, sock, other); status == http.StatusOK {
		t.Errorf("CONNECT %s (a port no hostNetwork pod declares) succeeded", other)
	}
}
