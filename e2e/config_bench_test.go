package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model/modeltest"
)

// configShape is one way to give the apiserver proxy the same cluster.
type configShape struct {
	name  string
	shape func(translator.Resources) translator.Resources
	// deferStats keeps the bootstrap's deferred stat creation on.
	deferStats bool
}

// TestAPIServerProxyConfigBenchmark (make bench-config) loads the apiserver
// proxy's config for a synthetic cluster into a real Envoy and prints what
// each node costs it (RSS over a config with no node, per node) and how long
// Envoy takes to load it, for today's cluster per node (with and without
// deferred stats) against the one shared cluster spoke had before per-node
// stream caps (same routes, every one to that cluster), in the same run.
// Under make test it runs at 200 nodes, so a broken benchmark fails there.
func TestAPIServerProxyConfigBenchmark(t *testing.T) {
	nodes := 200
	if os.Getenv("SPOKE_BENCH_CONFIG") == "1" {
		nodes = 5000
	}
	tp := newTopology(t)
	workers, _ := manifestWorkers(t)
	shapes := []configShape{
		{"cluster per node (today)", keepShape, true},
		{"cluster per node, stats not deferred", keepShape, false},
		{"one shared cluster (before)", sharedTunnelCluster, true},
	}
	baseRSS, _ := tp.loadAPIServerConfig(0, shapes[0], workers)
	var table strings.Builder
	fmt.Fprintf(&table, "| apiserver proxy config, %d nodes, %d workers | KiB per node | load time |\n|---|---|---|\n", nodes, workers)
	for _, shape := range shapes {
		rss, took := tp.loadAPIServerConfig(nodes, shape, workers)
		fmt.Fprintf(&table, "| %s | %.1f | %v |\n", shape.name, float64(rss-baseRSS)/float64(nodes)/1024, took.Round(10*time.Millisecond))
	}
	tp.servedUpdateCosts(nodes, workers, &table)
	t.Logf("\n%s", table.String())
	if out := os.Getenv("SPOKE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// loadAPIServerConfig starts an apiserver proxy on the config of a
// synthetic cluster of n nodes in shape, with workers workers, and returns
// its RSS once loaded and how long it took to be ready.
func (tp *topology) loadAPIServerConfig(n int, shape configShape, workers int) (rss int64, took time.Duration) {
	t := tp.t
	c := modeltest.ScaleCluster(n, 0)
	s := tp.settings
	res := shape.shape(translator.APIServerProxy(&c, s))
	b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", res, tp.pki.Secrets(t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !shape.deferStats {
		b.DeferredStatOptions = nil
	}
	start := time.Now()
	p := envoytest.StartWithFlags(t, tp.bin, "apiserver-proxy", b, "--concurrency", strconv.Itoa(workers))
	took = time.Since(start)
	defer p.Stop()
	if got := p.Stat("cluster_manager.active_clusters"); got != len(res.Clusters)+1 { // + the xDS stand-in
		t.Fatalf("%s: %d active clusters, want %d", shape.name, got, len(res.Clusters)+1)
	}
	time.Sleep(time.Second) // let the workers take their copies
	rss, err = datapath.ProcessRSS(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	return rss, took
}

func keepShape(r translator.Resources) translator.Resources { return r }

// sharedTunnelCluster routes every target through one cluster, as before
// per-node caps: the Services' cluster, its cap raised to the node budget.
func sharedTunnelCluster(r translator.Resources) translator.Resources {
	out := r
	out.Routes = []*routev3.RouteConfiguration{proto.Clone(r.Routes[0]).(*routev3.RouteConfiguration)}
	for _, vh := range out.Routes[0].VirtualHosts {
		for _, route := range vh.Routes {
			route.GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: translator.ServiceTunnels}
		}
	}
	out.Clusters = nil
	for _, c := range r.Clusters {
		if c.Name == translator.ServiceTunnels {
			out.Clusters = append(out.Clusters, c)
		}
	}
	return out
}

// servedUpdateCosts serves the n-node cluster from a file to a real
// apiserver proxy over ADS (state of the world, then delta) and writes to
// table the CPU time that proxy spends applying one more node (a cluster
// and a virtual host) against one more Service (a virtual host only).
func (tp *topology) servedUpdateCosts(n, workers int, table *strings.Builder) {
	t := tp.t
	fmt.Fprintf(table, "\n| change served to that proxy | Envoy CPU, state of the world | Envoy CPU, delta |\n|---|---|---|\n")
	costs := map[string][2]time.Duration{}
	for i, delta := range []bool{false, true} {
		file := filepath.Join(t.TempDir(), "cluster.yaml")
		writeScaleCluster(t, file, n, 0, 0)
		sec := startSecureServer(t, tp, file, time.Hour)
		flags := []string{"--concurrency", strconv.Itoa(workers)}
		api := sec.startAPIServerProxyOver(t, tp.bin, fmt.Sprintf("apiserver-%d", i), delta, flags...)
		clusters := func() int { return api.Stat("cluster_manager.active_clusters") }
		waitFor(t, time.Minute, "every node's cluster", func() bool { return clusters() == n+2 }) // + services, xDS
		reloads := func() int { return api.StatSum(".rds.apiserver-egress.config_reload") }
		for _, change := range []struct {
			name        string
			nodes, svcs int
			applied     func() bool // besides the route reload every change brings
		}{
			{"one more node", 1, 0, func() bool { return clusters() == n+3 }},
			{"one more Service", 1, 1, func() bool { return true }},
		} {
			before, _ := datapath.ProcessCPU(api.PID())
			routes := reloads()
			writeScaleCluster(t, file, n, change.nodes, change.svcs)
			waitFor(t, time.Minute, change.name, func() bool { return change.applied() && reloads() > routes })
			time.Sleep(500 * time.Millisecond) // the workers' share
			after, _ := datapath.ProcessCPU(api.PID())
			c := costs[change.name]
			c[i] = after - before
			costs[change.name] = c
		}
	}
	for _, name := range []string{"one more node", "one more Service"} {
		fmt.Fprintf(table, "| %s (of %d) | %v | %v |\n", name, n, costs[name][0].Round(time.Millisecond), costs[name][1].Round(time.Millisecond))
	}
}

// writeScaleCluster writes n nodes (plus extra more) and svcs Services as a
// cluster file: the nodes of modeltest.ScaleCluster.
func writeScaleCluster(t *testing.T, file string, n, extra, svcs int) {
	t.Helper()
	c := modeltest.ScaleCluster(n+extra, 0)
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
	for _, node := range c.Nodes {
		fmt.Fprintf(&b, "- {apiVersion: v1, kind: Node, metadata: {name: %s}, spec: {podCIDRs: [%s]}, status: {addresses: [{type: InternalIP, address: %s}]}}\n",
			node.Name, node.PodCIDRs[0], node.IPs[0].Addr)
	}
	for i := range svcs {
		fmt.Fprintf(&b, "- {apiVersion: v1, kind: Service, metadata: {name: svc-%d, namespace: default}, spec: {clusterIPs: [10.96.9.%d], ports: [{port: 443}]}}\n", i, i+1)
	}
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}
