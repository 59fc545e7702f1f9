package e2e

import (
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/pki"
)

// TestTunnelReconnectHerd: every node dials its tunnels to a fresh
// apiserver proxy at the same moment, the worst case of a restart (real node
// proxies spread their re-dials over the re-check interval and its jitter).
// The apiserver proxy must answer every handshake before a node proxy would
// give up on it (envoy.TunnelHandshakeResponseTimeout): past that, each node
// retries and the herd grows instead of draining. Logs handshakes a second,
// the apiserver proxy's CPU per handshake and what that makes of 5,000
// nodes. SPOKE_HERD_NODES sets the herd (250 nodes unless set). The test's
// own TLS clients share the machine's cores with the apiserver proxy.
func TestTunnelReconnectHerd(t *testing.T) {
	nodes := 250
	if n, err := strconv.Atoi(os.Getenv("SPOKE_HERD_NODES")); err == nil && n > 0 {
		nodes = n
	}
	tp := newTopology(t)
	tunnels := int(tp.settings.TunnelsPerEndpoint)
	raiseFileLimit(t, uint64(2*nodes*tunnels+2000))
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	apiWorkers, _ := manifestWorkers(t)
	apiLog, _ := manifestLogLevels(t)
	api := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", deployedEnvoyFlags(apiWorkers, apiLog)...)
	certs := make([]pki.Certificate, nodes)
	for i := range certs {
		var err error
		if certs[i], err = sec.issuer.NodeCertificate(fmt.Sprintf("herd-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort)
	timeout := envoy.TunnelHandshakeResponseTimeout
	cpuBefore, err := datapath.ProcessCPU(api.PID())
	if err != nil {
		t.Fatal(err)
	}
	took := make([]time.Duration, nodes*tunnels)
	conns := make([]net.Conn, nodes*tunnels)
	errs := make([]error, nodes*tunnels)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range nodes {
		for j := range tunnels {
			k := i*tunnels + j
			wg.Add(1)
			go func() {
				defer wg.Done()
				began := time.Now()
				conns[k], errs[k] = simulatedNode(addr, fmt.Sprintf("herd-%d", i), j, certs[i], sec.issuer.CAPEM(), tp.settings, timeout)
				took[k] = time.Since(began)
			}()
		}
	}
	wg.Wait()
	all := time.Since(start)
	cpuAfter, err := datapath.ProcessCPU(api.PID())
	if err != nil {
		t.Fatal(err)
	}
	failed := 0
	for k, c := range conns {
		if errs[k] != nil {
			if failed < 3 {
				t.Logf("handshake %d: %v", k, errs[k])
			}
			failed++
			continue
		}
		t.Cleanup(func() { c.Close() })
	}
	handshakes := nodes * tunnels
	perHandshake := (cpuAfter - cpuBefore) / time.Duration(handshakes)
	fleet := 5000 * tunnels
	t.Logf("%d nodes x %d tunnels dialed a fresh apiserver proxy (%d workers) at once: all answered in %v (%.0f handshakes a second), each p50 %v, p99 %v, longest %v; %d failed (not answered within %v, or closed)",
		nodes, tunnels, apiWorkers, all.Round(time.Millisecond), float64(handshakes)/all.Seconds(),
		datapath.Percentile(took, .5).Round(time.Millisecond), datapath.Percentile(took, .99).Round(time.Millisecond), slices.Max(took).Round(time.Millisecond), failed, timeout)
	t.Logf("apiserver proxy CPU per handshake %v: 5,000 nodes (%d handshakes) at once need ~%v of CPU, %v on its %d workers",
		perHandshake.Round(time.Microsecond), fleet, (perHandshake * time.Duration(fleet)).Round(100*time.Millisecond),
		(perHandshake * time.Duration(fleet) / time.Duration(apiWorkers)).Round(100*time.Millisecond), apiWorkers)
	if failed > 0 {
		t.Errorf("%d of %d tunnel handshakes failed or were not answered within a node proxy's %v: a restart of this size would make nodes retry", failed, handshakes, timeout)
	}
	if _, err := api.Get("/ready"); err != nil {
		t.Errorf("the apiserver proxy does not answer after the herd: %v\n%s", err, tail(api.Log(), 6000))
	}
	if held := api.StatSum("total_nodes"); held < nodes {
		t.Errorf("the apiserver proxy counts %d connected nodes after the herd, want %d", held, nodes)
	}
}

// raiseFileLimit makes this process's descriptor limit, which the Envoys it
// starts inherit, at least want: the apiserver proxy holds two descriptors
// per tunnel (Envoy 1.40 duplicates each accepted tunnel socket) and aborts
// when it cannot (docs/envoy.md).
func raiseFileLimit(t *testing.T, want uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur >= want {
		return
	}
	old := lim
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}); err != nil {
		t.Skipf("the herd needs %d file descriptors, the limit is %d and cannot be raised (%v): run as root or raise it (ulimit -n)", want, lim.Cur, err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}
