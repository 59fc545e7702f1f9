package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestTunnelSocketsCarryUnsentLimit: with tunnelUnsentLimit set, every
// tunnel socket of both real Envoys has TCP_NOTSENT_LOWAT at that value (the
// apiserver proxy's accepted tunnels inherit it from its listener, the node
// proxy sets it on those it dials), and CONNECTs work through them; without
// the setting the sockets keep the kernel's default. The sockets are read
// from the running Envoys (pidfd_getfd), not from their config.
func TestTunnelSocketsCarryUnsentLimit(t *testing.T) {
	needOtherProcessSockets(t)
	for _, limit := range []uint32{64 << 10, 0} {
		t.Run(fmt.Sprintf("tunnelUnsentLimit=%d", limit), func(t *testing.T) {
			tp := newTopologyWith(t, func(s *model.Settings) {
				s.TunnelUnsentLimit, s.TunnelBufferLimit = limit, 128<<10
			})
			serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
			tp.startAPIServerProxy()
			node := tp.startNodeProxy("node-a", "node-a")
			socket, target := tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
			waitForTunnel(t, socket, target)
			if got, status := roundTrip(t, socket, target); status != 200 || got != "node-a/pod web-a" {
				t.Fatalf("CONNECT through the tuned tunnel: status %d, answer %q", status, got)
			}
			port := int(tp.settings.TunnelPort)
			apiSide := lowats(tcpSockets(t, tp.apiProxy.PID(), func(local, _ int) bool { return local == port }))
			nodeSide := lowats(tcpSockets(t, node.PID(), func(_, peer int) bool { return peer == port }))
			for side, lowats := range map[string][]int{"apiserver proxy": apiSide, "node proxy": nodeSide} {
				if len(lowats) == 0 {
					t.Errorf("%s: no tunnel socket found", side)
				}
				for _, v := range lowats {
					if v != int(limit) {
						t.Errorf("%s: a tunnel socket has TCP_NOTSENT_LOWAT %d, want %d (all: %v)", side, v, limit, lowats)
						break
					}
				}
			}
		})
	}
}

// lowats are the sockets' TCP_NOTSENT_LOWAT values.
func lowats(sockets []tcpSocket) []int {
	var out []int
	for _, s := range sockets {
		out = append(out, s.lowat)
	}
	return out
}

// TestQuietTunnelsAreKept: Envoy closes an HTTP connection with no stream for
// its idle timeout (1 hour unless set), and a closed tunnel leaves its
// apiserver-proxy worker without a tunnel to the node until the node
// re-dials. spoke turns the timeout off on both ends. With it shortened to
// 1 s on the node proxy (the same config otherwise) the node's tunnel
// sockets are replaced during 3 quiet seconds: the timeout is real and
// reaches tunnels. With spoke's config they are the same sockets after it,
// and a CONNECT works. The golden files guard the config itself (the hour
// does not fit in a test).
func TestQuietTunnelsAreKept(t *testing.T) {
	needOtherProcessSockets(t)
	for _, tc := range []struct {
		name     string
		idle     time.Duration // 0: spoke's config as translated
		replaced bool
	}{{"spoke's config", 0, false}, {"idle timeout 1s", time.Second, true}} {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTopology(t)
			serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
			tp.startAPIServerProxy()
			if tc.idle > 0 {
				tp.tweakNode = func(res *translator.Resources) { setTunnelIdleTimeout(t, res, tc.idle) }
			}
			node := tp.startNodeProxy("node-a", "node-a")
			socket, target := tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
			waitForTunnel(t, socket, target)
			port := int(tp.settings.TunnelPort)
			tunnels := func() []int {
				var ports []int
				for _, s := range tcpSockets(t, node.PID(), func(_, peer int) bool { return peer == port }) {
					ports = append(ports, s.local)
				}
				slices.Sort(ports)
				return ports
			}
			want := int(tp.settings.TunnelsPerEndpoint) // the node proxy runs one worker (envoytest)
			// A settled set: all tunnels, the same sockets half a second
			// apart (a loaded machine can still be re-dialing one).
			var before []int
			waitFor(t, 10*time.Second, "all of the node's tunnels, settled", func() bool {
				first := tunnels()
				time.Sleep(500 * time.Millisecond)
				before = tunnels()
				return len(before) >= want && slices.Equal(first, before)
			})
			time.Sleep(3 * time.Second)
			waitFor(t, 10*time.Second, "all of the node's tunnels after the quiet", func() bool { return len(tunnels()) >= want })
			after := tunnels()
			if replaced := !slices.Equal(before, after); replaced != tc.replaced {
				t.Errorf("tunnel sockets (local ports) before %v, after 3 quiet seconds %v: replaced=%v, want %v", before, after, replaced, tc.replaced)
			}
			got, status := roundTrip(t, socket, target)
			if !tc.replaced && (status != 200 || got != "node-a/pod web-a") {
				t.Errorf("CONNECT after the quiet: status %d, answer %q", status, got)
			}
			// With the timeout, the tunnel an apiserver-proxy worker had
			// pooled is gone: its next CONNECT can fail although the node
			// holds new tunnels (seen: 502). Logged, not asserted: timing.
			t.Logf("%s: CONNECT after the quiet: status %d", tc.name, status)
		})
	}
}

// setTunnelIdleTimeout sets the connection idle timeout of a node proxy's
// tunnel listener.
func setTunnelIdleTimeout(t *testing.T, res *translator.Resources, idle time.Duration) {
	filter := res.Listeners[0].FilterChains[0].Filters[0]
	hcm := new(hcmv3.HttpConnectionManager)
	if err := filter.GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	hcm.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(idle)}
	typed, err := anypb.New(hcm)
	if err != nil {
		t.Fatal(err)
	}
	filter.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: typed}
}
