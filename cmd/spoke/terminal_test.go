package main

import "testing"

func TestPrintableEscapesWhatATerminalWouldRun(t *testing.T) {
	for in, want := range map[string]string{
		"node-a":                       "node-a",
		"été ok":                       "été ok",
		"\x1b]0;owned\x07\x1b[2J":      `\x1b]0;owned\a\x1b[2J`,
		"row\nnode/x SYNCED":           `row\nnode/x SYNCED`,
		"tab\there":                    `tab\there`,
		"rtl\u202egnp.exe":             `rtl\u202egnp.exe`,
		"bad\xffutf8":                  `bad\xffutf8`,
		"c1\u009b2J":                   `c1\u009b2J`,
		"replacement \uFFFD is a char": "replacement \uFFFD is a char",
	} {
		if got := printable(in); got != want {
			t.Errorf("printable(%q) = %q, want %q", in, got, want)
		}
	}
}
