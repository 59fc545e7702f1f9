package e2e

import (
	"os/exec"
	"testing"
)

// TestCLIErrorsArePlainLines: the real binary prints a failed command's
// error as one plain line on stderr ("spoke: ..."), not a log record with
// quoted, escaped text, and exits 1.
func TestCLIErrorsArePlainLines(t *testing.T) {
	spoke := buildSpoke(t)
	cmd := exec.Command(spoke, "serve", "--insecure-xds", "--log-format", "xml")
	out, err := cmd.CombinedOutput()
	if exit, ok := err.(*exec.ExitError); !ok || exit.ExitCode() != 1 {
		t.Fatalf("want exit status 1, got %v", err)
	}
	if got := string(out); got != "spoke: --log-format \"xml\": use text or json\n" {
		t.Errorf("stderr %q, want one plain line", got)
	}
}
