package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// TestFailureSummaryShowsTheError: e2e/failures.sh, which ends a failed
// make test, shows a failed test's error and leaves out the dump its
// cleanup logs between envoytest.DumpSection's lines, on the output of a real go
// test run (a test that fails, then dumps more lines than the summary
// keeps, as a failed kind test does).
func TestFailureSummaryShowsTheError(t *testing.T) {
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "go.mod"), []byte("module broken\n\ngo 1.26\n"))
	writeTestFile(t, filepath.Join(dir, "broken_test.go"), []byte(fmt.Sprintf(`package broken

import "testing"

func TestPasses(t *testing.T) { t.Log("nothing to see") }

func TestBroken(t *testing.T) {
	t.Cleanup(func() {
		t.Log(%q)
		for i := 0; i < 40; i++ {
			t.Log("container log line")
		}
		t.Log(%q)
	})
	t.Log("what the test did")
	t.Fatal("the error that matters")
}
`, envoytest.DumpBegin+" a cluster", envoytest.DumpEnd+" a cluster")))
	goTest := exec.Command("go", "test", "-count=1", ".")
	goTest.Dir = dir
	goTest.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	out, err := goTest.CombinedOutput()
	if err == nil {
		t.Fatalf("the broken test passed:\n%s", out)
	}
	log := filepath.Join(dir, "go-test.log")
	writeTestFile(t, log, out)
	summary, err := exec.Command("bash", filepath.Join(repoRoot(t), "e2e", "failures.sh"), log).CombinedOutput()
	if err != nil {
		t.Fatalf("e2e/failures.sh: %v\n%s", err, summary)
	}
	for _, want := range []string{"--- FAIL: TestBroken", "what the test did", "the error that matters", "FAIL\tbroken"} {
		if !strings.Contains(string(summary), want) {
			t.Errorf("the summary lacks %q:\n%s", want, summary)
		}
	}
	for _, unwanted := range []string{"container log line", "nothing to see"} {
		if strings.Contains(string(summary), unwanted) {
			t.Errorf("the summary shows %q:\n%s", unwanted, summary)
		}
	}
}
