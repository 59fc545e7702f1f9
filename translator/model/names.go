package model

import (
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// Names are checked as the apiserver checks them (a node or pod name is a
// DNS-1123 subdomain, a namespace a DNS-1123 label, a Service name a
// DNS-1035 label): a file source or a dump can hold anything, and a name
// reaches Envoy config, certificates, metric labels and terminals. Checked
// here, `spoke translate` and `spoke serve` refuse the same names.

// nameRule is one of the apiserver's name checks with what it asks for, in
// one line (the validation package's own messages carry its regexp).
type nameRule struct {
	check func(string) []string
	asks  string
}

var (
	dns1123Subdomain = nameRule{validation.IsDNS1123Subdomain, "lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters (RFC 1123 subdomain)"}
	dns1123Label     = nameRule{validation.IsDNS1123Label, "lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters (RFC 1123 label)"}
	dns1035Label     = nameRule{validation.IsDNS1035Label, "lower-case letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters (RFC 1035 label)"}
)

// nameProblem says what name lacks for rule, or "".
func nameProblem(rule nameRule, name string) string {
	if len(rule.check(name)) > 0 {
		return "want " + rule.asks
	}
	return ""
}

// shownName is name as it may appear in a problem: quoted (control
// characters escaped) unless it is a valid name, which needs no quoting.
func shownName(name string, valid bool) string {
	if valid {
		return name
	}
	return strconv.Quote(name)
}

// objectName checks a namespaced object's namespace and name; ok is false
// with a problem when either is invalid.
func objectName(kind, namespace, name string, rule nameRule) (obj string, p *Problem) {
	nsWhy, nameWhy := nameProblem(dns1123Label, namespace), nameProblem(rule, name)
	obj = kind + " " + shownName(namespace, nsWhy == "") + "/" + shownName(name, nameWhy == "")
	switch {
	case nsWhy != "":
		pr := problem(obj, "skipped: not a valid namespace name: %s", nsWhy)
		return obj, &pr
	case nameWhy != "":
		pr := problem(obj, "skipped: not a valid %s name: %s", strings.ToLower(kind), nameWhy)
		return obj, &pr
	}
	return obj, nil
}
