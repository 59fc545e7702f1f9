package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/envoy"
)

// TestVersionIsStamped builds spoke the way `make build` does and checks
// that the stamped version and commit, and the Envoy target, are printed.
func TestVersionIsStamped(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "spoke")
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7 -X main.commit=0123abcd", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"spoke v9.8.7\n", "commit 0123abcd\n", "envoy " + envoy.Version + " "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("spoke version printed %q, lacks %q", out, want)
		}
	}
}

// TestVersionWithoutStamp: a plain build still says something true.
func TestVersionWithoutStamp(t *testing.T) {
	out, _, err := runSpoke("version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "spoke ") || !strings.Contains(out, "\ncommit ") || !strings.Contains(out, "envoy "+envoy.Version) {
		t.Errorf("unexpected output %q", out)
	}
}
