package translator

import (
	"encoding/binary"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/spokeproxy/spoke/translator/model"
)

// maxRangePieces bounds the wildcard domains one Service range may expand
// to (a /12 is 16 domains "10.96.*" .. "10.111.*").
const maxRangePieces = 256

// nodeServiceDomains is what a node proxy accepts as Service traffic: every
// Service range that wildcard domains can express exactly, the ranges that
// need a regex (rangeRegex), and the ClusterIP:port pairs of the Services
// outside all of those. With the ranges
// known, a Service change changes no node proxy.
func nodeServiceDomains(c *model.Cluster) (*domainSet, []rangeMatcher) {
	domains := newDomainSet()
	var covered []netip.Prefix
	var matchers []rangeMatcher
	seen := map[string]bool{}
	for _, r := range c.ServiceRanges {
		if ds, ok := rangeDomains(r); ok {
			for _, d := range ds {
				domains.add(d)
			}
			covered = append(covered, r)
		} else if m, ok := rangeRegex(r); ok && !seen[m.domain] {
			seen[m.domain] = true
			matchers = append(matchers, m)
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
	return domains, matchers
}

// rangeVirtualHosts are the virtual hosts of the regex-matched ranges.
func rangeVirtualHosts(matchers []rangeMatcher) []*routev3.VirtualHost {
	var out []*routev3.VirtualHost
	for i, m := range matchers {
		name := "service-range-" + strconv.Itoa(i)
		route := connectRoute(name, OriginalDstTarget, &routev3.RouteAction_UpgradeConfig{
			UpgradeType: "CONNECT", ConnectConfig: &routev3.RouteAction_UpgradeConfig_ConnectConfig{},
		})
		route.Match.Headers = []*routev3.HeaderMatcher{{
			Name: ":authority",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: m.regex}},
			}},
		}}
		out = append(out, &routev3.VirtualHost{Name: name, Domains: []string{m.domain}, Routes: []*routev3.Route{route}})
	}
	return out
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
	binary.BigEndian.PutUint16(b[2*g:], group(b, g)|uint16(i))
	return netip.AddrFrom16(b)
}

// A Service range that wildcard domains cannot express exactly because of
// IPv6 "::" compression (kind's fd00:10:96::/112) gets a virtual host of its
// own: a prefix wildcard that may match too much, and a route that only
// matches when :authority is the canonical text of an address in the range
// (what the apiserver sends: Go writes IPv6 in RFC 5952 form). Any other
// text, in the range or not, gets 404. Only ranges with one free 16-bit
// group are done this way: their regex stays well under Envoy's default
// RE2 program size limit (100), which a larger one would exceed (a NACK).

// rangeMatcher is the virtual host of one such range.
type rangeMatcher struct {
	domain string // prefix wildcard, e.g. "[fd00:10:96::*"
	regex  string // full match of :authority
}

// rangeRegex returns the matcher of r, or ok=false when r is not a /112
// (one free group) IPv6 range.
func rangeRegex(r netip.Prefix) (rangeMatcher, bool) {
	if !r.Addr().Is6() || r.Addr().Is4In6() || r.Bits() != 112 {
		return rangeMatcher{}, false
	}
	raw := r.Masked().Addr().As16()
	var groups [8]string
	for i := 0; i < 7; i++ {
		groups[i] = strconv.FormatUint(uint64(group(raw, i)), 16)
	}
	var alternatives []string
	for _, last := range []string{"0", freeGroup} { // the free group zero, or not
		groups[7] = last
		alternatives = append(alternatives, canonicalText(groups))
	}
	prefix := commonPrefix(alternatives[0], alternatives[1])
	return rangeMatcher{
		domain: "[" + prefix + "*",
		regex:  `\[` + regexp.QuoteMeta(prefix) + `(?:` + strings.TrimPrefix(alternatives[0], prefix) + `|` + strings.TrimPrefix(alternatives[1], prefix) + `)\]:[0-9]{1,5}`,
	}, true
}

// freeGroup matches one nonzero 16-bit group as RFC 5952 writes it.
const freeGroup = "[1-9a-f][0-9a-f]{0,3}"

// canonicalText writes eight groups (hex text, or freeGroup, which is
// never zero) in RFC 5952 form: the longest run of two or more zero groups,
// the first of equals, becomes "::".
func canonicalText(groups [8]string) string {
	start, length := -1, 0
	for i := 0; i < 8; {
		j := i
		for j < 8 && groups[j] == "0" {
			j++
		}
		if j-i > length && j-i >= 2 {
			start, length = i, j-i
		}
		i = max(j, i+1)
	}
	if start < 0 {
		return strings.Join(groups[:], ":")
	}
	return strings.Join(groups[:start], ":") + "::" + strings.Join(groups[start+length:], ":")
}

func commonPrefix(a, b string) string {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	// Stop before a regex part: the prefix is literal text.
	if i := strings.IndexByte(a[:n], '['); i >= 0 {
		n = i
	}
	return a[:n]
}
