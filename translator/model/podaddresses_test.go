package model

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func nodeWithCIDRs(name, ip string, cidrs ...string) *corev1.Node {
	n := node(name, ip)
	n.Spec.PodCIDRs = cidrs
	return n
}

// TestPodAddressesANodeMayNotClaim: a kubelet writes its pods' addresses, so
// a node's credentials could claim any address. Each refused claim is
// reported and leaves the rightful owner its route; allowPodAddresses opens
// a special range for loopback test topologies only.
func TestPodAddressesANodeMayNotClaim(t *testing.T) {
	settings := DefaultSettings()
	settings.ServiceCIDRs = []string{"10.96.0.0/12"}
	objs := Objects{
		Nodes: []*corev1.Node{
			nodeWithCIDRs("a", "10.0.0.1", "10.244.1.0/24"),
			nodeWithCIDRs("b", "10.0.0.2", "10.244.2.0/24"),
			node("c", "10.0.0.3"), // no pod CIDRs (a CNI with its own IPAM)
		},
		Pods: []*corev1.Pod{
			pod("a-own", "a", "10.244.1.5"),
			pod("b-own", "b", "10.244.2.5"),
			pod("a-steals-b", "a", "10.244.2.5"),
			pod("c-steals-b", "c", "10.244.2.6"),
			pod("b-victim", "b", "10.244.2.6"),
			pod("c-free", "c", "10.50.0.7"),
			pod("loopback", "c", "127.0.0.1"),
			pod("loopback6", "c", "::1"),
			pod("metadata", "c", "169.254.169.254"),
			pod("link-local6", "c", "fe80::1"),
			pod("unspecified", "c", "0.0.0.0"),
			pod("this-host", "c", "0.1.2.3"),
			pod("multicast", "c", "224.0.0.1"),
			pod("broadcast", "c", "255.255.255.255"),
			pod("service-range", "c", "10.96.0.10"),
		},
	}
	c, problems := Build(objs, settings)
	routed := map[string]string{}
	for _, p := range c.Pods {
		routed[p.Name] = p.NodeName + " " + p.IPs[0].String()
	}
	want := map[string]string{"a-own": "a 10.244.1.5", "b-own": "b 10.244.2.5", "b-victim": "b 10.244.2.6", "c-free": "c 10.50.0.7"}
	if len(routed) != len(want) {
		t.Errorf("routed pods %v, want %v", routed, want)
	}
	for name, w := range want {
		if routed[name] != w {
			t.Errorf("pod %s: routed %q, want %q", name, routed[name], w)
		}
	}
	wantWhy := map[string]string{
		"a-steals-b": "outside node a's pod CIDRs (10.244.1.0/24", "c-steals-b": "in the pod CIDR of node b",
		"loopback": "loopback", "loopback6": "loopback", "metadata": "link-local", "link-local6": "link-local",
		"unspecified": "unspecified", "this-host": "0.0.0.0/8", "multicast": "multicast", "broadcast": "broadcast",
		"service-range": "Service range 10.96.0.0/12",
	}
	for name, why := range wantWhy {
		found := false
		for _, p := range problems {
			found = found || p.Object == "Pod default/"+name && strings.Contains(p.Message, "refused") && strings.Contains(p.Message, why)
		}
		if !found {
			t.Errorf("no refusal naming %q for pod %s in %v", why, name, problems)
		}
	}
	for _, p := range problems {
		if strings.Contains(p.Message, "claim it") {
			t.Errorf("a refused claim still counted as a claim: %v", p)
		}
	}

	settings.AllowPodAddresses = []string{"127.0.0.0/8"}
	c, _ = Build(objs, settings)
	if !routesPod(c, "loopback") || routesPod(c, "loopback6") || routesPod(c, "metadata") {
		t.Errorf("allowPodAddresses 127.0.0.0/8 should open exactly that range: %+v", c.Pods)
	}
}

func routesPod(c Cluster, name string) bool {
	for _, p := range c.Pods {
		if p.Name == name {
			return true
		}
	}
	return false
}

func TestSpecialAddressesNamed(t *testing.T) {
	for ip, special := range map[string]bool{"10.1.2.3": false, "fd00::1": false, "127.5.5.5": true, "ff02::1": true, "::": true, "100.64.0.1": false} {
		if got := specialAddress(netip.MustParseAddr(ip)) != ""; got != special {
			t.Errorf("%s: special %v, want %v", ip, got, special)
		}
	}
}
