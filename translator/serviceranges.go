package translator

import (
	"net/netip"

	"github.com/spokeproxy/spoke/translator/model"
)

// maxRangePieces bounds the wildcard domains one Service range may expand
// to (a /12 is 16 domains "10.96.*" .. "10.111.*").
const maxRangePieces = 256

// nodeServiceDomains is what a node proxy accepts as Service traffic: every
// Service range that wildcard domains can express exactly, and the
// ClusterIP:port pairs of the Services outside those ranges. With the ranges
// known, a Service change changes no node proxy.
func nodeServiceDomains(c *model.Cluster) *domainSet {
	domains := newDomainSet()
	var covered []netip.Prefix
	for _, r := range c.ServiceRanges {
		if ds, ok := rangeDomains(r); ok {
			for _, d := range ds {
				domains.add(d)
			}
			covered = append(covered, r)
		}
	}
	for _, svc := range c.Services {
		for _, ip := range svc.ClusterIPs {
			if CoveredBy(covered, ip) {
				continue
			}
			for _, port := range svc.Ports {
				domains.add(ipPort(ip, port))
			}
		}
	}
	return domains
}

// rangeDomains expresses r as wildcard domains that match exactly its
// addresses in canonical text: r is cut into the prefixes of the next octet
// (IPv4) or 16-bit group (IPv6) boundary, each of which prefixDomain can
// write. ok is false when that takes more than maxRangePieces domains, for
// IPv6 ranges with a zero group (see prefixDomain), and for ranges narrower
// than /24 (IPv4) or /112 (IPv6): their pieces would be single addresses,
// whose "ip:*" domain a pod of the node could repeat (Envoy rejects a route
// configuration with a domain twice).
func rangeDomains(r netip.Prefix) ([]string, bool) {
	step, total := 8, 32
	if r.Addr().Is6() {
		step, total = 16, 128
	}
	boundary := (r.Bits() + step - 1) / step * step
	free := boundary - r.Bits()
	if boundary == total || free > 8 || 1<<free > maxRangePieces {
		return nil, false
	}
	var out []string
	for i := 0; i < 1<<free; i++ {
		piece := netip.PrefixFrom(withGroup(r.Masked().Addr(), boundary/step-1, i), boundary)
		d, ok := prefixDomain(piece)
		if !ok {
			return nil, false
		}
		out = append(out, d)
	}
	return out, true
}

// withGroup sets the low bits of group g (an octet of IPv4, a 16-bit group
// of IPv6) of a, which are zero, to i.
func withGroup(a netip.Addr, g, i int) netip.Addr {
	if a.Is4() {
		b := a.As4()
		b[g] |= byte(i)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	v := (uint16(b[2*g])<<8 | uint16(b[2*g+1])) | uint16(i)
	b[2*g], b[2*g+1] = byte(v>>8), byte(v)
	return netip.AddrFrom16(b)
}
