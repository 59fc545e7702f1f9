package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPodAddressClaimsCannotStealOrReachTheAdmin, with real Envoys: a pod on
// node-a that claims web-b's address (inside node-b's pod CIDR) is refused
// and web-b stays reachable; a pod on node-c (no pod CIDRs, loopback pod
// addresses allowed as in every loopback topology) at the node proxy's
// admin address gets no route to that admin on its port.
func TestPodAddressClaimsCannotStealOrReachTheAdmin(t *testing.T) {
	tp, problems := newTopologyWithProblems(t, nil, `
- apiVersion: v1
  kind: Node
  metadata: {name: node-c}
  status: {addresses: [{type: InternalIP, address: 127.0.3.1}]}
- {apiVersion: v1, kind: Pod, metadata: {name: steals-web-b, namespace: default}, spec: {nodeName: node-a}, status: {phase: Running, podIP: 127.1.2.7}}
- {apiVersion: v1, kind: Pod, metadata: {name: at-admin, namespace: default}, spec: {nodeName: node-c}, status: {phase: Running, podIP: 127.0.0.1}}
`)
	if len(problems) != 1 || !strings.Contains(problems[0].String(), "steals-web-b: pod IP 127.1.2.7 refused") {
		t.Fatalf("want the steal refused and nothing else, got %v", problems)
	}
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	tp.startNodeProxy("node-b", "node-b")
	nodeC := tp.startNodeProxy("node-c", "node-c")
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port))
	for range 20 { // every tunnel of both nodes: none may take it
		if got, status := roundTrip(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port)); status != http.StatusOK || got != "node-b/pod web-b" {
			t.Fatalf("web-b's address: status %d, answer %q; the refused claim took it", status, got)
		}
	}
	if _, err := nodeC.Get("/server_info"); err != nil {
		t.Fatalf("node-c's admin: %v", err)
	}
	// The apiserver proxy routes the pod's address to node-c (502 until
	// node-c's tunnel is up); node-c's own routes must refuse its admin.
	admin := nodeC.Admin
	var status int
	waitFor(t, 30*time.Second, "node-c's answer for its admin address", func() bool {
		conn, br, st, err := sendCONNECT(sock, admin, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if status = st; status == http.StatusOK {
			fmt.Fprintf(conn, "GET /server_info HTTP/1.1\r\nHost: x\r\n\r\n")
			line, _ := br.ReadString('\n')
			t.Fatalf("CONNECT %s through node-c's tunnel reached %q: the node proxy's admin", admin, line)
		}
		return status != http.StatusBadGateway
	})
	if status != http.StatusNotFound {
		t.Fatalf("CONNECT %s (node-c's admin): status %d, want node-c's 404 (no route)", admin, status)
	}
}
