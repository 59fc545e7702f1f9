package e2e

import (
	"cmp"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/xds"
)

// secureServer is spoke serve as deployed: TLS xDS for node proxies
// (kubelet-like client certificates from clusterCA), a Unix socket for the
// apiserver proxy, tunnel certificates from issuer.
type secureServer struct {
	srv       *xds.Server
	issuer    *pki.Issuer
	clusterCA *authtest.CA
	dir       string
	serverCA  string // file: the tunnel CA, which signs the xDS serving certificate
	logs      *envoytest.LogBuffer
	xdsAddr   string   // a fixed address (a restarted server, one in another process); empty: srv's
	replicas  []string // the xDS addresses node proxies are given; empty: this server's only
}

func (s *secureServer) nodeXDSAddresses() []string {
	if len(s.replicas) > 0 {
		return s.replicas
	}
	return []string{s.xdsAddress()}
}

func (s *secureServer) xdsAddress() string {
	if s.xdsAddr != "" {
		return s.xdsAddr
	}
	return s.srv.Addr("xds")
}

// startSecureServer runs a server with a development tunnel CA.
func startSecureServer(t *testing.T, tp *topology, clusterFile string, certValidity time.Duration) *secureServer {
	t.Helper()
	issuer, err := pki.NewDevelopmentIssuer(certValidity)
	if err != nil {
		t.Fatal(err)
	}
	s := newSecureServer(t, issuer)
	s.run(t, tp, clusterFile, func(o *xds.Options) { o.CertValidity = certValidity })
	return s
}

// newSecureServer prepares what a server as deployed needs (a cluster CA
// for kubelet-like client certificates, the file node proxies trust for the
// server's certificate); run starts it.
func newSecureServer(t *testing.T, issuer *pki.Issuer) *secureServer {
	t.Helper()
	s := &secureServer{issuer: issuer, clusterCA: authtest.NewCA(t, "e2e cluster CA"), dir: t.TempDir(), logs: &envoytest.LogBuffer{}}
	s.serverCA = authtest.WriteFile(t, s.dir, "xds-ca.crt", issuer.CAPEM())
	return s
}

// run starts the server (on s.xdsAddr when set) with its file source on
// clusterFile, tweak adjusting the options, and returns a stop function
// (also called when the test ends).
func (s *secureServer) run(t *testing.T, tp *topology, clusterFile string, tweak func(*xds.Options)) (stop func()) {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(s.logs)
	opts := xds.Options{
		XDSAddress: cmp.Or(s.xdsAddr, "127.0.0.1:0"), XDSSocket: filepath.Join(s.dir, "xds.sock"), Issuer: s.issuer,
		TLS:         &auth.TLSOptions{ClientCAFile: authtest.WriteFile(t, s.dir, "client-ca.crt", s.clusterCA.CertPEM), ServerNames: []string{"spoke-server"}},
		HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: tp.settings, Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: log.WithField("test", t.Name()),
	}
	if tweak != nil {
		tweak(&opts)
	}
	srv, err := xds.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.srv = srv
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(done) }()
	go (&source.File{Path: clusterFile, Interval: 50 * time.Millisecond, Log: log}).Run(ctx, srv.Sink())
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			envoytest.LogDump(t, "server log", s.logs.String())
		}
	})
	return stop
}

// startAPIServerProxy runs an apiserver proxy on the server's socket.
func (s *secureServer) startAPIServerProxy(t *testing.T, bin, id string) *envoytest.Process {
	t.Helper()
	return s.startAPIServerProxyWith(t, bin, id)
}

// startAPIServerProxyWith is startAPIServerProxy with Envoy flags.
func (s *secureServer) startAPIServerProxyWith(t *testing.T, bin, id string, flags ...string) *envoytest.Process {
	t.Helper()
	return s.startAPIServerProxyOver(t, bin, id, false, flags...)
}

// startAPIServerProxyOver is startAPIServerProxyWith over delta xDS (delta)
// or state of the world.
func (s *secureServer) startAPIServerProxyOver(t *testing.T, bin, id string, delta bool, flags ...string) *envoytest.Process {
	t.Helper()
	return s.startAPIServerProxyFrom(t, bin, id, envoy.BootstrapOptions{Delta: delta}, flags...)
}

// startAPIServerProxyFrom is startAPIServerProxyWith with bootstrap options
// (role, id and the server's socket filled in).
func (s *secureServer) startAPIServerProxyFrom(t *testing.T, bin, id string, o envoy.BootstrapOptions, flags ...string) *envoytest.Process {
	t.Helper()
	o.Role, o.NodeID, o.XDSSocket = translator.RoleAPIServer, id, s.srv.Addr("socket")
	b, err := envoy.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	return envoytest.StartWithFlags(t, bin, "served-"+id, b, flags...)
}

// startNodeProxyFlags is startNodeProxy (SotW) with Envoy flags.
func (s *secureServer) startNodeProxyFlags(t *testing.T, bin, node string, flags ...string) *envoytest.Process {
	t.Helper()
	certPEM, keyPEM := s.clusterCA.KubeletClient(t, node)
	start := func(t testing.TB, bin, name string, b *bootstrapv3.Bootstrap) *envoytest.Process {
		return envoytest.StartWithFlags(t, bin, name, b, flags...)
	}
	return s.startNode(t, bin, node, false, certPEM, keyPEM, start)
}

// startNodeProxy runs a node proxy with a kubelet-like client certificate
// for node, kept as a kubelet keeps it: one PEM file with cert and key.
func (s *secureServer) startNodeProxy(t *testing.T, bin, node string, delta bool) *envoytest.Process {
	t.Helper()
	certPEM, keyPEM := s.clusterCA.KubeletClient(t, node)
	return s.startNodeProxyWith(t, bin, node, delta, certPEM, keyPEM)
}

func (s *secureServer) startNodeProxyWith(t *testing.T, bin, node string, delta bool, certPEM, keyPEM []byte) *envoytest.Process {
	t.Helper()
	return s.startNode(t, bin, node, delta, certPEM, keyPEM, envoytest.Start)
}

// startOutsider runs a node proxy that should get no config (it never
// becomes ready).
func (s *secureServer) startOutsider(t *testing.T, bin, node string, certPEM, keyPEM []byte) *envoytest.Process {
	t.Helper()
	return s.startNode(t, bin, node, false, certPEM, keyPEM, envoytest.StartUnready)
}

func (s *secureServer) startNode(t *testing.T, bin, node string, delta bool, certPEM, keyPEM []byte,
	start func(testing.TB, string, string, *bootstrapv3.Bootstrap) *envoytest.Process) *envoytest.Process {
	t.Helper()
	dir, err := os.MkdirTemp(s.dir, "node-"+node+"-")
	if err != nil {
		t.Fatal(err)
	}
	pki := filepath.Join(dir, "kubelet-pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	kubeletPEM := authtest.WriteFile(t, pki, "kubelet-client-current.pem", certPEM, keyPEM)
	sdsDir := filepath.Join(dir, "envoy")
	if err := os.MkdirAll(sdsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := envoy.WriteSDSFiles(sdsDir, kubeletPEM, kubeletPEM, s.serverCA); err != nil {
		t.Fatal(err)
	}
	b, err := envoy.Bootstrap(envoy.BootstrapOptions{
		Role: translator.RoleNode, NodeID: node, XDSAddresses: s.nodeXDSAddresses(), Delta: delta,
		TLS: &envoy.XDSClientTLS{SDSDir: sdsDir, ServerName: "spoke-server"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return start(t, bin, "served-"+node, b)
}
