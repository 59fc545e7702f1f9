package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
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
	sock, target := tp.podBehindTunnel()

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

// TestEgressSocketLimits: oversized CONNECT headers are refused (431), a
// connection beyond egressMaxConnections is closed while the established
// streams keep working, and 3,000 CONNECTs to targets no node owns are
// refused quickly without the proxy's memory growing.
func TestEgressSocketLimits(t *testing.T) {
	const maxConns = 5
	tp := newTopologyWith(t, func(s *model.Settings) { s.EgressMaxConnections = maxConns })
	sock, target := tp.podBehindTunnel()

	big := dialEgress(t, sock)
	fmt.Fprintf(big, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: %s\r\n\r\n", target, strings.Repeat("x", 16<<10))
	if resp, err := http.ReadResponse(bufio.NewReader(big), &http.Request{Method: http.MethodConnect}); err != nil || resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("CONNECT with 16 KiB of headers: %v %v, want 431", resp, err)
	}
	big.Close()

	var streams []net.Conn
	for i := 0; i < maxConns; i++ {
		c := openConnect(t, sock, target)
		defer c.Close()
		streams = append(streams, c)
	}
	extra := dialEgress(t, sock)
	fmt.Fprintf(extra, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target)
	_ = extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(bufio.NewReader(extra), &http.Request{Method: http.MethodConnect}); err == nil && resp.StatusCode == http.StatusOK {
		t.Errorf("connection %d beyond egressMaxConnections=%d got a tunnel", maxConns+1, maxConns)
	}
	for i, c := range streams {
		fmt.Fprintf(c, "still %d\n", i)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != fmt.Sprintf("node-a/pod web-a: still %d\n", i) {
			t.Errorf("established stream %d broke when the cap refused another: %q %v", i, line, err)
		}
	}
	for _, c := range streams {
		c.Close()
	}

	before := allocatedBytes(t, tp)
	start := time.Now()
	for i := 0; i < 3000; i++ {
		if _, status := roundTrip(t, sock, fmt.Sprintf("10.99.%d.%d:80", i/250, i%250)); status != http.StatusNotFound {
			t.Fatalf("CONNECT %d to an unknown target: status %d, want 404", i, status)
		}
	}
	took := time.Since(start)
	after := allocatedBytes(t, tp)
	t.Logf("3,000 refused CONNECTs in %v (%v each); Envoy heap %d -> %d KiB", took.Round(time.Millisecond), (took / 3000).Round(time.Microsecond), before>>10, after>>10)
	if after > before+16<<20 {
		t.Errorf("the apiserver proxy's heap grew from %d to %d bytes over 3,000 refused CONNECTs", before, after)
	}
}

// allocatedBytes reads the apiserver proxy's heap in use (admin /memory).
func allocatedBytes(t *testing.T, tp *topology) int64 {
	t.Helper()
	body, err := tp.apiProxy.Get("/memory")
	if err != nil {
		t.Fatal(err)
	}
	var mem struct {
		Allocated string `json:"allocated"`
	}
	if err := json.Unmarshal([]byte(body), &mem); err != nil {
		t.Fatalf("/memory: %v: %s", err, body)
	}
	n, err := strconv.ParseInt(mem.Allocated, 10, 64)
	if err != nil {
		t.Fatalf("/memory allocated %q: %v", mem.Allocated, err)
	}
	return n
}
