package envoytest

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/spokeproxy/spoke/envoy"
)

// Process is a running Envoy started by a test.
type Process struct {
	Name  string
	Admin string // host:port of the admin API
	cmd   *exec.Cmd
	log   *LogBuffer
	stop  sync.Once
}

// Stop kills the Envoy and waits for it to exit (a crash, as far as its
// peers can tell).
func (p *Process) Stop() {
	p.stop.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	})
}

// Terminate sends SIGTERM, as a kubelet stopping the pod does, and waits
// for the Envoy to exit: it closes its connections without a drain.
func (p *Process) Terminate() {
	p.stop.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		_ = p.cmd.Wait()
	})
}

// Start runs Envoy on b (whose admin port should be 0) with one worker,
// waits until it is ready and stops it when the test ends. Its log is
// printed if the test fails.
func Start(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap) *Process {
	t.Helper()
	return start(t, bin, name, b, true)
}

// StartWithFlags is Start with extra Envoy command-line flags (a
// --component-log-level among them replaces the default one).
func StartWithFlags(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap, flags ...string) *Process {
	t.Helper()
	return start(t, bin, name, b, true, flags...)
}

// StartUnready is Start for an Envoy expected never to become ready (one
// that should get no config): it returns once the admin API answers.
func StartUnready(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap) *Process {
	t.Helper()
	return start(t, bin, name, b, false)
}

func start(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap, ready bool, flags ...string) *Process {
	t.Helper()
	dir := t.TempDir()
	path, err := envoy.WriteBootstrap(dir, b)
	if err != nil {
		t.Fatal(err)
	}
	adminFile := filepath.Join(dir, "admin-address")
	p := &Process{Name: name, log: &LogBuffer{}}
	args := []string{"-c", path, "--disable-hot-restart", "--admin-address-path", adminFile, "--log-level", "info"}
	if !slices.Contains(flags, "--concurrency") { // one worker unless the test says otherwise
		args = append(args, "--concurrency", "1")
	}
	if !slices.Contains(flags, "--component-log-level") { // Envoy takes the flag once
		// SPOKE_ENVOY_COMPONENT_LOG (e.g. http2:debug,pool:debug) to debug a test
		args = append(args, "--component-log-level", cmp.Or(os.Getenv("SPOKE_ENVOY_COMPONENT_LOG"), "connection:debug"))
	}
	p.cmd = exec.Command(bin, append(args, flags...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	// An interrupted test binary takes its Envoys with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start envoy %s: %v", name, err)
	}
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			LogDump(t, "envoy "+name+" log (last 60 lines)", p.tail(60))
			keepLog(t, p)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if raw, err := os.ReadFile(adminFile); err == nil && len(raw) > 0 {
			p.Admin = strings.TrimSpace(string(raw))
			body, err := p.Get("/ready")
			if err == nil || !ready && body != "" {
				return p
			}
		}
		if p.cmd.ProcessState != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("envoy %s did not become ready:\n%s", name, p.tail(60))
	return nil
}

// Get fetches an admin path and fails on a non-200 answer.
func (p *Process) Get(path string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Admin+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: status %d", path, resp.StatusCode)
	}
	return string(body), err
}

// Stat returns the value of one counter or gauge from /stats, or -1. Hidden
// stats (the per-node tunnel gauges) are included.
func (p *Process) Stat(name string) int {
	body, err := p.Get("/stats?hidden=include&filter=^" + name + "$")
	if err != nil {
		return -1
	}
	var v int
	for _, line := range strings.Split(body, "\n") {
		if k, val, ok := strings.Cut(line, ": "); ok && k == name {
			if _, err := fmt.Sscanf(val, "%d", &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// Stats returns the /stats lines containing fragment (for failure messages).
func (p *Process) Stats(fragment string) string {
	body, _ := p.Get("/stats")
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, fragment) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// StatSum adds up every counter or gauge whose name ends with suffix (the
// same stat across listeners or clusters).
func (p *Process) StatSum(suffix string) int { return p.StatSumOf("", suffix) }

// StatSumOf is StatSum over the stats whose name also starts with prefix
// (e.g. one stat of every node's cluster: "cluster.node/", ".upstream_rq_total").
func (p *Process) StatSumOf(prefix, suffix string) int {
	body, _ := p.Get("/stats")
	total := 0
	for _, line := range strings.Split(body, "\n") {
		if k, val, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(k, prefix) && strings.HasSuffix(k, suffix) {
			var v int
			if _, err := fmt.Sscanf(val, "%d", &v); err == nil {
				total += v
			}
		}
	}
	return total
}

// Log returns everything Envoy has printed so far.
func (p *Process) Log() string { return p.log.String() }

// PID is the Envoy's process id (for its CPU time and memory).
func (p *Process) PID() int { return p.cmd.Process.Pid }

func (p *Process) tail(n int) string {
	lines := strings.Split(p.log.String(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// keepLog writes a failed test's whole Envoy log to $SPOKE_ENVOY_LOG_DIR,
// when set (the test prints only its last lines).
func keepLog(t testing.TB, p *Process) {
	dir := os.Getenv("SPOKE_ENVOY_LOG_DIR")
	if dir == "" {
		return
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name() + "-" + p.Name + ".log")
	if err := os.WriteFile(filepath.Join(dir, name), []byte(p.log.String()), 0o644); err != nil {
		t.Logf("keep envoy %s log: %v", p.Name, err)
	}
}

// LogBuffer collects output written from many goroutines (a process, a
// logger) for tests to read.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
