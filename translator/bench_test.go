package translator_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/translator/model/modeltest"
)

func resourcesSize(r translator.Resources) int {
	n := 0
	for _, l := range r.Listeners {
		n += proto.Size(l)
	}
	for _, rc := range r.Routes {
		n += proto.Size(rc)
	}
	for _, c := range r.Clusters {
		n += proto.Size(c)
	}
	for _, e := range r.Endpoints {
		n += proto.Size(e)
	}
	return n
}

// BenchmarkAPIServerProxy: the apiserver proxy's whole config at 5,000 nodes /
// 150,000 pods, with prefix routes (octet-aligned CIDRs) and per pod IP.
func BenchmarkAPIServerProxy(b *testing.B) {
	c := modeltest.ScaleCluster(5000, 30)
	for _, mode := range []string{model.PodRoutingAuto, model.PodRoutingPerPod} {
		b.Run(mode, func(b *testing.B) {
			s := model.DefaultSettings()
			s.PodRouting = mode
			var res translator.Resources
			for b.Loop() {
				res = translator.APIServerProxy(&c, s)
			}
			b.ReportMetric(float64(resourcesSize(res)), "config-bytes")
		})
	}
}

// BenchmarkAllNodeProxies: every one of the 5,000 node proxies' configs.
func BenchmarkAllNodeProxies(b *testing.B) {
	c := modeltest.ScaleCluster(5000, 30)
	s := model.DefaultSettings()
	for b.Loop() {
		tr := translator.New(&c, s)
		for _, n := range c.Nodes {
			if _, err := tr.NodeProxy(n.Name); err != nil {
				b.Fatal(err)
			}
		}
	}
}
