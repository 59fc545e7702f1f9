package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/translator/model"
)

// TestHalfSentConnectIsBounded: a client of the egress socket that never
// finishes its CONNECT headers, or sends nothing at all, is disconnected
// after requestHeadersTimeout instead of holding a connection forever; a
// CONNECT stream that is established and then quiet for several times that
// long (a `kubectl logs -f` with nothing to say) is never cut.
func TestHalfSentConnectIsBounded(t *testing.T) {
	timeout := time.Second
	tp := newTopologyWith(t, func(s *model.Settings) { s.RequestHeadersTimeout = model.Duration(timeout) })
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	sock := tp.settings.EgressSocketPath
	target := fmt.Sprintf("127.1.1.7:%d", tp.port)
	waitForTunnel(t, sock, target)

	quiet := openConnect(t, sock, target)
	defer quiet.Close()
	quietLines := bufio.NewReader(quiet)
	half := dialEgress(t, sock)
	fmt.Fprintf(half, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n", target) // no final CRLF
	silent := dialEgress(t, sock)

	start := time.Now()
	for name, conn := range map[string]net.Conn{"half-sent CONNECT": half, "silent connection": silent} {
		_ = conn.SetReadDeadline(start.Add(timeout + 10*time.Second))
		if _, err := io.ReadAll(conn); err != nil {
			t.Errorf("%s still open after %v (%v): it must be closed after the request headers timeout", name, time.Since(start).Round(time.Second), err)
		} else {
			t.Logf("%s closed after %v", name, time.Since(start).Round(100*time.Millisecond))
		}
	}
	time.Sleep(time.Until(start.Add(timeout + 2*time.Second)))
	fmt.Fprintf(quiet, "still there?\n")
	_ = quiet.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := quietLines.ReadString('\n'); err != nil || line != "node-a/pod web-a: still there?\n" {
		t.Errorf("an established CONNECT quiet for %v was cut: %q, %v", time.Since(start).Round(time.Second), line, err)
	}
}

func dialEgress(t *testing.T, socket string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		t.Fatalf("dial egress socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
