package e2e

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestTunnelListenerSurvivesSilentConnections: 200 connections to the
// apiserver proxy's tunnel port that never start TLS are closed after the
// handshake timeout, and a real node proxy gets its tunnels meanwhile.
func TestTunnelListenerSurvivesSilentConnections(t *testing.T) {
	timeout := time.Second
	tp := newTopologyWith(t, func(s *model.Settings) { s.TunnelHandshakeTimeout = model.Duration(timeout) })
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tunnelPort := fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort)
	var silent []net.Conn
	for i := 0; i < 200; i++ {
		c, err := net.DialTimeout("tcp", tunnelPort, time.Second)
		if err != nil {
			t.Fatalf("silent connection %d: %v", i, err)
		}
		defer c.Close()
		silent = append(silent, c)
	}
	start := time.Now()
	tp.startNodeProxy("node-a", "node-a")
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	t.Logf("tunnel up %v after the node proxy started, beside 200 silent connections", time.Since(start).Round(10*time.Millisecond))
	open := 0
	for _, c := range silent {
		_ = c.SetReadDeadline(start.Add(timeout + 5*time.Second))
		if _, err := io.ReadAll(c); err != nil {
			open++ // still open at the deadline
		}
	}
	if open > 0 {
		t.Errorf("%d of 200 connections that never started TLS are still open %v after the %v handshake timeout", open, 5*time.Second, timeout)
	}
	// Whichever bound fires first closes them: the TLS handshake timeout of
	// the filter chain, or the tunnel filter's handshake timeout.
	timeouts := tp.apiProxy.StatSum(".downstream_cx_transport_socket_connect_timeout") + tp.apiProxy.Stat("reverse_tunnel.handshake.timeout")
	if timeouts < 200 {
		t.Errorf("the apiserver proxy counted %d handshake timeouts, want 200", timeouts)
	}
}

// TestTunnelsPerNodeAreCapped: a node proxy asking for more tunnels than
// the per-node cap (its rc:// count set far above it) is refused the excess
// at the handshake (Envoy enforces the cap per worker and best-effort, so a
// few above it may pass), and its tunnels still carry CONNECTs.
func TestTunnelsPerNodeAreCapped(t *testing.T) {
	tp := newTopologyWith(t, func(s *model.Settings) { s.TunnelsPerEndpoint = envoy.MaxTunnelsPerNode + 36 })
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	node := tp.startNodeProxy("node-a", "node-a")
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	time.Sleep(3 * time.Second) // let the node proxy dial everything it wants (maintenance runs every second)
	held := node.Stat("listener.127.0.0.1_1.downstream_cx_active")
	rejected := tp.apiProxy.Stat("reverse_tunnel.handshake.rejected")
	t.Logf("node-a asked for %d tunnels, holds %d; the apiserver proxy rejected %d handshakes (cap %d per worker, 1 worker)",
		tp.settings.TunnelsPerEndpoint, held, rejected, envoy.MaxTunnelsPerNode)
	if rejected <= 0 || held >= int(tp.settings.TunnelsPerEndpoint) {
		t.Errorf("the per-node cap did not bite: %d tunnels held of %d asked, %d handshakes rejected", held, tp.settings.TunnelsPerEndpoint, rejected)
	}
}
