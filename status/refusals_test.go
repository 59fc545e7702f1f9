package status

import (
	"bufio"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestConnectRefusalsFromEnvoyStats: the apiserver proxy's counters become
// refusals by reason and target; a node name with dots comes back from its
// stat name ('_'); every reason is exported, at zero when none came.
func TestConnectRefusalsFromEnvoyStats(t *testing.T) {
	stats := `cluster.node/node-a.upstream_cx_connect_fail: 3
cluster.node/ip-10-0-0-5_ec2_internal.upstream_rq_active_overflow: 2
cluster.node/node-a.upstream_rq_active_overflow: 0
cluster.node/node-a.upstream_cx_connect_ms: P0(nan,1) P25(nan,1)
cluster.services.upstream_rq_active_overflow: 1
cluster.services.upstream_cx_total: 9
http.apiserver_egress.no_route: 4
`
	r, err := parseConnectRefusals(bufio.NewScanner(strings.NewReader(stats)))
	if err != nil {
		t.Fatal(err)
	}
	c := &RefusalCollector{}
	c.Set(r)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	want := `
# HELP spoke_connect_refusals_total CONNECTs the apiserver proxy beside this server refused, by reason (no_owner 404, no_tunnel 502, cap 503); its counters, read with the tunnels.
# TYPE spoke_connect_refusals_total counter
spoke_connect_refusals_total{reason="cap"} 3
spoke_connect_refusals_total{reason="no_owner"} 4
spoke_connect_refusals_total{reason="no_tunnel"} 3
# HELP spoke_node_connect_refusals_total The same per target: node/<name>, or services (no_owner has none).
# TYPE spoke_node_connect_refusals_total counter
spoke_node_connect_refusals_total{reason="cap",target="node/ip-10-0-0-5.ec2.internal"} 2
spoke_node_connect_refusals_total{reason="cap",target="services"} 1
spoke_node_connect_refusals_total{reason="no_tunnel",target="node/node-a"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	empty := prometheus.NewRegistry()
	empty.MustRegister(&RefusalCollector{})
	if n, err := testutil.GatherAndCount(empty, "spoke_connect_refusals_total"); err != nil || n != len(ConnectRefusalReasons) {
		t.Errorf("before any read: %d series (%v), want one per reason at zero", n, err)
	}
}
