package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestLostTunnelCostsNoConnect: Envoy gives each apiserver-proxy worker its
// own share of a node's tunnels and sends all of a worker's streams to the
// node through one of them. With the default tunnelsPerEndpoint and the
// workers the manifests deploy, each worker also holds a spare, so when the
// tunnel carrying its streams ends (a reset, a NAT dropping the flow) the
// next CONNECT takes the spare instead of failing until the node re-dials.
// The fault is real: the tunnel that carried the CONNECTs is shut down
// inside the running apiserver proxy, which must let go of it before the
// CONNECTs are counted, and the node proxy must dial a replacement. With
// one tunnel per worker (the old default, 2) the same fault failed 7 to 82
// of 100 CONNECTs over 2 s with 502, until the node had re-dialled.
func TestLostTunnelCostsNoConnect(t *testing.T) {
	needOtherProcessSockets(t)
	apiWorkers, nodeWorkers := manifestWorkers(t)
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	s := tp.settings
	if perWorker := nodeWorkers * int(s.TunnelsPerEndpoint) / apiWorkers; perWorker < 2 {
		t.Fatalf("with %d node worker(s) x tunnelsPerEndpoint %d over %d apiserver-proxy workers, a worker holds %d tunnel(s) per node: no spare",
			nodeWorkers, s.TunnelsPerEndpoint, apiWorkers, perWorker)
	}
	tp.startAPIServerProxy("--concurrency", strconv.Itoa(apiWorkers))
	tp.startNodeProxyWithFlags("node-a", "--concurrency", strconv.Itoa(nodeWorkers))
	socket, target := s.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
	port, want := int(s.TunnelPort), nodeWorkers*int(s.TunnelsPerEndpoint)
	tunnels := func() []tcpSocket {
		return tcpSockets(t, tp.apiProxy.PID(), func(local, _ int) bool { return local == port })
	}
	waitFor(t, 10*time.Second, fmt.Sprintf("the node's %d tunnels at the apiserver proxy", want), func() bool {
		held, err := tunnelsPerNode(tp.apiProxy) // Envoy's own count: handshakes done
		return err == nil && held["node-a"] == want && len(tunnels()) == want
	})
	idle := tunnels()
	for i := range 20 { // every worker sends streams through (and so pools) one of its tunnels
		if got, status := roundTrip(t, socket, target); status != http.StatusOK || got != "node-a/pod web-a" {
			t.Fatalf("CONNECT %d before the fault: status %d, answer %q", i+1, status, got)
		}
	}

	// The tunnel to end is one that carried those CONNECTs: the one whose
	// received bytes grew most (an idle tunnel gets only pings).
	used := tunnels()
	grown := func(s tcpSocket) int {
		for _, before := range idle {
			if before.peer == s.peer {
				return int(s.received - before.received)
			}
		}
		return 0
	}
	busiest := slices.MaxFunc(used, func(a, b tcpSocket) int { return grown(a) - grown(b) })
	if grown(busiest) < 500 {
		t.Fatalf("no tunnel carried the CONNECTs (bytes received per tunnel before %v, after %v)", idle, used)
	}
	if !shutDownSocket(t, tp.apiProxy.PID(), busiest) {
		t.Fatalf("the busiest tunnel (%+v) is gone before the fault", busiest)
	}
	// A stream sent into a tunnel as it dies is lost whatever the spares;
	// the claim is about the CONNECTs after: once Envoy has let go of it.
	isGone := func() bool {
		return !slices.ContainsFunc(tunnels(), func(s tcpSocket) bool { return s.peer == busiest.peer })
	}
	waitFor(t, 2*time.Second, "the apiserver proxy to let go of the tunnel shut down", isGone)
	var failed []string
	start := time.Now()
	for i := range 100 {
		if got, status := roundTrip(t, socket, target); status != http.StatusOK || got != "node-a/pod web-a" {
			failed = append(failed, fmt.Sprintf("#%d at %v: status %d", i+1, time.Since(start).Round(time.Millisecond), status))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(failed) > 0 {
		// What the apiserver proxy's pool to the node and its tunnels
		// counted, to tell a stream lost in the dead tunnel from one
		// waiting for a connection (status 0: no answer in 5 s; seen once
		// in a cold CI run, not reproduced in 80 runs under load).
		t.Errorf("%d of 100 CONNECTs failed after a tunnel ended: %v\n%s", len(failed), failed,
			nonZero(tp.apiProxy.Stats("cluster.node/node-a."), tp.apiProxy.Stats("reverse_tunnel"), tp.apiProxy.Stats("http.apiserver_egress.")))
	}

	// The node dials a replacement.
	waitFor(t, 10*time.Second, fmt.Sprintf("%d tunnels again, without the one shut down", want), func() bool {
		held, err := tunnelsPerNode(tp.apiProxy)
		return err == nil && held["node-a"] == want && len(tunnels()) == want && isGone()
	})
}
