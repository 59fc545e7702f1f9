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

// DumpSection logs a DumpBegin line for what and returns the call that logs
// its DumpEnd line: what is logged in between is left out of the summary.
func DumpSection(t testing.TB, what string) (end func()) {
	t.Helper()
	t.Logf("%s %s", DumpBegin, what)
	return func() { t.Logf("%s %s", DumpEnd, what) }
}

// LogDump logs body, named what, as a dump section of its own.
func LogDump(t testing.TB, what, body string) {
	t.Helper()
	defer DumpSection(t, what)()
	t.Logf("---- %s ----\n%s", what, body)
}
