package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/translator/model"
)

// TestTunnelDataIsEncrypted puts a recording relay between a node proxy and
// the apiserver proxy's tunnel port (the node dials the relay as its
// apiserver endpoint), sends a random payload through a CONNECT to a pod
// and back, and checks that neither the payload, the echo, nor the CONNECT
// target ever crossed the wire in plaintext. The handshake's TLS alone
// would not do: after the handshake Envoy hands the raw socket to the
// tunnel, so without the second TLS layer the tunnelled HTTP/2 is readable.
func TestTunnelDataIsEncrypted(t *testing.T) {
	relay := startRelay(t)
	tp := newTopologyWith(t, func(s *model.Settings) { s.APIServerEndpoints = []string{relay.addr} })
	relay.setTarget(fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort))
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	target := fmt.Sprintf("127.1.1.7:%d", tp.port)
	waitForTunnel(t, tp.settings.EgressSocketPath, target)

	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	payload := "spoke-payload-" + hex.EncodeToString(secret)
	if got := echoThroughTunnel(t, tp.settings.EgressSocketPath, target, payload); got != "node-a/pod web-a: "+payload {
		t.Fatalf("echo through the tunnel: %q", got)
	}
	wire := relay.bytes()
	if len(wire) < 1000 {
		t.Fatalf("the relay saw only %d bytes: the tunnel did not go through it", len(wire))
	}
	for _, plain := range []string{payload, target, "CONNECT", ":authority"} {
		if bytes.Contains(wire, []byte(plain)) {
			t.Errorf("%q crossed the tunnel in plaintext (%d bytes captured)", plain, len(wire))
		}
	}
	if !t.Failed() {
		t.Logf("captured %d tunnel bytes; none of the payload, target or HTTP/2 headers in plaintext", len(wire))
	}
}

// echoThroughTunnel CONNECTs to target through the egress socket, sends one
// line and returns the line that comes back.
func echoThroughTunnel(t *testing.T, socket, target, line string) string {
	t.Helper()
	conn, br, status, err := sendCONNECT(socket, target, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if status != http.StatusOK {
		t.Fatalf("CONNECT %s: status %d", target, status)
	}
	fmt.Fprintf(conn, "%s\n", line)
	got, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	return strings.TrimSuffix(got, "\n")
}

// relay forwards TCP connections to target and records every byte in both
// directions.
type relay struct {
	addr   string
	mu     sync.Mutex
	target string
	buf    bytes.Buffer
}

func (r *relay) setTarget(target string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.target = target
}

func startRelay(t *testing.T) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	r := &relay{addr: ln.Addr().String()}
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			r.mu.Lock()
			target := r.target
			r.mu.Unlock()
			up, err := net.Dial("tcp", target)
			if err != nil {
				down.Close()
				continue
			}
			t.Cleanup(func() { down.Close(); up.Close() })
			go r.copy(up, down)
			go r.copy(down, up)
		}
	}()
	return r
}

func (r *relay) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			r.buf.Write(buf[:n])
			r.mu.Unlock()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if err != io.EOF {
				dst.Close()
			}
			return
		}
	}
}

func (r *relay) bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.buf.Bytes()...)
}
