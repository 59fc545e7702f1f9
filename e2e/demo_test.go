package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// TestDemo runs what make demo runs (spoke-demo with the built spoke, the
// real Envoy and examples/demo/cluster.yaml), then the command it prints,
// as a newcomer would: the answer of pod web-1 must come back through
// worker-1's tunnel. Ctrl-C (SIGINT) then stops every process it started
// and removes its directory.
func TestDemo(t *testing.T) {
	bin := envoytest.Binary(t)
	spoke := buildSpoke(t)
	demoBin := filepath.Join(t.TempDir(), "spoke-demo")
	if out, err := exec.Command("go", "build", "-o", demoBin, "../cmd/spoke-demo").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	demo := exec.Command(demoBin, "--spoke", spoke, "--envoy", bin, "--cluster", "../examples/demo/cluster.yaml")
	out, err := demo.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	demo.Stderr = os.Stderr
	if err := demo.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = demo.Process.Kill(); _ = demo.Wait() })
	var command, dir string
	lines := bufio.NewScanner(out)
	for lines.Scan() {
		line := lines.Text()
		if d, ok := strings.CutPrefix(line, "spoke runs on loopback"); ok {
			dir = d[strings.Index(d, "(logs in ")+len("(logs in ") : len(d)-2]
		}
		if c, ok := strings.CutPrefix(line, "    "); ok {
			command = c
		}
		if strings.HasPrefix(line, "Ctrl-C") {
			break
		}
	}
	if command == "" || dir == "" {
		t.Fatalf("the demo printed no command or log directory (command %q, dir %q)", command, dir)
	}
	answer, err := exec.Command("sh", "-c", command).Output()
	if err != nil || !strings.Contains(string(answer), "hello from pod web-1 on worker-1") {
		t.Fatalf("the printed command %q: %v\n%s", command, err, answer)
	}
	if err := demo.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- demo.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the demo after Ctrl-C: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the demo did not stop within 15 s of Ctrl-C")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the demo left %s behind (%v)", dir, err)
	}
	if out, _ := exec.Command("pgrep", "-f", dir).Output(); len(out) > 0 {
		t.Errorf("processes of the demo still run after Ctrl-C: %s", out)
	}
}
