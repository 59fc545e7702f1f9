package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fromNode runs f on an OS thread moved into n's network namespace: what a
// process on that node can do. The thread goes back to the test's
// namespace afterwards and stays alive: children started with Pdeathsig
// (dieWithTest) from a thread that exits are killed with it, and the
// runtime may have started a node's containerd from this one.
func fromNode(t *testing.T, n *kubeNode, f func()) {
	t.Helper()
	failed := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			failed <- err
			return
		}
		defer unix.Close(home)
		node, err := unix.Open("/var/run/netns/"+n.netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			failed <- err
			return
		}
		defer unix.Close(node)
		if err := unix.Setns(node, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			failed <- fmt.Errorf("setns %s: %w", n.netns, err)
			return
		}
		f()
		if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
			// Stay locked: the thread ends with the goroutine rather than
			// serve others in the node's namespace.
			failed <- fmt.Errorf("back from %s: %w", n.netns, err)
			return
		}
		runtime.UnlockOSThread()
		failed <- nil
	}()
	if err := <-failed; err != nil {
		t.Fatal(err)
	}
}

// envoyListeners lists the TCP ports Envoy processes listen on in n's
// network namespace (the node proxy is on the host network).
func envoyListeners(t *testing.T, n *kubeNode) []string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net=/var/run/netns/"+n.netns, "ss", "-Hltnp").CombinedOutput()
	if err != nil {
		t.Fatalf("ss in %s: %v %s", n.netns, err, out)
	}
	var addrs []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 6 && strings.Contains(line, `"envoy"`) {
			addrs = append(addrs, f[3])
		}
	}
	return addrs
}

// checkNodeCannotReachOtherNodes: a process on node a, with root's view of
// it (the node proxy's ports, the kubelet's client certificate), gets
// nowhere near another node's kubelet or pods: no port of a's node proxy
// forwards a CONNECT, and the kubelet's certificate opens no tunnel at the
// apiserver proxy (tunnels need a certificate of spoke's tunnel CA, which
// the server issues over xDS bound to the node's name).
func checkNodeCannotReachOtherNodes(t *testing.T, a *kubeNode, tunnelAddress string, targets []string) {
	t.Helper()
	listeners := envoyListeners(t, a)
	if len(listeners) == 0 {
		t.Fatalf("no Envoy listens in %s: the node proxy's admin at least should; the check would prove nothing", a.netns)
	}
	fromNode(t, a, func() {
		for _, l := range listeners {
			for _, target := range targets {
				if st, err := connectOverTCP(l, target); st == http.StatusOK {
					t.Errorf("a process on %s got %s through the node proxy's port %s", a.name, target, l)
				} else {
					t.Logf("%s: CONNECT %s via the node proxy's port %s: %d %v", a.name, target, l, st, err)
				}
			}
		}
		err := tunnelWithKubeletCertificate(filepath.Join(a.pki, "kubelet-client-current.pem"), tunnelAddress)
		if err == nil {
			t.Errorf("the apiserver proxy accepted a tunnel connection with %s's kubelet certificate", a.name)
		} else {
			t.Logf("%s: a tunnel connection with the kubelet's certificate: %v", a.name, err)
		}
	})
}

// connectOverTCP sends a CONNECT to a proxy port and returns the status.
func connectOverTCP(proxy, target string) (int, error) {
	conn, err := net.DialTimeout("tcp", proxy, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// tunnelWithKubeletCertificate opens TLS to the apiserver proxy's tunnel
// port with a kubelet client certificate and waits for an answer: nil
// means the apiserver proxy kept the connection for a tunnel handshake.
func tunnelWithKubeletCertificate(pemFile, address string) error {
	cert, err := tls.LoadX509KeyPair(pemFile, pemFile)
	if err != nil {
		return err
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", address,
		&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // the attacker trusts anything
	if err != nil {
		return err
	}
	defer conn.Close()
	// TLS 1.3: the server judges the client certificate after the client's
	// handshake is done, so the verdict arrives on the first read.
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return nil
	}
	return err
}
