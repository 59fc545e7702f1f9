#!/usr/bin/env bash
# Prints, from a go test log (not -v), each failing test's "--- FAIL" line
# and the last 15 lines it logged (of each t.Log or t.Error its first three
# lines only), leaving out the environment dumps a failed test logs from its
# cleanup (between "==== dump begin:" and "==== dump end:" lines, see
# envoytest.DumpSection), so that its error is among them; the first lines
# of a panic or timeout; compile errors and each failed package's FAIL
# line. make test (e2e/test-lanes.sh) ends a failed run with it: CI shows
# only the end of the output. TestFailureSummaryShowsTheError runs it on a
# real go test log.
#
#   bash e2e/failures.sh go-test-output.log
set -euo pipefail
awk '
	function flush() { for (i = (n > 15 ? n - 14 : 1); i <= n; i++) print recent[i % 15]; n = 0 }
	/==== dump begin:/ { dump = 1 }
	dump { if (/==== dump end:/) dump = 0; next }
	/^ *--- FAIL: / { flush(); print; failing = 1; next }
	/^[^ \t]/ { flush(); failing = 0 }
	/^FAIL\t/ || /^[^ \t]+\.go:[0-9]+:[0-9]+: / { print; next } # a package that failed; a compile error
	/^panic: / { panicking = 6 }
	panicking > 0 { print; panicking--; next }
	failing && /^ +[A-Za-z0-9_.-]+\.go:[0-9]+: / { recent[++n % 15] = $0; more = 0; next } # what one t.Log or t.Error said
	failing && more++ < 2 { recent[++n % 15] = $0 } # and its next two lines
	failing && more == 3 { recent[++n % 15] = "        ..." }
	END { flush() }
' "$1"
