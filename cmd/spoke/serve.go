package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/bombsimon/logrusr/v4"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/kubestatus"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

type serveOptions struct {
	source        string
	kubeconfig    string
	settingsFile  string
	maxConnsGiven bool // --xds-max-connections was set: lowering it to fit the descriptors is a warning
	xdsAddress    string
	xdsSocket     string
	httpAddress   string
	debugAddress  string
	holdoff       time.Duration
	maxDelay      time.Duration
	pollInterval  time.Duration
	certValidity  time.Duration
	shutdownGrace time.Duration
	logFormat     string

	tls             auth.TLSOptions
	tunnelCACert    string
	tunnelCAKey     string
	tunnelCASecret  string
	insecureXDS     bool
	insecureCluster bool
	limits          xds.ConnectionLimits
	apiProxyAdmin   string
	statusConfigMap string
	replica         string
}

func newServeCommand() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve Envoy config over ADS (SotW and delta) from a live cluster or a cluster file",
		Long: `Serve every apiserver proxy and node proxy its config over ADS.

Sources:
  --source file=PATH   a cluster dump in the spoke translate input format,
                       reloaded when its content changes
  --source kubernetes  watch the cluster (in-cluster config, or --kubeconfig)

Authentication (the default is secure):
  node proxies   connect to --xds-address over TLS 1.3 with a client
                 certificate signed by --client-ca-file that names their node
                 (kubelet client certificates: CN system:node:<name>,
                 O system:nodes). They get that node's config and nothing else.
  apiserver      connects to --xds-socket, a Unix socket created mode 0600:
  proxies        the file system is the credential (same host, same user).
  --insecure-xds plaintext, every Envoy believed: local development only, and
                 refused with --source kubernetes unless
                 --insecure-allow-kubernetes is given too.

The tunnel CA that issues every tunnel certificate over SDS comes from
--tunnel-ca-cert-file/--tunnel-ca-key-file or --tunnel-ca-secret NAMESPACE/NAME
(a kubernetes.io/tls Secret); with the file source and neither, a development
CA is generated in memory (tunnels then break at every restart).

Health and metrics: /healthz, /readyz, /metrics on --http-address. Inspection
(spoke status, spoke config dump) uses --debug-address, which should stay on
localhost.

With --source kubernetes, each replica also publishes its status into the
Kubernetes API, readable with kubectl alone when the data path is down
(kubectl spoke status): its key (--replica) of the ConfigMap
--status-configmap, and Events on a Node when it loses or regains its tunnels
or has one refused.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.maxConnsGiven = cmd.Flags().Changed("xds-max-connections")
			return o.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.source, "source", "file=examples/cluster.yaml", "where the cluster comes from: kubernetes or file=PATH")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --source kubernetes and --tunnel-ca-secret (default: in-cluster config)")
	f.StringVar(&o.settingsFile, "config", "", "settings file (YAML); see examples/settings.yaml")
	f.StringVar(&o.xdsAddress, "xds-address", "127.0.0.1:18000", "gRPC ADS listen address for node proxies (TLS)")
	f.StringVar(&o.xdsSocket, "xds-socket", "", "Unix socket for the apiserver proxy's ADS, e.g. /var/run/spoke/xds.sock")
	f.StringVar(&o.tls.ClientCAFile, "client-ca-file", "", "CA bundle that signs node proxies' client certificates (the cluster CA for kubelet certificates)")
	f.StringVar(&o.tls.CertFile, "tls-cert-file", "", "xDS serving certificate (default: issued from the tunnel CA for --xds-server-name)")
	f.StringVar(&o.tls.KeyFile, "tls-private-key-file", "", "key of --tls-cert-file")
	f.StringSliceVar(&o.tls.ServerNames, "xds-server-name", []string{"spoke-server"}, "names (DNS or IP) of the self-issued xDS serving certificate")
	f.StringVar(&o.tunnelCACert, "tunnel-ca-cert-file", "", "tunnel CA certificate (PEM)")
	f.StringVar(&o.tunnelCAKey, "tunnel-ca-key-file", "", "tunnel CA private key (PEM)")
	f.StringVar(&o.tunnelCASecret, "tunnel-ca-secret", "", "tunnel CA as a kubernetes.io/tls Secret, NAMESPACE/NAME")
	f.BoolVar(&o.insecureXDS, "insecure-xds", false, "plaintext xDS that believes every Envoy's claimed identity (local development only)")
	f.BoolVar(&o.insecureCluster, "insecure-allow-kubernetes", false, "allow --insecure-xds with --source kubernetes (never on a real cluster)")
	f.StringVar(&o.httpAddress, "http-address", "127.0.0.1:18001", "health and metrics listen address")
	f.StringVar(&o.debugAddress, "debug-address", "127.0.0.1:18002", "debug API listen address (spoke status, spoke config)")
	f.DurationVar(&o.holdoff, "debounce", 10*time.Millisecond, "quiet time that ends a burst of changes")
	f.DurationVar(&o.maxDelay, "debounce-max", 50*time.Millisecond, "longest a change waits in a burst")
	f.DurationVar(&o.pollInterval, "file-poll", 500*time.Millisecond, "how often the file source checks its file")
	f.DurationVar(&o.certValidity, "cert-validity", 24*time.Hour, "lifetime of issued tunnel certificates (renewed after two thirds)")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 5*time.Second, "on SIGTERM, close the open xDS streams a few at a time over this period, so Envoys move to other servers gradually")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&o.apiProxyAdmin, "apiserver-proxy-admin", "", "admin address of the apiserver proxy beside this server (e.g. 127.0.0.1:9901): its tunnels per node go into /metrics and spoke status")
	f.StringVar(&o.statusConfigMap, "status-configmap", kubestatus.DefaultNamespace+"/"+kubestatus.DefaultConfigMap, "with --source kubernetes: NAMESPACE/NAME of the ConfigMap this replica publishes its status into (empty: publish nothing, and put no Events on Nodes)")
	f.StringVar(&o.replica, "replica", "", "this replica's name in the status ConfigMap and its Events (default: the host name)")
	d := xds.DefaultConnectionLimits()
	f.IntVar(&o.limits.Total, "xds-max-connections", d.Total, "cap on open connections to --xds-address (lowered to fit the file descriptor limit)")
	f.IntVar(&o.limits.PerSource, "xds-max-connections-per-source", d.PerSource, "cap on open connections from one IP address (raise it above the number of nodes behind one NAT address)")
	f.DurationVar(&o.limits.Handshake, "xds-handshake-timeout", d.Handshake, "a new connection must finish its TLS and HTTP/2 handshake within this")
	return cmd
}

func (o *serveOptions) run(ctx context.Context) error {
	if err := setupLogging(o.logFormat); err != nil {
		return err
	}
	settings, err := model.LoadSettings(o.settingsFile)
	if err != nil {
		return err
	}
	log := logrus.WithField("component", "server")
	setMemoryLimit(log)
	o.limits.Total = fitFileLimit(o.limits.Total, o.maxConnsGiven, log)
	opts := xds.Options{
		Limits: o.limits, APIServerProxyAdmin: o.apiProxyAdmin,
		XDSAddress: o.xdsAddress, XDSSocket: o.xdsSocket, HTTPAddress: o.httpAddress, DebugAddress: o.debugAddress,
		Settings: settings, Holdoff: o.holdoff, MaxDelay: o.maxDelay, CertValidity: o.certValidity,
		ShutdownGrace: o.shutdownGrace, Log: log, Insecure: o.insecureXDS,
	}
	if err := o.checkInsecure(); err != nil {
		return err
	}
	if !o.insecureXDS {
		opts.TLS = &o.tls
	}
	var client kubernetes.Interface
	if o.source == "kubernetes" || o.tunnelCASecret != "" {
		if client, err = o.kubeClient(); err != nil {
			return err
		}
	}
	if opts.Issuer, err = o.tunnelCA(ctx, client); err != nil {
		return err
	}
	run, err := o.sourceRunner(client)
	if err != nil {
		return err
	}
	srv, err := xds.NewServer(opts)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		if err := run(ctx, srv.Sink()); err != nil {
			logrus.WithError(err).Error("source failed: serving the last config; /readyz stays unready if it never synced")
		}
	}()
	if err := o.publishStatus(ctx, client, srv); err != nil {
		return err
	}
	go func() {
		logrus.Infof("look at what it serves: spoke status --server http://%s ; spoke config dump --server http://%s --proxy node/NAME", srv.Addr("debug"), srv.Addr("debug"))
	}()
	return srv.Run(ctx)
}

// publishStatus starts publishing this replica's status into the Kubernetes
// API, when it watches a cluster and --status-configmap is set.
func (o *serveOptions) publishStatus(ctx context.Context, client kubernetes.Interface, srv *xds.Server) error {
	if o.source != "kubernetes" || o.statusConfigMap == "" {
		return nil
	}
	ns, name, ok := strings.Cut(o.statusConfigMap, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("--status-configmap %q: want NAMESPACE/NAME, or empty to publish nothing", o.statusConfigMap)
	}
	replica := o.replica
	if replica == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--replica not set and no host name: %w", err)
		}
		replica = host
	}
	if err := kubestatus.CheckReplica(replica); err != nil {
		return fmt.Errorf("--replica: %w", err)
	}
	p := &kubestatus.Publisher{Client: client, Namespace: ns, ConfigMap: name, Replica: replica, Interval: 2 * time.Second,
		Log: logrus.WithFields(logrus.Fields{"component": "status-publisher", "replica": replica}),
		Read: func() kubestatus.Input {
			return kubestatus.Input{Envoys: srv.Statuses(), Tunnels: srv.Tunnels(), Problems: srv.Problems()}
		}}
	go p.Run(ctx)
	return nil
}

// setMemoryLimit sets GOMEMLIMIT to 90% of the container's memory limit
// (cgroup), unless GOMEMLIMIT is set: Go sizes its heap at twice the live
// data by default, and at 5,000 node proxies that is the difference between
// fitting the limit and being OOM-killed (see README, "Memory").
func setMemoryLimit(log logrus.FieldLogger) {
	limit, err := memlimit.Set(memlimit.WithRatio(0.9))
	switch {
	case err != nil:
		log.WithError(err).Debug("no container memory limit found; GOMEMLIMIT left to Go's default")
	case limit > 0 && limit < math.MaxInt64:
		log.WithField("GOMEMLIMIT_MiB", limit>>20).Info("Go memory limit set")
	}
}

// setupLogging sets logrus's format and sends client-go's klog lines
// through logrus, so every line of the server has one format.
func setupLogging(format string) error {
	switch format {
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	case "text":
	default:
		return fmt.Errorf("--log-format %q: use text or json", format)
	}
	klog.SetLogger(logrusr.New(logrus.WithField("component", "client-go")))
	return nil
}

// reservedFiles are file descriptors kept for everything but xDS clients:
// the apiserver watch, health and metrics, the debug API, the file source.
const reservedFiles = 256

// fitFileLimit raises the soft file descriptor limit as far as it may go
// (the hard limit; further when the process may raise that too) and returns
// the xDS connection cap lowered, if needed, to leave reservedFiles free:
// a flood of connections must never take the descriptors health checks,
// metrics and the sources need. Lowering a cap the operator gave is a
// warning; lowering the default one is just how the default fits the host.
func fitFileLimit(maxConns int, given bool, log logrus.FieldLogger) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.WithError(err).Warn("cannot read the file descriptor limit; keeping --xds-max-connections as given")
		return maxConns
	}
	want := max(lim.Max, uint64(maxConns+reservedFiles))
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err != nil {
		want = lim.Max // no privilege to raise the hard limit: the soft one up to it
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: lim.Max})
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	fields := logrus.Fields{"file_limit": lim.Cur, "xds_max_connections": maxConns}
	if room := int(lim.Cur) - reservedFiles; room < maxConns {
		maxConns = max(room, 1)
		fields["xds_max_connections"] = maxConns
		if given {
			log.WithFields(fields).Warn("the file descriptor limit is low: --xds-max-connections is lowered to fit it (raise the limit, e.g. LimitNOFILE)")
		} else {
			log.WithFields(fields).Info("xDS connection cap fitted to the file descriptor limit")
		}
		return maxConns
	}
	log.WithFields(fields).Info("file descriptor limit")
	return maxConns
}

// checkInsecure refuses plaintext xDS in front of a real cluster unless a
// second flag insists.
func (o *serveOptions) checkInsecure() error {
	if !o.insecureXDS {
		if o.tls.ClientCAFile == "" {
			return fmt.Errorf("xDS is authenticated by default: pass --client-ca-file (the CA of node client certificates, e.g. /etc/kubernetes/pki/ca.crt), or --insecure-xds for local development")
		}
		return nil
	}
	if o.source == "kubernetes" && !o.insecureCluster {
		return fmt.Errorf("--insecure-xds with --source kubernetes would hand every node's config and tunnel keys to any client of the xDS port; add --insecure-allow-kubernetes to do it anyway (development clusters only)")
	}
	return nil // the server itself warns, loudly, at start
}

// tunnelCA loads the tunnel CA from files or a Secret; only the file source
// may fall back to an in-memory development CA.
func (o *serveOptions) tunnelCA(ctx context.Context, client kubernetes.Interface) (*pki.Issuer, error) {
	switch {
	case o.tunnelCACert != "" || o.tunnelCAKey != "":
		if o.tunnelCACert == "" || o.tunnelCAKey == "" || o.tunnelCASecret != "" {
			return nil, fmt.Errorf("tunnel CA: give --tunnel-ca-cert-file and --tunnel-ca-key-file together, or --tunnel-ca-secret alone")
		}
		return pki.LoadIssuerFiles(o.tunnelCACert, o.tunnelCAKey, o.certValidity)
	case o.tunnelCASecret != "":
		ns, name, ok := strings.Cut(o.tunnelCASecret, "/")
		if !ok || ns == "" || name == "" {
			return nil, fmt.Errorf("--tunnel-ca-secret %q: want NAMESPACE/NAME", o.tunnelCASecret)
		}
		return pki.LoadIssuerSecret(ctx, client.CoreV1(), ns, name, o.certValidity)
	case o.source == "kubernetes":
		return nil, fmt.Errorf("--source kubernetes needs a tunnel CA every server replica shares: --tunnel-ca-secret NAMESPACE/NAME or --tunnel-ca-cert-file/--tunnel-ca-key-file")
	default:
		logrus.Warn("development tunnel CA generated in memory: every restart invalidates all tunnel certificates")
		return nil, nil
	}
}

func (o *serveOptions) kubeClient() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (set --kubeconfig outside a cluster): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// sourceRunner returns the chosen source's Run.
func (o *serveOptions) sourceRunner(client kubernetes.Interface) (func(context.Context, source.Sink) error, error) {
	if path, ok := strings.CutPrefix(o.source, "file="); ok && path != "" {
		// At start, a missing file is a mistake, not a file on its way:
		// serving nothing until it appears would hide it. Later, a file
		// that goes away keeps the last good config.
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("--source file=%s: %w", path, err)
		}
		src := &source.File{Path: path, Interval: o.pollInterval, Log: logrus.WithField("component", "file-source")}
		return func(ctx context.Context, sink source.Sink) error { src.Run(ctx, sink); return nil }, nil
	}
	if o.source != "kubernetes" {
		return nil, fmt.Errorf("--source %q: use kubernetes or file=PATH", o.source)
	}
	src := &source.Kubernetes{Client: client, Log: logrus.WithField("component", "kubernetes-source")}
	return src.Run, nil
}
