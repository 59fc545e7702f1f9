package model

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// A pod's addresses are written by the kubelet of its node (status.podIPs),
// so a node's credentials are enough to claim any address for its pods, and
// spoke routes a pod address to that node. An address therefore counts for a
// node only when it could be that node's:
//
//   - never a special address (loopback, link-local, unspecified, multicast,
//     broadcast): a CONNECT to it would reach the node proxy's host itself,
//     its admin or a cloud metadata service; test topologies on one host may
//     allow a range with the allowPodAddresses setting;
//   - never inside a Service range, which every node proxy accepts;
//   - inside the node's spec.podCIDRs when it has any (the controller
//     manager writes those, not the node);
//   - for a node without pod CIDRs, outside every other node's.
//
// A refused claim is reported and never counts as a claim, so it cannot take
// the address from the node that owns it.

// specialAddress names the kind of ip when it can never be a pod's own
// address, or returns "".
func specialAddress(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified():
		return "the unspecified address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address (where cloud metadata services listen)"
	case ip.IsMulticast():
		return "a multicast address"
	case ip.Is4() && ip.As4()[0] == 0:
		return "an address of 0.0.0.0/8 (this host)"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "the broadcast address"
	}
	return ""
}

// cidrIndex maps each pod CIDR to the routable nodes listing it.
type cidrIndex map[netip.Prefix]map[string]bool

func (idx cidrIndex) set(node string, cidrs []netip.Prefix, add bool) {
	for _, p := range cidrs {
		setMember(idx, p, node, add)
	}
}

// othersContaining lists the nodes other than node with a pod CIDR holding
// ip, sorted: a lookup per prefix length, as CIDRs only nest.
func (idx cidrIndex) othersContaining(ip netip.Addr, node string) []string {
	var out []string
	for bits := 0; bits <= ip.BitLen(); bits++ {
		for owner := range idx[netip.PrefixFrom(ip, bits).Masked()] {
			if owner != node && !slices.Contains(out, owner) {
				out = append(out, owner)
			}
		}
	}
	slices.Sort(out)
	return out
}

// podAddressRules is what a pod address is checked against besides its own
// node: the allowed special ranges, the safe Service ranges and every
// routable node's pod CIDRs.
type podAddressRules struct {
	allowed       []netip.Prefix
	serviceRanges []netip.Prefix
	cidrs         cidrIndex
}

// refusal says why ip cannot be an address of a pod on node, or "".
func (r *podAddressRules) refusal(ip netip.Addr, node *Node) string {
	if what := specialAddress(ip); what != "" && !CoveredBy(r.allowed, ip) {
		return "it is " + what
	}
	if sr := coveringRange(r.serviceRanges, ip); sr.IsValid() {
		return fmt.Sprintf("it lies in the Service range %s", sr)
	}
	if len(node.PodCIDRs) > 0 {
		if !CoveredBy(node.PodCIDRs, ip) {
			return fmt.Sprintf("it lies outside node %s's pod CIDRs (%s, spec.podCIDRs)", node.Name, joinPrefixes(node.PodCIDRs))
		}
		return ""
	}
	if owners := r.cidrs.othersContaining(ip, node.Name); len(owners) > 0 {
		return fmt.Sprintf("it lies in the pod CIDR of node %s", strings.Join(owners, ", "))
	}
	return ""
}

// admitted returns the addresses of pod that may be node's, and a problem
// for each other one.
func (r *podAddressRules) admitted(pod Pod, node *Node) (ips []netip.Addr, refused []Problem) {
	for _, ip := range pod.IPs {
		if why := r.refusal(ip, node); why != "" {
			refused = append(refused, refusedPodIPProblem(pod, ip, why))
			continue
		}
		ips = append(ips, ip)
	}
	return ips, refused
}

func refusedPodIPProblem(p Pod, ip netip.Addr, why string) Problem {
	pr := problem("Pod "+p.Namespace+"/"+p.Name, "pod IP %s refused: %s; only an address its node may own is routed to it", ip, why)
	pr.Kind = KindPodAddress
	return pr
}

// allowedPodRanges parses the allowPodAddresses setting (validated before).
func allowedPodRanges(s Settings) []netip.Prefix {
	var out []netip.Prefix
	for _, raw := range s.AllowPodAddresses {
		if p, err := netip.ParsePrefix(raw); err == nil {
			out = append(out, p.Masked())
		}
	}
	return out
}

// CoveredBy reports whether ip lies in one of prefixes.
func CoveredBy(prefixes []netip.Prefix, ip netip.Addr) bool {
	return coveringRange(prefixes, ip).IsValid()
}

// coveringRange is the first of ranges holding ip; the zero (invalid)
// Prefix when none does.
func coveringRange(ranges []netip.Prefix, ip netip.Addr) netip.Prefix {
	for _, r := range ranges {
		if r.Contains(ip) {
			return r
		}
	}
	return netip.Prefix{}
}

func joinPrefixes(ps []netip.Prefix) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = p.String()
	}
	return strings.Join(parts, ", ")
}
