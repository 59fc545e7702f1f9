package envoytest

import "testing"

// DumpBegin and DumpEnd bracket what a failed test logs about its
// environment (an Envoy's log, a server's, a cluster's state): make test's
// failure summary (e2e/failures.sh) leaves those lines out, so that it shows
// what the test itself said before it failed.
const (
	DumpBegin = "==== dump begin:"
	DumpEnd   = "==== dump end:"
)

// LogDump logs body, named what, between DumpBegin and DumpEnd lines.
func LogDump(t testing.TB, what, body string) {
	t.Helper()
	t.Logf("%s %s", DumpBegin, what)
	t.Logf("---- %s ----\n%s", what, body)
	t.Logf("%s %s", DumpEnd, what)
}
