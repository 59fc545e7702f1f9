package e2e

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestConnectCommand: spoke connect sends kube-apiserver's CONNECT through
// the real apiserver proxy's egress socket and prints what the target
// answers; a refused CONNECT fails the command with the status and the
// body saying which refusal (404 no owner, 502 no tunnel).
func TestConnectCommand(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxyWithFlags("node-a") // node-b gets none: it holds no tunnel
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	spoke := buildSpoke(t)
	run := func(target string, args ...string) (stdout, stderr string, err error) {
		cmd := exec.Command(spoke, append([]string{"connect", "--socket", sock, "--timeout", "2s", target}, args...)...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err = cmd.Run()
		return out.String(), errOut.String(), err
	}
	// the echoing target never closes: the command ends at --timeout
	out, errOut, err := run(fmt.Sprintf("127.1.1.7:%d", tp.port), "--send", `hello\n`)
	if err != nil || out != "node-a/pod web-a: hello\n" || !strings.Contains(errOut, "200") {
		t.Errorf("through node-a's tunnel: err %v, stdout %q, stderr %q", err, out, errOut)
	}
	out, errOut, err = run(fmt.Sprintf("127.1.2.7:%d", tp.port), "--send", `hello\n`)
	if err == nil || out != "" || !strings.Contains(errOut, "502") || !strings.Contains(errOut, "holds no tunnel") {
		t.Errorf("to node-b (no tunnel): err %v, stdout %q, stderr %q", err, out, errOut)
	}
	if _, errOut, err = run("10.99.99.99:80"); err == nil || !strings.Contains(errOut, "404") {
		t.Errorf("to a target no node owns: err %v, stderr %q", err, errOut)
	}
	if _, errOut, err = run("no-port"); err == nil || !strings.Contains(errOut, "want host:port") {
		t.Errorf("a target without port: err %v, stderr %q", err, errOut)
	}
}
