package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// What many tests of one run build from the same sources (the spoke
// command, the image archives the test nodes import) is built once per
// test process, by the first test that needs it, into one directory that
// TestMain removes when the run ends. Built per test, links and image
// writes took 237 of a warm make test's 1,457 CPU-seconds (process
// accounting: 113 links, 33 spoke-image runs); built once, 117 of 1,173 (68
// links, 20 runs), on a machine where the CPU is what bounds the run.
var sharedBuilds = struct {
	dir string
	mu  sync.Mutex
	by  map[string]*sharedBuild
}{by: map[string]*sharedBuild{}}

// sharedBuild is one build: its outputs, or why it failed.
type sharedBuild struct {
	once sync.Once
	out  []string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	sharedBuilds.mu.Lock()
	if sharedBuilds.dir != "" {
		_ = os.RemoveAll(sharedBuilds.dir)
	}
	sharedBuilds.mu.Unlock()
	os.Exit(code)
}

// buildOnce returns what build wrote into a directory of its own, running
// it the first time name is asked for in this process; a failed build
// fails every test that asks for it, with the same error. Each caller gets
// its own copy of the list (callers append to it).
func buildOnce(t *testing.T, name string, build func(dir string) ([]string, error)) []string {
	t.Helper()
	sharedBuilds.mu.Lock()
	b, ok := sharedBuilds.by[name]
	if !ok {
		b = &sharedBuild{}
		sharedBuilds.by[name] = b
	}
	root, err := sharedBuildsDir()
	sharedBuilds.mu.Unlock()
	b.once.Do(func() {
		if b.err = err; err != nil {
			return
		}
		dir := filepath.Join(root, name)
		if b.err = os.MkdirAll(dir, 0o755); b.err == nil {
			b.out, b.err = build(dir)
		}
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", name, b.err)
	}
	return slices.Clone(b.out)
}

// sharedBuildsDir makes the run's directory for shared builds the first
// time a build needs it (sharedBuilds.mu held): made up front, a test
// process that never returns to TestMain (a helper re-run of the test
// binary, a killed run) left an empty one behind in $TMPDIR each time.
func sharedBuildsDir() (string, error) {
	if sharedBuilds.dir == "" {
		dir, err := os.MkdirTemp("", "spoke-e2e-builds-")
		if err != nil {
			return "", fmt.Errorf("a directory for the shared builds: %w", err)
		}
		sharedBuilds.dir = dir
	}
	return sharedBuilds.dir, nil
}

// goCommand runs go with args (and env added), its output in the error.
func goCommand(env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return nil
}

// spokeImage runs cmd/spoke-image with args, writing out.
func spokeImage(out string, args ...string) error {
	return goCommand(nil, append(append([]string{"run", "../cmd/spoke-image"}, args...), "--out", out)...)
}
