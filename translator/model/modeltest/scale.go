package modeltest

import (
	"fmt"
	"net/netip"

	"github.com/spokeproxy/spoke/translator/model"
)

// ScaleCluster is Kubernetes' scale limit: nodes nodes with podsPerNode
// pods each (5,000 x 30 = 150,000), a /24 pod CIDR per node (octet-aligned),
// 1,000 Services with two ports, three apiserver proxies.
func ScaleCluster(nodes, podsPerNode int) model.Cluster {
	var c model.Cluster
	for i := 0; i < nodes; i++ {
		hi, lo := byte(i/250), byte(i%250)
		n := model.Node{
			Name:        fmt.Sprintf("node-%05d", i),
			IPs:         []model.NodeIP{{Kind: model.InternalIP, Addr: netip.AddrFrom4([4]byte{172, 16 + hi, lo, 10})}},
			HostNames:   []string{fmt.Sprintf("node-%05d", i)},
			KubeletPort: 10250,
			PodCIDRs:    []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 100 + hi, lo, 0}), 24)},
			Ready:       true,
		}
		c.Nodes = append(c.Nodes, n)
		for p := 0; p < podsPerNode; p++ {
			c.Pods = append(c.Pods, model.Pod{
				Namespace: "default", Name: fmt.Sprintf("pod-%05d-%03d", i, p), NodeName: n.Name,
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 100 + hi, lo, byte(2 + p)})},
			})
		}
	}
	for i := 0; i < 1000; i++ {
		c.Services = append(c.Services, model.Service{
			Namespace: "default", Name: fmt.Sprintf("svc-%04d", i),
			ClusterIPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 96, byte(i / 250), byte(i % 250)})},
			Ports:      []uint32{443, 8080},
		})
	}
	for i := 0; i < 3; i++ {
		c.APIServerEndpoints = append(c.APIServerEndpoints, model.Endpoint{Addr: netip.AddrFrom4([4]byte{172, 31, 0, byte(10 + i)}), Port: 18003})
	}
	c.Index()
	return c
}
