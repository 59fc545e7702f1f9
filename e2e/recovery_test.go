package e2e

import (
	"fmt"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/xds"
)

// TestNodeProxyResyncsPromptlyAfterServerRestart: a spoke server that was
// down for 8 s comes back on the same address; the node proxy is connected
// again within a few seconds. With Envoy's default xDS back-off (500 ms
// doubling to 30 s) its next attempt could be 8 to 16 s away.
func TestNodeProxyResyncsPromptlyAfterServerRestart(t *testing.T) {
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
	if took > 5*time.Second {
		t.Errorf("the node proxy needed %v to come back; the bootstrap's xDS retry back-off should bring it back within a few seconds", took)
	}
}

// TestTunnelsRedialPromptlyAfterApiserverProxyRestart: an apiserver proxy
// that crashes and comes back gets its tunnels back within a few seconds
// (the node proxy re-checks missing tunnels every maintain interval: 10 s
// by default).
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
	if took > 5*time.Second {
		t.Errorf("tunnels needed %v to come back; the node proxy should re-dial within a few seconds", took)
	}
}
