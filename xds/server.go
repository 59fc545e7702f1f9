// Package xds is spoke's xDS runtime: it turns what the sources write into
// the model Store into per-Envoy snapshots (the Publisher, coalesced by a
// Debouncer) and serves them over ADS, state-of-the-world and delta, on a
// TLS port for node proxies and a local Unix socket for the apiserver
// proxy, with health, metrics and the debug API beside it.
//
// Only this package imports go-control-plane's cache and server. Who an
// Envoy is comes from auth, tunnel certificates from pki, ACK/NACK tracking
// and the debug API from status, and Envoy resources from translator.
package xds

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
)

// Options configure a Server.
type Options struct {
	XDSAddress string // gRPC ADS for node proxies over TLS, e.g. ":18000"
	// XDSSocket is a Unix socket for the apiserver proxy: a connection on it
	// is the apiserver role (created mode 0600; put it in a directory only
	// the apiserver proxy can reach). Empty: none.
	XDSSocket string
	// TLS secures XDSAddress. Nil is allowed only with Insecure.
	TLS *auth.TLSOptions
	// Insecure serves XDSAddress in plaintext and believes each Envoy's
	// claimed role and node: local development only.
	Insecure bool
	// Issuer holds the tunnel CA; nil generates a development CA in memory.
	Issuer       *pki.Issuer
	HTTPAddress  string // /healthz, /readyz, /metrics
	DebugAddress string // /debug/status, /debug/config; localhost by default
	Settings     model.Settings
	Holdoff      time.Duration
	MaxDelay     time.Duration
	// APIServerProxyAdmin is the admin address (host:port, localhost) of the
	// apiserver proxy beside this server: its tunnels per node are read from
	// there into /metrics, /debug/tunnels and spoke status. Empty: not read.
	APIServerProxyAdmin string
	// Limits bound connections on XDSAddress; zero values: DefaultConnectionLimits.
	Limits ConnectionLimits
	// CAReloadInterval is how often the tunnel CA files are checked for a
	// rotation; zero: 10 s.
	CAReloadInterval time.Duration
	// CertValidity is the lifetime of issued tunnel certificates.
	CertValidity time.Duration
	// ShutdownGrace: on shutdown the open streams are closed a few at a
	// time over this period (Envoys reconnect elsewhere gradually).
	ShutdownGrace time.Duration
	Log           logrus.FieldLogger
}

// Server is `spoke serve`: sources write into the model store and nudge
// the debouncer, which coalesces; the publisher sets the snapshots that
// changed, go-control-plane serves them.
type Server struct {
	opts      Options
	cache     cachev3.SnapshotCache
	store     *model.Store
	metrics   *metrics.Metrics
	publisher *Publisher
	tracker   *status.Tracker
	debounce  *Debouncer[struct{}]
	// sourceSynced: nothing is published before a source has delivered its
	// first full view (a half-listed cluster would strip Envoys' routes).
	sourceSynced atomic.Bool
	refusal      atomic.Pointer[model.Problem] // the source's refused input, nil when none

	tlsConfig *tls.Config // nil: insecure plaintext

	mu        sync.Mutex
	addresses map[string]string // listener name -> bound address
	ready     chan struct{}
	tunnels   atomic.Pointer[status.TunnelWatcher]
	// handshakes keeps the tunnels the apiserver proxy beside this server refused.
	handshakes *status.HandshakeLog
	// refusals exports the CONNECTs that apiserver proxy refused (WatchTunnels).
	refusals     status.RefusalCollector
	refusalsOnce sync.Once
}

// WatchTunnels reads, until ctx ends, the tunnels each node holds at the
// apiserver proxy whose admin API is at admin, and the CONNECTs it refused
// (spoke_connect_refusals_total).
func (s *Server) WatchTunnels(ctx context.Context, admin string) {
	// Its metrics exist only on a server that watches an apiserver proxy.
	s.refusalsOnce.Do(func() { s.metrics.Registry.MustRegister(&s.refusals) })
	w := &status.TunnelWatcher{Admin: admin, Interval: 2 * time.Second, Nodes: s.store.NodeNames, Metrics: s.metrics,
		Log: s.opts.Log.WithField("component", "tunnels"), Refusals: &s.refusals}
	s.tunnels.Store(w)
	go w.Run(ctx)
}

// NewServer wires a server; nothing listens until Run.
func NewServer(opts Options) (*Server, error) {
	if err := opts.Settings.Validate(); err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	issuer := opts.Issuer
	if issuer == nil {
		var err error
		if issuer, err = pki.NewDevelopmentIssuer(opts.CertValidity); err != nil {
			return nil, err
		}
	}
	s := &Server{opts: opts, metrics: metrics.New(), addresses: map[string]string{}, ready: make(chan struct{})}
	issuer.Reserve("the apiserver proxy", opts.Settings.APIServerProxyName)
	switch {
	case opts.TLS != nil:
		if opts.TLS.CertFile == "" {
			issuer.Reserve("the xDS server", opts.TLS.ServerNames...)
		}
		refused := func(error) { s.metrics.Denied.WithLabelValues(metrics.DeniedClientCertificate).Inc() }
		cfg, err := auth.ServerTLS(*opts.TLS, issuer, refused, opts.Log)
		if err != nil {
			return nil, err
		}
		s.tlsConfig = cfg
	case !opts.Insecure:
		return nil, fmt.Errorf("the xDS port needs TLS options (a client CA for node certificates), or the explicit insecure development mode")
	}
	// ads=false: answer a SotW request with the resources it names. In
	// go-control-plane's ADS mode a request must name every resource of its
	// type in the snapshot, or it gets no answer, only a warning: a node
	// proxy first asks for its tunnel certificate alone, then for the CA.
	s.cache = cachev3.NewSnapshotCache(false, nodeHash{}, cacheLogger{opts.Log})
	s.store = model.NewStore(opts.Settings)
	s.publisher = NewPublisher(s.cache, s.store, opts.Settings, issuer, s.metrics, opts.Log)
	s.metrics.WatchExpiry("tunnel_ca", issuer.CAExpiry)
	s.metrics.WatchExpiry("xds_serving", issuer.ServingExpiry)
	s.tracker = status.NewTracker(s.publisher, s.metrics, opts.Log)
	s.handshakes = &status.HandshakeLog{Metrics: s.metrics, Log: opts.Log.WithField("component", "tunnels"), NodeWithAddress: s.store.NodeWithAddress, IsNode: s.publisher.KnowsNode}
	s.debounce = NewDebouncer(opts.Holdoff, opts.MaxDelay, func(ctx context.Context, _ struct{}, waited time.Duration) {
		if !s.sourceSynced.Load() {
			return
		}
		s.metrics.DebounceSeconds.Observe(waited.Seconds())
		if st := s.publisher.Apply(ctx); st.Backlog > 0 {
			s.debounce.Submit(struct{}{}) // the rest after the next holdoff, behind newer changes
		}
	})
	return s, nil
}

// Sink is what sources write to.
func (s *Server) Sink() source.Sink {
	return source.Sink{
		Store:   s.store,
		Changed: func() { s.debounce.Submit(struct{}{}) },
		Synced: func() {
			s.sourceSynced.Store(true)
			s.debounce.Submit(struct{}{})
		},
		Refused: s.sourceRefused,
	}
}

// sourceRefused records why the source's current input is refused ("":
// accepted): the last good config stays served, and the refusal shows in
// /readyz, spoke_source_refused and spoke status.
func (s *Server) sourceRefused(reason string) {
	if reason == "" {
		s.refusal.Store(nil)
		s.metrics.SourceRefused.Set(0)
		return
	}
	s.refusal.Store(&model.Problem{Object: "source", Kind: model.KindSource,
		Message: reason + "; serving the last good config since " + time.Now().UTC().Format(time.RFC3339)})
	s.metrics.SourceRefused.Set(1)
}

// Publisher exposes the snapshot state (for tests and the debug API).
func (s *Server) Publisher() *Publisher { return s.publisher }

// Tracker exposes the per-Envoy ACK/NACK state.
func (s *Server) Tracker() *status.Tracker { return s.tracker }

// Statuses are the rows of `spoke status`: what each connected Envoy ACKed
// against what the server holds for it.
func (s *Server) Statuses() []status.ProxyStatus { return s.tracker.Statuses() }

// Problems is what the last update left out of the config, and why: the
// source's refused input first, if any.
func (s *Server) Problems() []model.Problem {
	problems := s.publisher.Problems()
	if r := s.refusal.Load(); r != nil {
		problems = append([]model.Problem{*r}, problems...)
	}
	return problems
}

// Tunnels is the last read of the tunnels each node holds at the apiserver
// proxy beside this server, with each node's last refused tunnel.
func (s *Server) Tunnels() status.Tunnels {
	t := status.Tunnels{Error: "tunnels are not watched: start spoke serve with --apiserver-proxy-admin (the admin address of the apiserver proxy beside it)"}
	if watcher := s.tunnels.Load(); watcher != nil {
		t = watcher.Latest()
	}
	t.Refusals = s.handshakes.Refusals()
	return t
}

// Addr returns the bound address of "xds", "http" or "debug" once Run listens.
func (s *Server) Addr(name string) string {
	<-s.ready
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addresses[name]
}

// Run serves until ctx ends, then stops accepting new streams and closes
// the open ones a few at a time over ShutdownGrace.
func (s *Server) Run(ctx context.Context) error {
	// Streams outlive ctx: they end when their connections are drained, or
	// when Run returns.
	streamsCtx, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	xdsServer := serverv3.NewServer(streamsCtx, s.cache, s.tracker.Callbacks())
	grpcOptions := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxConcurrentStreams(16),    // an Envoy needs one ADS stream
		grpc.MaxRecvMsgSize(4 << 20),     // an Envoy's requests are small; 4 MiB bounds a hostile one
		grpc.MaxHeaderListSize(64 << 10), // likewise for headers
		// 5,000 mostly idle connections: gRPC's default 32 KiB read and
		// write buffers per connection held ~300 MiB and fed the garbage
		// collector at start. The write buffer now returns to a pool after
		// each flush, and requests are small.
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(8 << 10),
		// Fixed receive windows: gRPC's default grows them by estimating
		// bandwidth with a PING per burst of data, which every new stream's
		// first requests trigger and every Envoy must answer; requests
		// never need more than this.
		grpc.StaticStreamWindowSize(1 << 20),
		grpc.StaticConnWindowSize(1 << 20),
	}
	limits := s.connectionLimits()
	tcpOptions := append(slices.Clone(grpcOptions), grpc.ConnectionTimeout(limits.Handshake))
	if s.tlsConfig != nil {
		// crypto/tls already holds each record it decrypts, so gRPC's read
		// buffer on top of it would only copy: 8 KiB less per Envoy.
		tcpOptions = append(tcpOptions, grpc.Creds(credentials.NewTLS(s.tlsConfig)), grpc.ReadBufferSize(0))
	} else {
		s.opts.Log.Warn("INSECURE xDS: plaintext, and every Envoy gets the config and tunnel keys of whatever node it claims to be; local development only")
	}
	grpcServer := grpc.NewServer(tcpOptions...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(grpcServer, xdsServer)
	socketServer := grpc.NewServer(grpcOptions...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(socketServer, xdsServer)
	// The apiserver proxy's tunnel handshake log: on the local socket only,
	// never on the port node proxies reach.
	accesslogv3.RegisterAccessLogServiceServer(socketServer, s.handshakes)

	xdsLn, err := s.listen("xds", s.opts.XDSAddress)
	if err != nil {
		return err
	}
	var socketLn net.Listener
	if s.opts.XDSSocket != "" {
		if socketLn, err = listenPrivateSocket(s.opts.XDSSocket); err != nil {
			return err
		}
		s.mu.Lock()
		s.addresses["socket"] = s.opts.XDSSocket
		s.mu.Unlock()
	}
	httpLn, err := s.listen("http", s.opts.HTTPAddress)
	if err != nil {
		return err
	}
	debugLn, err := s.listen("debug", s.opts.DebugAddress)
	if err != nil {
		return err
	}
	close(s.ready)
	httpServer := &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 5 * time.Second}
	debugServer := &http.Server{Handler: s.debugHandler(), ReadHeaderTimeout: 5 * time.Second}

	go s.debounce.Run(ctx)
	go s.renewCertificates(ctx)
	if s.opts.APIServerProxyAdmin != "" {
		s.WatchTunnels(ctx, s.opts.APIServerProxyAdmin)
	}
	errs := make(chan error, 4)
	refused := func(capName string) { s.metrics.RefusedConnections.WithLabelValues(capName).Inc() }
	tcpConns := newConnections(limits, refused, s.opts.Log)
	socketConns := newConnections(ConnectionLimits{}, nil, s.opts.Log) // only the apiserver proxy can reach it
	go func() { errs <- grpcServer.Serve(tcpConns.listen(xdsLn)) }()
	if socketLn != nil {
		go func() { errs <- socketServer.Serve(socketConns.listen(socketLn)) }()
	}
	go func() { errs <- httpServer.Serve(httpLn) }()
	go func() { errs <- debugServer.Serve(debugLn) }()
	s.opts.Log.WithFields(logrus.Fields{"xds": xdsLn.Addr().String(), "http": httpLn.Addr().String(), "debug": debugLn.Addr().String()}).Info("spoke server listening")

	select {
	case <-ctx.Done():
	case err := <-errs:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.opts.Log.WithError(err).Error("a listener failed: shutting down")
		}
	}
	s.opts.Log.WithField("grace", s.opts.ShutdownGrace).Info("shutting down: no new streams; closing the open ones a few at a time over the grace period")
	stopped := make(chan struct{})
	go func() { grpcServer.GracefulStop(); socketServer.GracefulStop(); close(stopped) }()
	go func() {
		n := drain(s.opts.ShutdownGrace, tcpConns, socketConns)
		s.opts.Log.WithField("streams", n).Info("every open stream closed")
	}()
	select {
	case <-stopped:
	case <-time.After(s.opts.ShutdownGrace):
		grpcServer.Stop()
		socketServer.Stop()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = httpServer.Shutdown(shutdownCtx)
	_ = debugServer.Shutdown(shutdownCtx)
	return nil
}

// connectionLimits fills unset limits with the defaults.
func (s *Server) connectionLimits() ConnectionLimits {
	l, d := s.opts.Limits, DefaultConnectionLimits()
	if l.Total <= 0 {
		l.Total = d.Total
	}
	if l.PerSource <= 0 {
		l.PerSource = d.PerSource
	}
	if l.Handshake <= 0 {
		l.Handshake = d.Handshake
	}
	return l
}

// renewCertificates re-publishes proxies whose tunnel certificates are due,
// well before they expire, even when the cluster does not change; and every
// proxy when the tunnel CA files change (a CA rotation needs no restart).
func (s *Server) renewCertificates(ctx context.Context) {
	renew := time.NewTicker(s.publisher.issuer.RenewalCheckInterval())
	defer renew.Stop()
	reload := time.NewTicker(cmp.Or(s.opts.CAReloadInterval, 10*time.Second))
	defer reload.Stop()
	s.warnIfCAExpiresSoon()
	for {
		select {
		case <-ctx.Done():
			return
		case <-renew.C:
			s.publisher.Refresh(ctx)
			s.warnIfCAExpiresSoon()
		case <-reload.C:
			changed, err := s.publisher.issuer.Reload()
			if err != nil {
				s.opts.Log.WithError(err).Warn("cannot reload the tunnel CA: issuing from the current one")
			}
			if changed {
				s.opts.Log.Info("tunnel CA changed: pushing every proxy its new certificate and trust bundle")
				s.publisher.Refresh(ctx)
			}
		}
	}
}

// caExpiryWarning is how long before the tunnel CA expires the server
// starts to warn (once per renewal check): a rotation takes a push to
// every proxy and some care (docs/operations.md).
const caExpiryWarning = 30 * 24 * time.Hour

func (s *Server) warnIfCAExpiresSoon() {
	expiry := s.publisher.issuer.CAExpiry()
	if left := time.Until(expiry); left < caExpiryWarning {
		s.opts.Log.WithFields(logrus.Fields{"expires": expiry.UTC().Format(time.RFC3339), "left": left.Round(time.Minute).String()}).
			Warn("the tunnel CA expires soon: node proxies will refuse the certificates it signs then; rotate it (docs/operations.md, Rotating the tunnel CA)")
	}
}

// umaskMu serializes the process-wide umask change of listenPrivateSocket.
var umaskMu sync.Mutex

// listenPrivateSocket creates a Unix socket with mode 0600 from the start
// (umask, not chmod after the fact: a connection accepted in between would
// be the apiserver role).
func listenPrivateSocket(path string) (net.Listener, error) {
	if err := checkSocketDirectory(filepath.Dir(path)); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove the stale xDS socket %s: %w", path, err)
	}
	umaskMu.Lock()
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	umaskMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("listen on the xDS socket %s: %w (can the server's user write to %s?)", path, err, filepath.Dir(path))
	}
	return ln, nil
}

// checkSocketDirectory refuses a directory for the xDS socket that is
// missing, or that users other than its owner may write to without the
// sticky bit: they could replace the socket, and the apiserver proxy would
// take its config (and its tunnel key) from them.
func checkSocketDirectory(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("the xDS socket's directory %s: %w (create it; the control-plane static pod mounts the host's /var/run/spoke with DirectoryOrCreate)", dir, err)
	}
	if !info.IsDir() {
		return fmt.Errorf("the xDS socket's directory %s is not a directory", dir)
	}
	if mode := info.Mode(); mode.Perm()&0o022 != 0 && mode&os.ModeSticky == 0 {
		return fmt.Errorf("the xDS socket's directory %s has mode %o: other users may replace the socket the apiserver proxy takes its config from; chmod go-w %s (or give it the sticky bit)", dir, mode.Perm(), dir)
	}
	return nil
}

func (s *Server) listen(name, address string) (net.Listener, error) {
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("listen for %s on %s: %w (is another spoke running? pick another address with the flag)", name, address, err)
	}
	s.mu.Lock()
	s.addresses[name] = ln.Addr().String()
	s.mu.Unlock()
	return ln, nil
}

func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.publisher.Synced() {
			http.Error(w, "not ready: no full view of the cluster yet", http.StatusServiceUnavailable)
			return
		}
		if r := s.refusal.Load(); r != nil {
			http.Error(w, "not ready: the cluster source's input is refused: "+r.Message, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	return mux
}

// debugHandler is the tracker's debug API plus /debug/tunnels (tunnels per
// node, and each node's last refused tunnel) and /debug/problems (what the
// last update left out of the config, and why).
func (s *Server) debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", s.tracker.DebugHandler())
	mux.HandleFunc("/debug/problems", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Problems())
	})
	mux.HandleFunc("/debug/tunnels", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Tunnels())
	})
	// spoke status and spoke config check it: an address that answers
	// without it is not a spoke debug API (the metrics port, an Envoy admin).
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(status.DebugAPIHeader, "1")
		mux.ServeHTTP(w, r)
	})
}

// nodeHash keys the snapshot cache by proxy (the claim, which the tracker
// checks against the identity before go-control-plane sees the request); an
// Envoy with no role gets the empty key, which never holds a snapshot.
type nodeHash struct{}

func (nodeHash) ID(node *corev3.Node) string {
	p, err := auth.ProxyOf(node)
	if err != nil {
		return ""
	}
	return p.Key()
}

// cacheLogger routes go-control-plane's logs into logrus at debug level.
type cacheLogger struct{ log logrus.FieldLogger }

func (l cacheLogger) Debugf(format string, args ...any) { l.log.Debugf("xds cache: "+format, args...) }
func (l cacheLogger) Infof(format string, args ...any)  { l.log.Debugf("xds cache: "+format, args...) }
func (l cacheLogger) Warnf(format string, args ...any)  { l.log.Warnf("xds cache: "+format, args...) }
func (l cacheLogger) Errorf(format string, args ...any) { l.log.Errorf("xds cache: "+format, args...) }
