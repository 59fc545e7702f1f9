package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// TestNodeProxyResyncsPromptlyAfterServerRestart: a spoke server that was
// down for 8 s comes back on the same address; the node proxy is connected
// again within a few seconds. With Envoy's default xDS back-off (500 ms
// doubling to 30 s) its next attempt could be 8 to 16 s away.
func TestNodeProxyResyncsPromptlyAfterServerRestart(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	file := writeCluster(t, tp)
	issuer, err := pki.NewDevelopmentIssuer(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec := newSecureServer(t, issuer)
	sec.xdsAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	fast := func(o *xds.Options) { o.ShutdownGrace = 100 * time.Millisecond }
	stopFirst := sec.run(t, tp, file, fast)
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	stopFirst()
	time.Sleep(8 * time.Second)
	sec.run(t, tp, file, fast)
	second := sec.srv
	start := time.Now()
	waitFor(t, 15*time.Second, "the node proxy to reconnect to the restarted server", func() bool {
		for _, st := range second.Statuses() {
			if st.Proxy == "node/node-a" && st.States["Listener"] == "SYNCED" {
				return true
			}
		}
		return false
	})
	took := time.Since(start)
	t.Logf("node proxy synced with the restarted server %v after it started listening", took.Round(10*time.Millisecond))
	// The bootstrap's xDS retry back-off brings it back within a few
	// seconds.
	checkWithin(t, "the node proxy's return to the restarted server", took, 5*time.Second)
}

// TestTunnelsRedialPromptlyAfterApiserverProxyRestart: an apiserver proxy
// that is down for 3 s gets its tunnels back at the node's next step of its
// re-dial schedule: its tunnels' first re-dial fails (4 failures), the next
// comes ~8 s later (plus jitter and the maintain tick), never beyond the
// cap nor at Envoy's 10 s default maintain interval.
func TestTunnelsRedialPromptlyAfterApiserverProxyRestart(t *testing.T) {
	tp := newTopology(t)
	sock, target := tp.podBehindTunnel()
	tp.apiProxy.Stop()
	time.Sleep(3 * time.Second)
	tp.startAPIServerProxy()
	start := time.Now()
	waitForTunnel(t, sock, target)
	took := time.Since(start)
	t.Logf("a CONNECT through node-a worked again %v after the apiserver proxy came back", took.Round(10*time.Millisecond))
	// The node proxy re-dials within the back-off's cap and a maintain
	// interval.
	checkWithin(t, "the tunnels' return", took, envoy.TunnelMaxReconnectBackoff+envoy.TunnelMaintainInterval)
}

// TestDeadEndpointRedialsBackOff: a node proxy whose apiserver endpoints
// include one with no proxy behind it (the port takes the connection and
// closes it, like a host whose proxy is gone) re-dials it fast at first,
// then backs off: the whole fleet's rate at a dead endpoint stays bounded.
// The attempts per minute are logged (docs/operations.md, the fleet's rate).
func TestDeadEndpointRedialsBackOff(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	dead, attempts := countingDeadEndpoint(t)
	tp := newTopologyWith(t, func(s *model.Settings) {
		s.APIServerEndpoints = append(s.APIServerEndpoints, dead)
	})
	tp.podBehindTunnel() // the live endpoint's tunnels work throughout
	start := time.Now()
	window := redialWindow()
	time.Sleep(window)
	var early, late int
	var offsets []string
	for _, at := range attempts() {
		offsets = append(offsets, fmt.Sprintf("%.1f", at.Sub(start).Seconds()))
		if at.Sub(start) < window/2 {
			early++
		} else {
			late++
		}
	}
	perMinute := float64(late) / (window / 2).Minutes()
	t.Logf("attempts at the dead endpoint: %d in the first %v, %d in the next %v (%.1f a minute per node; %.0f a second from 5,000 nodes)",
		early, window/2, late, window/2, perMinute, perMinute*5000/60)
	t.Logf("attempts at (s): %s", strings.Join(offsets, " "))
	if bound := redialBound(window / 2); late > bound {
		t.Errorf("%d attempts in %v at a dead endpoint, want at most %d: re-dials should back off to envoy.TunnelMaxReconnectBackoff", late, window/2, bound)
	}
}

// countingDeadEndpoint listens on loopback, closes every connection at once
// and records when each came: an apiserver endpoint with no proxy behind it.
func countingDeadEndpoint(t *testing.T) (addr string, attempts func() []time.Time) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var mu sync.Mutex
	var seen []time.Time
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			seen = append(seen, time.Now())
			mu.Unlock()
			c.Close()
		}
	}()
	return ln.Addr().String(), func() []time.Time {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// redialWindow is how long TestDeadEndpointRedialsBackOff watches (its
// second half is measured): SPOKE_REDIAL_WINDOW, 40 s unless set.
func redialWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("SPOKE_REDIAL_WINDOW")); err == nil && d > 0 {
		return d
	}
	return 40 * time.Second
}

// redialBound is the most attempts one node proxy worker may make at a dead
// endpoint in d once backed off: one per tunnel it keeps there per
// envoy.TunnelMaxReconnectBackoff, and one more each for the window's edge.
func redialBound(d time.Duration) int {
	tunnels := int(model.DefaultSettings().TunnelsPerEndpoint)
	return (int(d/envoy.TunnelMaxReconnectBackoff) + 1) * tunnels
}

// TestRestartedApiserverProxyReachesNodesQuickly kills the apiserver proxy
// (served by spoke over xDS, with the manifests' workers) and starts it
// again at once, ten times (SPOKE_RESTARTS to change), and measures how long
// each took, from the new proxy's readiness, until a CONNECT through
// node-a's tunnel worked, as p50 / p99.
// The node re-dials a maintain interval after its tunnels close: if the new
// proxy listens by then, no re-dial fails; if one fails, that tunnel waits
// Envoy's first back-off step (1 s) and the next maintain tick.
func TestRestartedApiserverProxyReachesNodesQuickly(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	restarts := 10
	if n, err := strconv.Atoi(os.Getenv("SPOKE_RESTARTS")); err == nil && n > 0 {
		restarts = n
	}
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	target, sock := fmt.Sprintf("127.1.1.7:%d", tp.port), tp.settings.EgressSocketPath
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	apiWorkers, _ := manifestWorkers(t)
	flags := []string{"--concurrency", strconv.Itoa(apiWorkers)}
	api := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", flags...)
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	waitForTunnel(t, sock, target)
	var took, startup []time.Duration
	for range restarts {
		// A random pause: the node's maintain ticks meet the kill at every phase.
		time.Sleep(time.Second + rand.N(2*time.Second))
		api.Stop()
		stopped := time.Now()
		api = sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", flags...) // returns once it is ready
		ready := time.Now()
		waitFor(t, 30*time.Second, "a CONNECT through the restarted apiserver proxy", func() bool {
			_, status := roundTrip(t, sock, target)
			return status == http.StatusOK
		})
		took, startup = append(took, time.Since(ready)), append(startup, ready.Sub(stopped))
	}
	// Timed from the new proxy's readiness: what the node's re-dials cost.
	// How long Envoy takes to start and take its config from the server is
	// the machine's load (0.3 s idle, seconds beside the kind tests), logged.
	p50, p99 := datapath.Percentile(took, .5), datapath.Percentile(took, .99)
	t.Logf("apiserver proxy killed and restarted %d times: ready again after p50 %v, longest %v; from then, a CONNECT through node-a worked after p50 %v, p99 %v (all: %v)",
		restarts, datapath.Percentile(startup, .5).Round(10*time.Millisecond), slices.Max(startup).Round(10*time.Millisecond),
		p50.Round(10*time.Millisecond), p99.Round(10*time.Millisecond), took)
	// A restarted apiserver proxy should mostly have its tunnels back
	// within a maintain interval, and never cost more than one failed
	// re-dial.
	checkWithin(t, "the median restart", p50, envoy.TunnelMaintainInterval+time.Second)
	checkWithin(t, "the longest restart (one failed re-dial's cost is the bound)", slices.Max(took), oneFailedRedial)
}

// TestApiserverProxyBackSoonAfterAFailedRedial forces the case that made the
// restart tail: the node re-dials while no apiserver proxy serves its tunnel
// port (a listener that closes each connection stands there until a re-dial
// has failed), and only then does the new proxy start. Envoy backs off each
// listener's host by the failures it counted: when one listener held all 4
// tunnels, one failed round waited ~8 s; with one tunnel per listener, 1 s
// and the next maintain tick.
func TestApiserverProxyBackSoonAfterAFailedRedial(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	target, sock := fmt.Sprintf("127.1.1.7:%d", tp.port), tp.settings.EgressSocketPath
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	api := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	waitForTunnel(t, sock, target)
	api.Stop()
	failed := refuseRedials(t, tp.settings.APIServerEndpoints[0])
	start := time.Now()
	sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1") // returns once it is ready
	ready := time.Now()
	waitFor(t, 30*time.Second, "a CONNECT through the new apiserver proxy", func() bool {
		_, status := roundTrip(t, sock, target)
		return status == http.StatusOK
	})
	// Timed from its readiness, as in TestRestartedApiserverProxyReachesNodesQuickly.
	// How long Envoy takes to start is the machine's load, and the node's
	// re-dials keep failing until it is ready: each failed round doubles a
	// tunnel's back-off, which stays within the time those rounds took. So
	// the bound is one failed re-dial plus that start: 5.3 s idle, where
	// one listener of 4 tunnels took 9.3 s; under the kind tests' load a
	// start of seconds also left the node back 9.3 s after it.
	startup, took := ready.Sub(start), time.Since(ready)
	t.Logf("%d re-dials failed; the new apiserver proxy was ready %v after it started, and a CONNECT worked %v after that",
		failed, startup.Round(10*time.Millisecond), took.Round(10*time.Millisecond))
	if bound := oneFailedRedial + startup; took > bound {
		t.Errorf("the node was back %v after the apiserver proxy was ready (%v after its start); one failed re-dial, plus the back-off of those that failed while it started, should cost at most %v", took, startup, bound)
	}
}

// oneFailedRedial is the most a tunnel whose re-dial failed once may take to
// come back: Envoy's first back-off step (1 s), a maintain interval with its
// upward jitter, and a second for the new proxy to start and the CONNECT.
const oneFailedRedial = time.Second + 2*envoy.TunnelMaintainInterval + time.Second

// refuseRedials listens on addr, closes each connection at once until one
// has come and no other for half a second (so every tunnel that re-dialed in
// that round failed), then stops listening. It returns how many came.
func refuseRedials(t *testing.T, addr string) int {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on the stopped apiserver proxy's tunnel port: %v", err)
	}
	defer ln.Close()
	came := 0
	for {
		timeout := 30 * time.Second
		if came > 0 {
			timeout = 500 * time.Millisecond
		}
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(timeout))
		c, err := ln.Accept()
		if err != nil {
			if came == 0 {
				t.Fatalf("no re-dial of the stopped apiserver proxy in 30 s: %v", err)
			}
			return came
		}
		c.Close()
		came++
	}
}
