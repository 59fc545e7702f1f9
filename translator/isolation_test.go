package translator_test

import (
	"regexp"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestNodeOutputHoldsNothingOfOtherNodes renders every node proxy of the
// example and checks that no other node's name, addresses, pod IPs or pod
// CIDRs appear anywhere in it.
func TestNodeOutputHoldsNothingOfOtherNodes(t *testing.T) {
	s := model.DefaultSettings()
	objs, _, err := input.ReadFiles([]string{"../examples/cluster.yaml"}, input.DefaultMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	cluster, _ := model.Build(objs, s)
	if len(cluster.Nodes) < 3 {
		t.Fatalf("example should have 3 nodes, has %d", len(cluster.Nodes))
	}
	for _, me := range cluster.Nodes {
		res, err := translator.NodeProxy(&cluster, s, me.Name)
		if err != nil {
			t.Fatal(err)
		}
		out, err := translator.Marshal(translator.ConfigDump(res, translator.DumpVersions{}), "json")
		if err != nil {
			t.Fatal(err)
		}
		text := string(out)
		for _, mine := range cluster.PodsOn(me.Name) {
			if !strings.Contains(text, `"`+mine.IPs[0].String()+`:*"`) {
				t.Errorf("node %s: own pod %s/%s (%s) missing", me.Name, mine.Namespace, mine.Name, mine.IPs[0])
			}
		}
		for _, other := range cluster.Nodes {
			if other.Name == me.Name {
				continue
			}
			for _, needle := range foreignStrings(&cluster, &other) {
				if strings.Contains(text, needle) {
					t.Errorf("node %s's config contains %q of node %s", me.Name, needle, other.Name)
				}
			}
		}
	}
}

func foreignStrings(c *model.Cluster, n *model.Node) []string {
	out := []string{`"` + n.Name, n.Name + ":"}
	for _, ip := range n.IPs {
		if isAPIServerEndpoint(c, ip.Addr.String()) {
			continue // the apiserver proxy runs on this node: its address is every node's tunnel endpoint
		}
		out = append(out, ip.Addr.String())
	}
	for _, p := range n.PodCIDRs {
		out = append(out, p.String())
	}
	for _, pod := range c.PodsOn(n.Name) {
		for _, ip := range pod.IPs {
			out = append(out, `"`+ip.String()+`:`, "["+ip.String()+"]")
		}
	}
	return out
}

// TestUnknownNodeFails: asking for a node that is not in the cluster is an
// error that names the node, never an empty or foreign config.
func TestUnknownNodeFails(t *testing.T) {
	c := model.Cluster{Nodes: []model.Node{{Name: "node-a"}}}
	_, err := translator.NodeProxy(&c, model.DefaultSettings(), "node-b")
	if err == nil || !strings.Contains(err.Error(), `"node-b"`) {
		t.Fatalf("want an error naming node-b, got %v", err)
	}
}

func isAPIServerEndpoint(c *model.Cluster, ip string) bool {
	for _, ep := range c.APIServerEndpoints {
		if ep.Addr.String() == ip {
			return true
		}
	}
	return false
}

// TestServiceRangesOpenNoOtherNode: node proxies accept whole Service ranges,
// so every address of a range must be safe to reach from any node. Ranges
// that would cover another node's address or pods are tried here (a range
// over the pod CIDRs, one over the node addresses, one that is too wide, a
// reserved one): node-a's proxy still accepts nothing of node-b, and only
// what is Service traffic otherwise.
func TestServiceRangesOpenNoOtherNode(t *testing.T) {
	s := model.DefaultSettings()
	s.ServiceCIDRs = []string{"10.96.0.0/12"}
	var objs model.Objects
	if _, err := input.Decode([]byte(`
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Node, metadata: {name: node-a}, spec: {podCIDRs: [10.244.1.0/24]}, status: {addresses: [{type: InternalIP, address: 10.0.0.5}]}}
- {apiVersion: v1, kind: Node, metadata: {name: node-b}, spec: {podCIDRs: [10.244.2.0/24]}, status: {addresses: [{type: InternalIP, address: 10.0.0.6}]}}
- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: default}, spec: {nodeName: node-a}, status: {phase: Running, podIP: 10.244.1.7}}
- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: default}, spec: {nodeName: node-b}, status: {phase: Running, podIP: 10.244.2.7}}
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: over-pods}, spec: {cidrs: [10.244.0.0/16]}}
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: over-nodes}, spec: {cidrs: [10.0.0.0/16]}}
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: too-wide}, spec: {cidrs: [10.0.0.0/7]}}
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: metadata}, spec: {cidrs: [169.254.0.0/16]}}
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: ipv6}, spec: {cidrs: ["fd00:10:96::/112"]}}
- {apiVersion: v1, kind: Service, metadata: {name: api, namespace: default}, spec: {clusterIPs: [10.96.0.1], ports: [{port: 443}]}}
- {apiVersion: v1, kind: Service, metadata: {name: odd, namespace: default}, spec: {clusterIPs: [10.0.9.9], ports: [{port: 53}]}}
`), &objs); err != nil {
		t.Fatal(err)
	}
	cluster, problems := model.Build(objs, s)
	if len(problems) != 4 {
		t.Errorf("want the 4 unsafe ranges reported, got %v", problems)
	}
	res, err := translator.NodeProxy(&cluster, s, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]bool{
		"10.244.1.7:8080":       true,  // own pod
		"10.0.0.5:10250":        true,  // own kubelet
		"10.96.0.1:443":         true,  // a Service
		"10.100.3.4:80":         true,  // in the Service range, whatever kube-proxy makes of it
		"10.111.255.1:1":        true,  // the range's last /16
		"10.0.9.9:53":           true,  // a Service in a refused range: its exact pair
		"10.244.2.7:8080":       false, // node-b's pod, inside a refused range
		"10.244.2.99:80":        false,
		"10.0.0.6:10250":        false, // node-b's kubelet, inside a refused range
		"10.0.9.9:54":           false, // the exact pair only
		"10.112.0.1:443":        false, // past the range
		"169.254.169.254:80":    false,
		"[fd00:10:96::a]:443":   true, // the IPv6 range, matched by regex
		"[fd00:10:96::]:443":    true,
		"[fd00:10:96::1:a]:443": false, // same text prefix, outside the /112
		"[fd00:10:96:0::a]:443": false, // not canonical: refused rather than guessed
		"127.0.0.1:10248":       false,
	} {
		if got := acceptsCONNECT(res, target); got != want {
			t.Errorf("node-a accepts CONNECT %s: %v, want %v", target, got, want)
		}
	}
}

// acceptsCONNECT says whether a virtual host of res takes a CONNECT to
// authority, matching domains as Envoy does (exact, or a prefix wildcard)
// and then the route's :authority regex, when it has one.
func acceptsCONNECT(res translator.Resources, authority string) bool {
	for _, rc := range res.Routes {
		for _, vh := range rc.VirtualHosts {
			for _, d := range vh.Domains {
				if d == authority || strings.HasSuffix(d, "*") && strings.HasPrefix(authority, strings.TrimSuffix(d, "*")) {
					return routeTakes(vh, authority)
				}
			}
		}
	}
	return false
}

func routeTakes(vh *routev3.VirtualHost, authority string) bool {
	for _, r := range vh.Routes {
		ok := true
		for _, h := range r.GetMatch().GetHeaders() {
			re := h.GetStringMatch().GetSafeRegex().GetRegex()
			ok = ok && h.GetName() == ":authority" && regexp.MustCompile("^(?:"+re+")$").MatchString(authority)
		}
		if ok {
			return true
		}
	}
	return false
}
