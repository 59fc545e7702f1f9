package status

import (
	"bufio"
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/metrics"
)

func TestParseTunnelStats(t *testing.T) {
	stats := `reverse_tunnel_responder.nodes.node-a: 2
reverse_tunnel_responder.nodes.node-b.example.com: 4
reverse_tunnel_responder.worker_0.node.node-a: 2
reverse_tunnel_responder.clusters.spoke-nodes: 6
`
	held, err := ParseTunnelStats(bufio.NewScanner(strings.NewReader(stats)))
	if err != nil || len(held) != 2 || held["node-a"] != 2 || held["node-b.example.com"] != 4 {
		t.Errorf("got %v, %v", held, err)
	}
	if _, err := ParseTunnelStats(bufio.NewScanner(strings.NewReader("reverse_tunnel_responder.nodes.x: lots\n"))); err == nil {
		t.Error("a stat that is not a number was accepted")
	}
}

// TestTunnelWatcherFlagsNodesWithoutTunnel: every node of the cluster is
// listed, those without a tunnel flagged and counted; series of nodes gone
// are removed; a failed read keeps the last one and says why.
func TestTunnelWatcherFlagsNodesWithoutTunnel(t *testing.T) {
	nodes := []string{"node-a", "node-b", "node-c"}
	m := metrics.New()
	w := &TunnelWatcher{Admin: "127.0.0.1:9901", Nodes: func() []string { return nodes }, Metrics: m, Log: logrus.New()}
	w.record(map[string]int{"node-a": 2, "node-c": 4}, nil)
	if got := w.Latest().NodesWithoutTunnel(); len(got) != 1 || got[0] != "node-b" {
		t.Errorf("nodes without tunnel: %v", got)
	}
	if v := testutil.ToFloat64(m.NodesWithoutTunnel); v != 1 {
		t.Errorf("spoke_nodes_without_tunnel = %v", v)
	}
	nodes = []string{"node-a"}
	w.record(map[string]int{"node-a": 2}, nil)
	if n := testutil.CollectAndCount(m.Tunnels); n != 1 {
		t.Errorf("%d spoke_tunnels series after two nodes left, want 1", n)
	}
	w.record(nil, errors.New("connection refused"))
	if got := w.Latest(); got.Error == "" || got.Nodes["node-a"] != 2 {
		t.Errorf("a failed read lost the last one or its reason: %+v", got)
	}
}
