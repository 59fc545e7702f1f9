package authtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

const dialEnv = "SPOKE_TEST_DIAL_UNIX"

// init turns a test binary that imports this package into a Unix-socket
// dialer when DialUnixAs runs it.
func init() {
	if path := os.Getenv(dialEnv); path != "" {
		conn, err := net.Dial("unix", path)
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		conn.Close()
		os.Exit(0)
	}
}

// DialUnixAs connects to a Unix socket as another uid (the test must run
// as root; it skips otherwise, saying so) by running a copy of the test
// binary under that uid, and returns its output and error: a socket the
// uid may not use fails with "permission denied".
func DialUnixAs(t testing.TB, uid uint32, socket string) (string, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot act as another uid to check a socket's permissions (its mode is checked separately)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "spoke-dial-as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "dial")
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{dialEnv + "=" + socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
