package main

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// printable escapes what an Envoy or a cluster object controls (NACK
// messages, node, pod and Envoy names, refusal reasons) before it reaches a
// terminal: control characters, format characters such as bidi overrides and
// invalid UTF-8 are written as Go escapes, so no escape sequence can retitle
// or clear the terminal, and no newline can forge a row of a table.
func printable(s string) string {
	if isPrintable(s) {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			b.WriteString(`\x` + strconv.FormatUint(uint64(s[i]), 16))
		case unicode.IsPrint(r):
			b.WriteRune(r)
		default:
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String()
}

func isPrintable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			return false
		}
	}
	return true
}
