package translator

import (
	"encoding/binary"
	"net/netip"
	"strconv"
	"strings"
)

// Virtual-host domains are matched against the CONNECT request-target, which
// Envoy's HTTP/1 codec puts in :authority ("10.0.0.5:10250", "[fd00::5]:10250",
// "node-a:10250"). Envoy picks an exact domain before any prefix wildcard and
// the longest prefix wildcard first, so a pod's own "ip:*" beats a node's
// "10.244.1.*" prefix. Every wildcard below ends at a separator (':' or '.'),
// so "10.0.0.5:*" never matches 10.0.0.50.

// hostText is how net.JoinHostPort writes a host: IPv6 in brackets.
func hostText(ip netip.Addr) string {
	if ip.Is6() {
		return "[" + ip.String() + "]"
	}
	return ip.String()
}

func ipAnyPort(ip netip.Addr) string { return hostText(ip) + ":*" }

func ipPort(ip netip.Addr, port uint32) string {
	return hostText(ip) + ":" + strconv.FormatUint(uint64(port), 10)
}

func nameAnyPort(name string) string { return name + ":*" }

func namePort(name string, port uint32) string {
	return name + ":" + strconv.FormatUint(uint64(port), 10)
}

// prefixDomain returns a wildcard domain that matches exactly the addresses of
// prefix when written in canonical form, or ok=false when no such domain
// exists. IPv4 needs an octet boundary (/8, /16, /24). IPv6 needs a 16-bit
// group boundary and no zero group inside the prefix: RFC 5952 text compresses
// runs of zero groups with "::", which could swallow a zero group of the prefix
// and so defeat a textual prefix match.
func prefixDomain(prefix netip.Prefix) (string, bool) {
	bits, ip := prefix.Bits(), prefix.Masked().Addr()
	if ip.Is4() {
		if bits != 8 && bits != 16 && bits != 24 {
			return "", false
		}
		octets := ip.As4()
		parts := make([]string, bits/8)
		for i := range parts {
			parts[i] = strconv.Itoa(int(octets[i]))
		}
		return strings.Join(parts, ".") + ".*", true
	}
	if bits == 0 || bits >= 128 || bits%16 != 0 {
		return "", false
	}
	raw := ip.As16()
	groups := make([]string, bits/16)
	for i := range groups {
		g := group(raw, i)
		if g == 0 {
			return "", false
		}
		groups[i] = strconv.FormatUint(uint64(g), 16)
	}
	return "[" + strings.Join(groups, ":") + ":*", true
}

// group is 16-bit group i of an IPv6 address.
func group(a [16]byte, i int) uint16 { return binary.BigEndian.Uint16(a[2*i:]) }
