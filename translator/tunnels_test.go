package translator_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestEachTunnelHasItsOwnListener: Envoy backs off re-dials by the failures
// an rc:// listener counted over all its tunnels, so each tunnel gets a
// listener (asking for one tunnel) and a dial cluster of its own; Envoy
// refuses two listeners with the same rc:// address. The clusters share one
// endpoint list and one stat name.
func TestEachTunnelHasItsOwnListener(t *testing.T) {
	s := model.DefaultSettings()
	s.TunnelsPerEndpoint = 3
	c := model.Cluster{Nodes: []model.Node{{Name: "node-a", IPs: []model.NodeIP{{Addr: netip.MustParseAddr("10.0.0.5")}}}}}
	tr := translator.New(&c, s)
	res, err := tr.NodeProxy("node-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := translator.Check(res); err != nil {
		t.Fatal(err)
	}
	if len(res.Listeners) != 3 {
		t.Fatalf("%d listeners, want one per tunnel (3)", len(res.Listeners))
	}
	addresses := map[string]bool{}
	for i, l := range res.Listeners {
		addr := l.GetAddress().GetSocketAddress().GetAddress()
		want := translator.ReverseTunnelAddress("node-a", s, translator.DialCluster(i+1))
		if addr != want || !strings.HasSuffix(addr, ":1") {
			t.Errorf("listener %d: address %q, want %q (one tunnel)", i, addr, want)
		}
		if addresses[addr] {
			t.Errorf("two listeners with address %q", addr)
		}
		addresses[addr] = true
	}
	dial := 0
	for _, cl := range res.Clusters {
		if !strings.HasPrefix(cl.Name, translator.APIServerProxies+"/") {
			continue
		}
		dial++
		if got := translator.EDSServiceName(cl); got != translator.APIServerProxies {
			t.Errorf("cluster %s reads endpoints %q, want %q", cl.Name, got, translator.APIServerProxies)
		}
		if cl.AltStatName != translator.APIServerProxies {
			t.Errorf("cluster %s counts as %q, want %q", cl.Name, cl.AltStatName, translator.APIServerProxies)
		}
	}
	if dial != 3 {
		t.Errorf("%d dial clusters, want 3", dial)
	}
	if len(res.Endpoints) != 1 || res.Endpoints[0].ClusterName != translator.APIServerProxies {
		t.Errorf("endpoints %v, want the one list %q", res.Endpoints, translator.APIServerProxies)
	}
}
