package translator

import (
	"math/rand/v2"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"strings"
	"testing"
)

// envoyPrefixMatch is how Envoy matches a prefix-wildcard domain ("foo*")
// against :authority: the text before '*' must be a prefix of the host.
func envoyPrefixMatch(domain, authority string) bool {
	return strings.HasPrefix(authority, strings.TrimSuffix(domain, "*"))
}

// TestPrefixDomainMatchesExactlyThePrefix checks, over random addresses, that
// a prefix wildcard matches the CONNECT target of an address if and only if
// the pod CIDR contains it: a textual prefix must never catch a neighbour's IP
// (10.244.1.* vs 10.244.10.x) nor miss one of its own (IPv6 "::" compression).
func TestPrefixDomainMatchesExactlyThePrefix(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	prefixes := []string{"10.0.0.0/8", "10.244.0.0/16", "10.244.1.0/24", "192.168.100.0/24",
		"fd00:10:244:1::/64", "fd00:10::/32", "2001:db8:1:2:3:4:5::/112", "fd00:10:244:100::/64"}
	for _, raw := range prefixes {
		p := netip.MustParsePrefix(raw)
		domain, ok := prefixDomain(p)
		if !ok {
			t.Fatalf("%s should be routable as a prefix", p)
		}
		for i := 0; i < 20000; i++ {
			ip := randomNear(rng, p.Addr())
			target := ipPort(ip, 8080)
			if got, want := envoyPrefixMatch(domain, target), p.Contains(ip); got != want {
				t.Fatalf("domain %q vs %s: match=%v but %s contains it=%v", domain, target, got, p, want)
			}
		}
	}
}

// randomNear flips random low-order bits and sometimes zeroes whole 16-bit
// groups, so that both members and close non-members of the prefix appear,
// including addresses whose text uses "::".
func randomNear(rng *rand.Rand, base netip.Addr) netip.Addr {
	b := base.AsSlice()
	for i := range b {
		if rng.IntN(3) == 0 {
			b[i] = byte(rng.IntN(256))
		}
		if len(b) == 16 && i%2 == 0 && rng.IntN(4) == 0 {
			b[i], b[i+1] = 0, 0
		}
	}
	ip, _ := netip.AddrFromSlice(b)
	return ip
}

func TestPrefixDomainRefusesUnsafePrefixes(t *testing.T) {
	for _, raw := range []string{"10.244.1.0/25", "10.244.0.0/20", "10.0.0.0/0", "10.1.2.3/32",
		"fd00:0:0:1::/64", "fd00:10:244:0::/64", "fd00:10:244:1::/60", "::/0"} {
		if d, ok := prefixDomain(netip.MustParsePrefix(raw)); ok {
			t.Errorf("%s: got domain %q, want per-pod routing", raw, d)
		}
	}
}

func TestDomainsForIPv6UseBrackets(t *testing.T) {
	ip := netip.MustParseAddr("fd00::5")
	if got := ipPort(ip, 10250); got != "[fd00::5]:10250" {
		t.Errorf("ipPort = %q", got)
	}
	if got := ipAnyPort(ip); got != "[fd00::5]:*" {
		t.Errorf("ipAnyPort = %q", got)
	}
	if !envoyPrefixMatch(ipAnyPort(netip.MustParseAddr("10.0.0.5")), "10.0.0.5:10250") ||
		envoyPrefixMatch(ipAnyPort(netip.MustParseAddr("10.0.0.5")), "10.0.0.50:10250") {
		t.Error("10.0.0.5:* must match 10.0.0.5:10250 and not 10.0.0.50:10250")
	}
}

// TestRangeDomainsMatchExactlyTheRange: the wildcard domains of a Service
// range match a CONNECT target if and only if the range holds its address,
// over random members and close non-members; ranges no set of wildcards
// expresses exactly (or only with single addresses) are refused.
func TestRangeDomainsMatchExactlyTheRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, raw := range []string{"10.96.0.0/12", "10.96.0.0/16", "172.20.0.0/22", "192.168.128.0/17", "10.0.0.0/8",
		"fd00:10:96:1::/64", "2001:db8:1:2:3:4:500::/104", "fd00:1:2:300::/56"} {
		r := netip.MustParsePrefix(raw)
		domains, ok := rangeDomains(r)
		if !ok {
			t.Fatalf("%s should be expressible", r)
		}
		for i := 0; i < 20000; i++ {
			ip := randomNear(rng, r.Addr())
			target := ipPort(ip, 443)
			matched := false
			for _, d := range domains {
				matched = matched || envoyPrefixMatch(d, target)
			}
			if matched != r.Contains(ip) {
				t.Fatalf("range %s, domains %v: %s matched=%v, contained=%v", r, domains, target, matched, r.Contains(ip))
			}
		}
	}
	for _, raw := range []string{"10.96.0.0/25", "10.96.0.7/32", "fd00:10:96::/112", "fd00:10:96::/108", "fd00:10::/48", "2001:db8:1:2:3:4:5:0/120", "2001:db8:1:2:3:4::/104"} {
		if d, ok := rangeDomains(netip.MustParsePrefix(raw)); ok {
			t.Errorf("%s: got %v, want no wildcard form", raw, d)
		}
	}
}

// TestRangeRegexMatchesExactlyTheRange: for /112 IPv6 ranges whose text has
// "::" in it, the virtual host's prefix wildcard plus its regex accept the
// canonical text of an address exactly when the range holds it; and any
// text the regex accepts, even a mangled one, is an address of the range.
func TestRangeRegexMatchesExactlyTheRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, raw := range []string{"fd00:10:96::/112", "fd00::/112", "2001:db8::7:0/112", "fd00:0:0:1::/112", "fd00:1:0:0:2::/112", "2001:db8:0:1:2:3:4::/112", "fd00:0:0:1:0:0:2::/112"} {
		r := netip.MustParsePrefix(raw)
		m, ok := rangeRegex(r)
		if !ok {
			t.Fatalf("%s: no matcher", r)
		}
		re := regexp.MustCompile("^(?:" + m.regex + ")$")
		if prog, err := syntax.Parse(m.regex, syntax.Perl); err != nil || len(mustCompile(t, prog).Inst) > 80 {
			t.Errorf("%s: regex %q too large for Envoy's RE2 limit of 100", r, m.regex)
		}
		for i := 0; i < 20000; i++ {
			ip := randomNear(rng, r.Addr())
			target := ipPort(ip, 443)
			got := envoyPrefixMatch(m.domain, target) && re.MatchString(target)
			if got != r.Contains(ip) {
				t.Fatalf("range %s (%s %s): %s accepted=%v, contained=%v", r, m.domain, m.regex, target, got, r.Contains(ip))
			}
			mangled := []byte(target)
			mangled[rng.IntN(len(mangled))] = "0123456789abcdef:"[rng.IntN(17)]
			if re.Match(mangled) {
				host, _, _ := strings.Cut(strings.TrimPrefix(string(mangled), "["), "]")
				if a, err := netip.ParseAddr(host); err != nil || !r.Contains(a) {
					t.Fatalf("range %s: the regex accepts %q, which is not an address of the range", r, mangled)
				}
			}
		}
	}
	for _, raw := range []string{"fd00:10:96::/108", "fd00:10::/96", "10.96.0.0/16", "fd00:10:96::/120"} {
		if m, ok := rangeRegex(netip.MustParsePrefix(raw)); ok {
			t.Errorf("%s: got %+v, want no regex (only /112 IPv6 ranges)", raw, m)
		}
	}
}

func mustCompile(t *testing.T, re *syntax.Regexp) *syntax.Prog {
	t.Helper()
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		t.Fatal(err)
	}
	return prog
}
