package translator_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/translator/model/modeltest"
)

// TestNodeProxyNeverRoutesToItsAdmin: over random universes whose pods and
// nodes claim loopback addresses, with loopback pod addresses allowed (as
// the test topologies do), no virtual-host domain of any node proxy
// matches its admin address on any port but its kubelet's.
func TestNodeProxyNeverRoutesToItsAdmin(t *testing.T) {
	s := model.DefaultSettings()
	s.AllowPodAddresses = []string{"127.0.0.0/8"}
	admitted := 0
	for seed := uint64(1); seed <= 40; seed++ {
		u := modeltest.NewUniverse(seed)
		store := model.NewStore(s)
		for range 200 {
			u.Step(store)
		}
		c, _ := model.Build(u.View(), s)
		for _, p := range c.Pods {
			for _, ip := range p.IPs {
				if ip.String() == translator.AdminAddress {
					admitted++ // the model let it through: only the guard stands
				}
			}
		}
		for _, n := range c.Nodes {
			res, err := translator.NodeProxy(&c, s, n.Name)
			if err != nil {
				t.Fatal(err)
			}
			for _, vh := range res.Routes[0].VirtualHosts {
				for _, d := range vh.Domains {
					// Any port the admin may get, and the ports pods declare.
					for _, port := range []uint32{1, 9100, 9901, 10249, 15000, 65535} {
						target := fmt.Sprintf("%s:%d", translator.AdminAddress, port)
						if port != n.KubeletPort && domainMatches(d, target) {
							t.Fatalf("seed %d: node %s's virtual host %s domain %q matches the admin address %s", seed, n.Name, vh.Name, d, target)
						}
					}
				}
			}
		}
	}
	if admitted == 0 {
		t.Fatal("no universe had a pod at the admin address: the guard was never tried")
	}
	t.Logf("%d pods at the admin address admitted by the model, none routed", admitted)
}

// domainMatches is Envoy's virtual-host domain match: exact, a suffix
// wildcard ("*.x", "*-x"), a prefix wildcard ("x.*", "x-*") or "*".
func domainMatches(domain, host string) bool {
	switch {
	case domain == host || domain == "*":
		return true
	case strings.HasPrefix(domain, "*"):
		return strings.HasSuffix(host, domain[1:])
	case strings.HasSuffix(domain, "*"):
		return strings.HasPrefix(host, domain[:len(domain)-1])
	}
	return false
}
