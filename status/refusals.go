package status

import (
	"bufio"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons the apiserver proxy refuses a CONNECT, as counted in
// spoke_connect_refusals_total.
const (
	RefusedNoOwner  = "no_owner"  // 404: no node owns the target (Envoy: no route)
	RefusedNoTunnel = "no_tunnel" // 502: its node holds no tunnel at this apiserver proxy
	RefusedCap      = "cap"       // 503: its node's (or the Services') stream cap is full
)

// ConnectRefusalReasons are every reason, each a series from the start.
var ConnectRefusalReasons = []string{RefusedNoOwner, RefusedNoTunnel, RefusedCap}

// refusalStatsPath lists the apiserver proxy's counters of refused
// CONNECTs: each node's and the Services' cluster, and the egress HCM's
// requests that matched no route.
const refusalStatsPath = "/stats?filter=^(cluster%5C.(node/%7Cservices%5C.)%7Chttp%5C.apiserver_egress%5C.no_route$)"

// ConnectRefusals are the apiserver proxy's refused CONNECTs by reason and
// by target (node/<name>, services; "" for no_owner), as its counters read.
type ConnectRefusals map[string]map[string]float64

// parseConnectRefusals reads the counters of refusalStatsPath's answer.
// Cluster stat names carry node names with '.' as '_' (alt_stat_name);
// node names never hold '_' (DNS), so it is turned back.
func parseConnectRefusals(lines *bufio.Scanner) (ConnectRefusals, error) {
	out := ConnectRefusals{}
	add := func(reason, target string, v float64) {
		if out[reason] == nil {
			out[reason] = map[string]float64{}
		}
		out[reason][target] += v
	}
	for lines.Scan() {
		name, value, ok := strings.Cut(lines.Text(), ": ")
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue // a histogram's summary line
		}
		if name == "http.apiserver_egress.no_route" {
			add(RefusedNoOwner, "", v)
			continue
		}
		cluster, ok := strings.CutPrefix(name, "cluster.")
		if !ok {
			continue
		}
		for suffix, reason := range map[string]string{".upstream_cx_connect_fail": RefusedNoTunnel, ".upstream_rq_active_overflow": RefusedCap} {
			if target, ok := strings.CutSuffix(cluster, suffix); ok {
				add(reason, strings.ReplaceAll(target, "_", "."), v)
			}
		}
	}
	return out, lines.Err()
}

// RefusalCollector exports the last read ConnectRefusals at each scrape:
// spoke_connect_refusals_total{reason} (every reason, from zero) and
// spoke_node_connect_refusals_total{reason,target} (targets with any).
// They mirror the apiserver proxy's counters, so they restart with it.
type RefusalCollector struct {
	mu     sync.Mutex
	latest ConnectRefusals
}

var (
	refusalsDesc = prometheus.NewDesc("spoke_connect_refusals_total",
		"CONNECTs the apiserver proxy beside this server refused, by reason (no_owner 404, no_tunnel 502, cap 503); its counters, read with the tunnels.",
		[]string{"reason"}, nil)
	targetRefusalsDesc = prometheus.NewDesc("spoke_node_connect_refusals_total",
		"The same per target: node/<name>, or services (no_owner has none).",
		[]string{"reason", "target"}, nil)
)

// Set replaces the last read.
func (c *RefusalCollector) Set(r ConnectRefusals) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latest = r
}

func (c *RefusalCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- refusalsDesc
	ch <- targetRefusalsDesc
}

func (c *RefusalCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, reason := range ConnectRefusalReasons {
		total := 0.0
		for target, v := range c.latest[reason] {
			total += v
			if target != "" && v > 0 {
				ch <- prometheus.MustNewConstMetric(targetRefusalsDesc, prometheus.CounterValue, v, reason, target)
			}
		}
		ch <- prometheus.MustNewConstMetric(refusalsDesc, prometheus.CounterValue, total, reason)
	}
}
