package model

import (
	"fmt"
	"net/netip"
	"slices"

	networkingv1 "k8s.io/api/networking/v1"
)

// Service ranges are the CIDRs Service ClusterIPs come from (the
// networking.k8s.io/v1 ServiceCIDR objects, plus the serviceCIDRs setting).
// A node proxy accepts CONNECTs to the whole ranges and leaves the rest to
// kube-proxy, so a Service change reaches no node proxy. That is only safe
// while a range holds nothing else a node proxy could reach: a range that
// covers a node address or a pod CIDR would let any node proxy forward to
// another node or its pods, so it is refused (its Services are then accepted
// one ClusterIP:port at a time, as before).

// Narrowest allowed service range widths: wider ones cover foreign networks.
const (
	MinServiceRangeBitsIPv4 = 8
	MinServiceRangeBitsIPv6 = 48
)

// reservedRanges are never service ranges: a node proxy must not reach its
// own loopback (the kubelet's healthz, node-local daemons) nor link-local
// addresses (cloud metadata services).
var reservedRanges = []struct {
	prefix netip.Prefix
	what   string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "this host"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local, where cloud metadata services listen"},
	{netip.MustParsePrefix("::/128"), "the unspecified address"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
}

// ConvertServiceCIDR returns the ranges of one ServiceCIDR object.
func ConvertServiceCIDR(sc *networkingv1.ServiceCIDR) (ranges []netip.Prefix, problems []Problem) {
	obj := "ServiceCIDR " + sc.Name
	for _, raw := range sc.Spec.CIDRs {
		p, err := ParseServiceRange(raw)
		if err != nil {
			problems = append(problems, problem(obj, "CIDR ignored: %v", err))
			continue
		}
		ranges = append(ranges, p)
	}
	return ranges, problems
}

// ParseServiceRange parses one service CIDR and checks it is not too wide
// and touches no reserved range.
func ParseServiceRange(raw string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(raw)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %w", raw, err)
	}
	p = p.Masked()
	minBits := MinServiceRangeBitsIPv6
	if p.Addr().Is4() {
		minBits = MinServiceRangeBitsIPv4
	}
	if p.Bits() < minBits {
		return netip.Prefix{}, fmt.Errorf("%s is wider than /%d: it would cover networks that hold no Services", p, minBits)
	}
	for _, r := range reservedRanges {
		if r.prefix.Overlaps(p) {
			return netip.Prefix{}, fmt.Errorf("%s overlaps %s (%s), which a node proxy must never reach", p, r.prefix, r.what)
		}
	}
	return p, nil
}

// SafeServiceRanges returns ranges (deduplicated, sorted) without those
// that cover an address or pod CIDR of a routable node, with a problem for
// each one left out.
func SafeServiceRanges(ranges []netip.Prefix, nodes []Node) ([]netip.Prefix, []Problem) {
	var safe []netip.Prefix
	var problems []Problem
	for _, r := range sortedPrefixes(ranges) {
		if clash := nodeInside(r, nodes); clash != "" {
			problems = append(problems, problem("Service range "+r.String(),
				"not accepted as a whole by node proxies: it covers %s, so any node proxy could reach it; its Services are accepted one ClusterIP:port at a time. Keep Service, node and pod ranges apart", clash))
			continue
		}
		safe = append(safe, r)
	}
	return safe, problems
}

// nodeInside names an address or pod CIDR inside r, of the node first by
// name (the message must not depend on input order), or "".
func nodeInside(r netip.Prefix, nodes []Node) string {
	clash, first := "", ""
	for _, n := range nodes {
		if first != "" && n.Name >= first {
			continue
		}
		if what := clashOf(r, &n); what != "" {
			clash, first = what, n.Name
		}
	}
	return clash
}

// clashOf names n's first address or pod CIDR inside r, or "".
func clashOf(r netip.Prefix, n *Node) string {
	for _, ip := range n.IPs {
		if r.Contains(ip.Addr) {
			return fmt.Sprintf("node %s's address %s", n.Name, ip.Addr)
		}
	}
	for _, c := range n.PodCIDRs {
		if r.Overlaps(c) {
			return fmt.Sprintf("node %s's pod CIDR %s", n.Name, c)
		}
	}
	return ""
}

// settingsServiceRanges parses the serviceCIDRs setting (validated on load).
func settingsServiceRanges(s Settings) []netip.Prefix {
	var out []netip.Prefix
	for _, raw := range s.ServiceCIDRs {
		if p, err := ParseServiceRange(raw); err == nil {
			out = append(out, p)
		}
	}
	return out
}

func sortedPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}
