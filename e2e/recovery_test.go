package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/source"
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
	dir := t.TempDir()
	sec := &secureServer{issuer: issuer, clusterCA: authtest.NewCA(t, "e2e cluster CA"), dir: dir, logs: &envoytest.LogBuffer{},
		xdsAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	sec.serverCA = authtest.WriteFile(t, dir, "xds-ca.crt", issuer.CAPEM())
	clientCA := authtest.WriteFile(t, dir, "client-ca.crt", sec.clusterCA.CertPEM)
	run := func() (*xds.Server, func()) {
		log := logrus.New()
		log.SetOutput(sec.logs)
		srv, err := xds.NewServer(xds.Options{
			XDSAddress: sec.xdsAddr, Issuer: issuer, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
			TLS:      &auth.TLSOptions{ClientCAFile: clientCA, ServerNames: []string{"spoke-server"}},
			Settings: tp.settings, Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
			CertValidity: time.Hour, ShutdownGrace: 100 * time.Millisecond, Log: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = srv.Run(ctx); close(done) }()
		go (&source.File{Path: file, Interval: 50 * time.Millisecond, Log: log}).Run(ctx, srv.Sink())
		return srv, func() { cancel(); <-done }
	}
	first, stopFirst := run()
	sec.srv = first
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	stopFirst()
	time.Sleep(8 * time.Second)
	second, stopSecond := run()
	defer stopSecond()
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
