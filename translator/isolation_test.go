package translator_test

import (
	"strings"
	"testing"

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
		out, err := translator.Marshal(translator.ConfigDump(res, translator.SameVersion("")), "json")
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
