package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/xds"
)

// TestConnectThroughServedConfig is the tunnel test with everything delivered
// by spoke serve over ADS instead of static files: the rc:// listener over
// LDS, the apiserver proxies over EDS, tunnel certificates over SDS, issued by
// the server's CA. Envoys start from `spoke bootstrap` output only.
func TestConnectThroughServedConfig(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	serve(t, "127.0.1.1", tp.port, "node-a/kubelet")
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(clusterTemplate, tp.port, tp.port)), 0o600); err != nil {
		t.Fatal(err)
	}
	log := logrus.New()
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: tp.settings, Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: log.WithField("test", t.Name()),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Run(ctx) }()
	src := &xds.FileSource{Path: file, Interval: 50 * time.Millisecond, Log: log}
	go src.Run(ctx, srv.Sink())

	for _, p := range []struct {
		role translator.Role
		id   string
	}{{translator.RoleAPIServer, "apiserver-1"}, {translator.RoleNode, "node-a"}, {translator.RoleNode, "node-b"}} {
		b, err := envoy.Bootstrap(envoy.BootstrapOptions{Role: p.role, NodeID: p.id, XDSAddress: srv.Addr("xds"), Delta: p.id == "node-b"})
		if err != nil {
			t.Fatal(err)
		}
		envoytest.Start(t, tp.bin, "served-"+p.id, b)
	}
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	waitForTunnel(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port))
	for _, tc := range []struct{ target, want string }{
		{fmt.Sprintf("127.1.1.7:%d", tp.port), "node-a/pod web-a"},
		{fmt.Sprintf("127.1.2.7:%d", tp.port), "node-b/pod web-b"},
		{fmt.Sprintf("node-a:%d", tp.port), "node-a/kubelet"},
	} {
		if got, status := roundTrip(t, sock, tc.target); status != http.StatusOK || got != tc.want {
			t.Errorf("CONNECT %s: status %d, answer %q; want %q", tc.target, status, got, tc.want)
		}
	}
	if _, status := roundTrip(t, sock, "10.99.99.99:80"); status == http.StatusOK {
		t.Error("CONNECT to an unknown target succeeded")
	}
}
