package translator_test

import (
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestEachNodeHasItsOwnStreamCap: every node's targets go through a cluster
// of its own, capped at nodeMaxStreams, and into that node's tunnels only;
// Services through theirs, capped at serviceMaxStreams. A node name with
// dots gets a stat name without them (dots split Envoy's stat names).
func TestEachNodeHasItsOwnStreamCap(t *testing.T) {
	s := model.DefaultSettings()
	s.NodeMaxStreams, s.ServiceMaxStreams = 7, 5
	c := model.Cluster{
		Nodes: []model.Node{
			{Name: "ip-10-0-0-5.ec2.internal", IPs: []model.NodeIP{{Addr: netip.MustParseAddr("10.0.0.5")}}},
			{Name: "node-b", IPs: []model.NodeIP{{Addr: netip.MustParseAddr("10.0.0.6")}}},
		},
		Services: []model.Service{{Namespace: "default", Name: "hook", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.9")}, Ports: []uint32{443}}},
	}
	res := translator.APIServerProxy(&c, s)
	if err := translator.Check(res); err != nil {
		t.Fatal(err)
	}
	clusters := map[string]*clusterv3.Cluster{}
	for _, cl := range res.Clusters {
		clusters[cl.Name] = cl
	}
	for vhost, want := range map[string]struct {
		cluster, host, stat string
		streams             uint32
	}{
		"node/ip-10-0-0-5.ec2.internal": {"node/ip-10-0-0-5.ec2.internal", "ip-10-0-0-5.ec2.internal", "node/ip-10-0-0-5_ec2_internal", 7},
		"node/node-b":                   {"node/node-b", "node-b", "", 7},
		"services":                      {translator.ServiceTunnels, s.ClusterID, "", 5},
	} {
		route := virtualHostRoute(t, res, vhost)
		if got := route.GetRoute().GetCluster(); got != want.cluster {
			t.Errorf("%s goes to cluster %q, want %q", vhost, got, want.cluster)
		}
		if got := route.Metadata.FilterMetadata["spoke"].Fields["host_id"].GetStringValue(); got != want.host {
			t.Errorf("%s goes into the tunnels of %q, want %q", vhost, got, want.host)
		}
		cl := clusters[want.cluster]
		if got := cl.GetCircuitBreakers().GetThresholds()[0].GetMaxRequests().GetValue(); got != want.streams {
			t.Errorf("cluster %s caps streams at %d, want %d", want.cluster, got, want.streams)
		}
		if cl.GetAltStatName() != want.stat {
			t.Errorf("cluster %s: stat name %q, want %q", want.cluster, cl.GetAltStatName(), want.stat)
		}
	}
	if len(res.Clusters) != 3 {
		t.Errorf("%d clusters, want one per node and one for Services", len(res.Clusters))
	}
}

func virtualHostRoute(t *testing.T, res translator.Resources, name string) *routev3.Route {
	t.Helper()
	for _, vh := range res.Routes[0].VirtualHosts {
		if vh.Name == name {
			return vh.Routes[0]
		}
	}
	t.Fatalf("no virtual host %s", name)
	return nil
}
