package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// secureEnv is a server with authenticated xDS on the example cluster: node
// proxies present kubelet-like certificates from clusterCA; the apiserver
// proxy uses the Unix socket.
type secureEnv struct {
	srv       *xds.Server
	clusterCA *authtest.CA
	tunnelCA  []byte // signs the xDS serving certificate (no --tls-cert-file)
	dir       string
	caFile    string
	log       *logtest.Hook
}

func startSecureServer(t *testing.T) *secureEnv {
	t.Helper()
	dir := t.TempDir()
	raw, err := os.ReadFile("../examples/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	clusterFile := authtest.WriteFile(t, dir, "cluster.yaml", raw)
	env := &secureEnv{clusterCA: authtest.NewCA(t, "test cluster CA"), dir: dir}
	env.caFile = authtest.WriteFile(t, dir, "client-ca.crt", env.clusterCA.CertPEM)
	issuer, err := pki.NewDevelopmentIssuer(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	env.tunnelCA = issuer.CAPEM()
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	env.log = logtest.NewLocal(log)
	s := model.DefaultSettings()
	// The socket's directory is open to everyone, so that only the socket's
	// own mode keeps other users out (TestAPIServerRoleOnlyOnTheSocket).
	socketDir, err := os.MkdirTemp("", "spoke-xds-socket")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(socketDir) })
	if err := os.Chmod(socketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	env.srv, err = xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		XDSSocket: filepath.Join(socketDir, "xds.sock"), Issuer: issuer,
		TLS:      &auth.TLSOptions{ClientCAFile: env.caFile, ServerNames: []string{"spoke-server"}, ReloadInterval: 100 * time.Millisecond},
		Settings: s, Holdoff: 5 * time.Millisecond, MaxDelay: 20 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = env.srv.Run(ctx); close(done) }()
	src := &source.File{Path: clusterFile, Interval: 50 * time.Millisecond, Log: log}
	go src.Run(ctx, env.srv.Sink())
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for !env.srv.Publisher().Synced() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return env
}

// dial opens an ADS stream over TLS presenting certPEM/keyPEM (none if
// nil); a refused handshake shows as an error here or on the first Recv.
func (e *secureEnv) dial(t *testing.T, certPEM, keyPEM []byte) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.tunnelCA)
	cfg := &tls.Config{RootCAs: roots, ServerName: "spoke-server", MinVersion: tls.VersionTLS13}
	if certPEM != nil {
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return openStream(t, e.srv.Addr("xds"), grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
}

func openStream(t *testing.T, target string, opts ...grpc.DialOption) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
	t.Helper()
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
}

type adsStreamClient = discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

// mustStream fails the test when the stream could not be opened:
// mustStream(t)(env.dial(...)).
func mustStream(t *testing.T) func(adsStreamClient, error) adsStreamClient {
	return func(stream adsStreamClient, err error) adsStreamClient {
		t.Helper()
		if err != nil {
			t.Fatalf("open ADS stream: %v", err)
		}
		return stream
	}
}

// expectNothing sends a listener request as node and checks that no
// resource comes back; it returns the error that ended the stream (nil if
// it stayed open).
func expectNothing(t *testing.T, stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, openErr error, node *corev3.Node) error {
	t.Helper()
	if openErr != nil {
		return openErr
	}
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ListenerType})
	resp, err := recvWithin(t, stream, 3*time.Second)
	if resp != nil {
		t.Fatalf("got %d resources, want none", len(resp.Resources))
	}
	return err
}

// TestXDSRefusesClientsWithoutANodeCertificate: no certificate, a
// certificate from a foreign CA (even naming a real node), a cluster-CA
// certificate that names no node, an expired kubelet certificate and a
// plaintext client all get nothing; each is logged and counted.
func TestXDSRefusesClientsWithoutANodeCertificate(t *testing.T) {
	env := startSecureServer(t)
	foreign := authtest.NewCA(t, "foreign CA")
	fCert, fKey := foreign.KubeletClient(t, "worker-1")
	adminCert, adminKey := env.clusterCA.Client(t, pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}}, time.Now().Add(time.Hour))
	oldCert, oldKey := env.clusterCA.Client(t, pkix.Name{CommonName: "system:node:worker-1", Organization: []string{"system:nodes"}}, time.Now().Add(-time.Minute))
	type dialed struct {
		stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
		err    error
	}
	dial := func(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, err error) dialed {
		return dialed{s, err}
	}
	cases := map[string]dialed{
		"no certificate":      dial(env.dial(t, nil, nil)),
		"foreign CA":          dial(env.dial(t, fCert, fKey)),
		"no node in the name": dial(env.dial(t, adminCert, adminKey)),
		"expired":             dial(env.dial(t, oldCert, oldKey)),
		"plaintext":           dial(openStream(t, env.srv.Addr("xds"), grpc.WithTransportCredentials(insecure.NewCredentials()))),
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := expectNothing(t, c.stream, c.err, nodeProxy("worker-1")); err == nil {
				t.Error("the stream stayed open; want a transport error")
			}
		})
	}
	if n := metricNumber(t, env.srv, `spoke_xds_denied_total{reason="client_certificate"}`); n < 3 {
		t.Errorf("spoke_xds_denied_total{reason=client_certificate} = %v, want >= 3 (foreign, no node, expired)", n)
	}
}

// TestNodeCertificateDecidesTheNode: worker-1's certificate claiming
// worker-2, or the apiserver role, is refused and the stream closed; a
// stream that starts as worker-1 cannot switch to worker-2 later.
func TestNodeCertificateDecidesTheNode(t *testing.T) {
	env := startSecureServer(t)
	cert, key := env.clusterCA.KubeletClient(t, "worker-1")
	for name, claim := range map[string]*corev3.Node{
		"another node":        nodeProxy("worker-2"),
		"the apiserver":       {Id: "worker-1", Cluster: "spoke-apiserver"},
		"a node id lookalike": nodeProxy("worker-1 "),
	} {
		t.Run(name, func(t *testing.T) {
			err := expectNothing(t, mustStream(t)(env.dial(t, cert, key)), nil, claim)
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("want PermissionDenied, got %v", err)
			}
		})
	}
	t.Run("switch mid-stream", func(t *testing.T) {
		stream := mustStream(t)(env.dial(t, cert, key))
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ClusterType})
		if resp, err := recvWithin(t, stream, 5*time.Second); err != nil || resp == nil {
			t.Fatalf("worker-1 got no clusters with its own certificate: %v", err)
		}
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-2"), TypeUrl: resourcev3.ListenerType})
		resp, err := recvWithin(t, stream, 3*time.Second)
		if resp != nil || status.Code(err) != codes.PermissionDenied {
			t.Fatalf("switching to worker-2: want PermissionDenied and nothing, got %v, %v", resp, err)
		}
	})
	if !logged(env.log, "claims another node or role") {
		t.Error("the refusals were not logged")
	}
}

// TestNodeGetsOnlyItsOwnResources: worker-1, authenticated, asks for every
// resource and secret name (its own and made-up ones); everything it gets
// is worker-1's: its tunnel certificate names worker-1 only, and no response
// mentions worker-2 or its addresses. The foreign names are logged.
func TestNodeGetsOnlyItsOwnResources(t *testing.T) {
	env := startSecureServer(t)
	cert, key := env.clusterCA.KubeletClient(t, "worker-1")
	stream := mustStream(t)(env.dial(t, cert, key))
	var all strings.Builder
	for _, typeURL := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, resourcev3.EndpointType, resourcev3.SecretType} {
		names := []string{translator.NodeTunnelRoute, translator.APIServerProxies, "spoke-tunnel-node", "spoke-tunnel-ca", "spoke-tunnel-apiserver", translator.EgressRoute, "node/worker-2", "worker-2"}
		if typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType {
			names = nil // wildcard: everything this Envoy may have
		}
		_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: typeURL, ResourceNames: names})
		resp, err := recvWithin(t, stream, 5*time.Second)
		if err != nil || resp == nil {
			t.Fatalf("%s: no response: %v", typeURL, err)
		}
		for _, r := range resp.Resources {
			all.WriteString(r.String())
			if typeURL != resourcev3.SecretType {
				continue
			}
			secret := &tlsv3.Secret{}
			if err := r.UnmarshalTo(secret); err != nil {
				t.Fatal(err)
			}
			if secret.GetName() == "spoke-tunnel-apiserver" {
				t.Fatal("a node proxy received the apiserver proxy's secret")
			}
			if c := secret.GetTlsCertificate(); c != nil {
				leaf := parseLeaf(t, c.GetCertificateChain().GetInlineBytes())
				if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "worker-1" {
					t.Fatalf("worker-1's tunnel certificate names %v", leaf.DNSNames)
				}
			}
		}
		_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: names, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
	}
	for _, foreign := range []string{"worker-2", "10.0.0.12", "10.244.2."} {
		if strings.Contains(all.String(), foreign) {
			t.Errorf("worker-1's responses mention %q", foreign)
		}
	}
	if n := metricNumber(t, env.srv, `spoke_xds_denied_total{reason="resource_not_allowed"}`); n < 3 {
		t.Errorf("refused resource names counted %v times, want >= 3", n)
	}
}

// TestAPIServerRoleOnlyOnTheSocket: the Unix socket gives the apiserver
// role (and only it); it is created mode 0600 so other local users cannot
// connect (checked as uid 65534 when the test runs as root).
func TestAPIServerRoleOnlyOnTheSocket(t *testing.T) {
	env := startSecureServer(t)
	socket := "unix://" + env.srv.Addr("socket")
	stream := mustStream(t)(openStream(t, socket, grpc.WithTransportCredentials(insecure.NewCredentials())))
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "apiserver-1", Cluster: "spoke-apiserver"}, TypeUrl: resourcev3.ListenerType})
	if resp, err := recvWithin(t, stream, 5*time.Second); err != nil || resp == nil || len(resp.Resources) == 0 {
		t.Fatalf("the apiserver proxy got no listeners over the socket: %v", err)
	}
	claimNode := mustStream(t)(openStream(t, socket, grpc.WithTransportCredentials(insecure.NewCredentials())))
	if err := expectNothing(t, claimNode, nil, nodeProxy("worker-1")); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a node claim over the apiserver socket: want PermissionDenied, got %v", err)
	}
	info, err := os.Stat(env.srv.Addr("socket"))
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("socket mode %o, want 600", mode)
	}
	out, err := authtest.DialUnixAs(t, 65534, env.srv.Addr("socket"))
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 65534 connecting to the socket: want permission denied, got err=%v %s", err, out)
	}
}

func metricNumber(t *testing.T, srv *xds.Server, series string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(metricValue(t, srv, series), 64)
	if err != nil {
		return 0
	}
	return v
}

func parseLeaf(t *testing.T, pemBytes []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func logged(hook *logtest.Hook, fragment string) bool {
	for _, e := range hook.AllEntries() {
		if strings.Contains(e.Message, fragment) {
			return true
		}
	}
	return false
}

// TestClientCARotation: the client CA file is re-read when it changes: a
// certificate from the new CA is accepted without a restart, one from the
// replaced CA no longer is. (Restored: an earlier change dropped this test
// while README still cited it.)
func TestClientCARotation(t *testing.T) {
	env := startSecureServer(t)
	oldCert, oldKey := env.clusterCA.KubeletClient(t, "worker-1")
	next := authtest.NewCA(t, "next cluster CA")
	authtest.WriteFile(t, env.dir, "client-ca.crt", next.CertPEM)
	time.Sleep(300 * time.Millisecond) // past the reload interval
	newCert, newKey := next.KubeletClient(t, "worker-1")
	stream := mustStream(t)(env.dial(t, newCert, newKey))
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.ClusterType})
	if resp, err := recvWithin(t, stream, 5*time.Second); err != nil || resp == nil {
		t.Fatalf("certificate from the rotated CA refused: %v", err)
	}
	oldStream, openErr := env.dial(t, oldCert, oldKey)
	if err := expectNothing(t, oldStream, openErr, nodeProxy("worker-1")); err == nil {
		t.Error("certificate from the replaced CA still accepted")
	}
}

// TestManyRefusedNamesAreSummarised: a request naming 100,000 resources
// that are not the Envoy's gives a few log lines, not one per name (26 MB
// of log before), while the metric still counts every name.
func TestManyRefusedNamesAreSummarised(t *testing.T) {
	env := startSecureServer(t)
	cert, key := env.clusterCA.KubeletClient(t, "worker-1")
	stream := mustStream(t)(env.dial(t, cert, key))
	names := make([]string, 100000)
	for i := range names {
		names[i] = fmt.Sprintf("probe-%d", i)
	}
	before := len(env.log.AllEntries())
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.RouteType, ResourceNames: names})
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: nodeProxy("worker-1"), TypeUrl: resourcev3.RouteType, ResourceNames: names[:5000]}) // already refused: no new line, no new count
	waitUntil := time.Now().Add(5 * time.Second)
	for metricNumber(t, env.srv, `spoke_xds_denied_total{reason="resource_not_allowed"}`) < 100000 && time.Now().Before(waitUntil) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := metricNumber(t, env.srv, `spoke_xds_denied_total{reason="resource_not_allowed"}`); n != 100000 {
		t.Errorf("refused names counted %v times, want 100000 (each name once per stream)", n)
	}
	var lines int
	for _, e := range env.log.AllEntries()[before:] {
		if strings.Contains(e.Message, "not in its config") {
			lines++
		}
	}
	if lines == 0 || lines > 2 {
		t.Errorf("%d log lines about refused names, want one per request that named new ones", lines)
	}
}

// TestHandshakeLogOnlyFromTheLocalSocket: the tunnel handshake log is taken
// from the apiserver proxy's socket only. A node proxy with a valid
// certificate that sends a forged refusal on the xDS port is refused and
// nothing is recorded; the same entry over the socket is recorded.
func TestHandshakeLogOnlyFromTheLocalSocket(t *testing.T) {
	env := startSecureServer(t)
	forged := &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{LogName: translator.HandshakeLogName, Node: &corev3.Node{Id: "apiserver-1"}},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &accesslogv3.StreamAccessLogsMessage_TCPAccessLogEntries{
			LogEntry: []*accesslogdatav3.TCPAccessLogEntry{{CommonProperties: &accesslogdatav3.AccessLogCommon{
				StartTime:                        timestamppb.Now(),
				DownstreamTransportFailureReason: "TLS_error:forged",
				TlsProperties:                    &accesslogdatav3.TLSProperties{PeerCertificateProperties: &accesslogdatav3.TLSProperties_CertificateProperties{Subject: "CN=worker-2"}},
			}}},
		}},
	}
	send := func(conn *grpc.ClientConn) error {
		stream, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(context.Background())
		if err != nil {
			return err
		}
		_ = stream.Send(forged) // io.EOF when the server already ended the stream; its status comes below
		_, err = stream.CloseAndRecv()
		return err
	}
	cert, key := env.clusterCA.KubeletClient(t, "worker-1")
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(env.tunnelCA)
	node, err := grpc.NewClient(env.srv.Addr("xds"), grpc.WithTransportCredentials(credentials.NewTLS(
		&tls.Config{RootCAs: roots, ServerName: "spoke-server", Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	if err := send(node); status.Code(err) != codes.Unimplemented {
		t.Errorf("a node proxy sending a handshake log on the xDS port: want Unimplemented, got %v", err)
	}
	if got := metricValue(t, env.srv, `spoke_tunnel_refusals_total{class="tls"}`); got != "0" {
		t.Fatalf("a forged entry was counted: %s", got)
	}
	local, err := grpc.NewClient("unix://"+env.srv.Addr("socket"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if err := send(local); err != nil {
		t.Fatalf("the apiserver proxy's socket: %v", err)
	}
	body := httpGet(t, "http://"+env.srv.Addr("debug")+"/debug/tunnels")
	if !strings.Contains(body, `"worker-2"`) || !strings.Contains(body, "TLS_error:forged") {
		t.Errorf("the socket's entry was not recorded under worker-2: %s", body)
	}
}

// TestSocketDirectoryChecked: a socket directory others may write to (no
// sticky bit) or a missing one stops the server with one error saying what
// to do; a sticky world-writable one (/tmp) and a private one are fine.
func TestSocketDirectoryChecked(t *testing.T) {
	base := t.TempDir()
	issuer, err := pki.NewDevelopmentIssuer(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		mode os.FileMode
		want string // "" : accepted
	}{
		{"private", 0o755, ""},
		{"sticky", 0o777 | os.ModeSticky, ""},
		{"open", 0o777, "chmod go-w"},
		{"group", 0o775, "chmod go-w"},
		{"missing", 0, "create it"},
	} {
		dir := filepath.Join(base, c.name)
		if c.mode != 0 {
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, c.mode); err != nil {
				t.Fatal(err)
			}
		}
		srv, err := xds.NewServer(xds.Options{XDSAddress: "127.0.0.1:0", XDSSocket: filepath.Join(dir, "xds.sock"), HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
			Insecure: true, Settings: model.DefaultSettings(), Issuer: issuer, CertValidity: time.Hour, ShutdownGrace: time.Second, Log: logrus.NewEntry(logrus.New())})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- srv.Run(ctx) }()
		select {
		case err = <-runErr:
		case <-time.After(2 * time.Second):
			err = nil
		}
		cancel()
		if c.want == "" && err != nil {
			t.Errorf("%s (%v): %v", c.name, c.mode, err)
		}
		if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), dir)) {
			t.Errorf("%s (%v): want an error naming %s and saying %q, got %v", c.name, c.mode, dir, c.want, err)
		}
	}
}
