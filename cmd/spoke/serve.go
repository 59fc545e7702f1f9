package main

import (
	"context"
	"fmt"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

type serveOptions struct {
	source        string
	kubeconfig    string
	allowInsecure bool
	settingsFile  string
	xdsAddress    string
	httpAddress   string
	debugAddress  string
	holdoff       time.Duration
	maxDelay      time.Duration
	pollInterval  time.Duration
	certValidity  time.Duration
	shutdownGrace time.Duration
	logFormat     string
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
  --source kubernetes  watch the cluster (in-cluster config, or --kubeconfig);
                       needs --insecure-allow-kubernetes until xDS is authenticated

Envoys pick their role with node.cluster ("spoke-node" with node.id = node
name, or "spoke-apiserver"), as printed by spoke bootstrap. Health and metrics:
/healthz, /readyz, /metrics on --http-address. Inspection (spoke status,
spoke config dump) uses --debug-address, which should stay on localhost.

Development mode: xDS is not authenticated yet and the tunnel CA is generated
in memory at start-up; do not expose --xds-address beyond a test machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd.Context()) },
	}
	f := cmd.Flags()
	f.StringVar(&o.source, "source", "file=examples/cluster.yaml", "where the cluster comes from: kubernetes or file=PATH")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig for --source kubernetes (default: in-cluster config)")
	f.BoolVar(&o.allowInsecure, "insecure-allow-kubernetes", false, "serve a real cluster over unauthenticated xDS (development only)")
	f.StringVar(&o.settingsFile, "config", "", "settings file (YAML); see examples/settings.yaml")
	f.StringVar(&o.xdsAddress, "xds-address", "127.0.0.1:18000", "gRPC ADS listen address")
	f.StringVar(&o.httpAddress, "http-address", "127.0.0.1:18001", "health and metrics listen address")
	f.StringVar(&o.debugAddress, "debug-address", "127.0.0.1:18002", "debug API listen address (spoke status, spoke config)")
	f.DurationVar(&o.holdoff, "debounce", 10*time.Millisecond, "quiet time that ends a burst of changes")
	f.DurationVar(&o.maxDelay, "debounce-max", 50*time.Millisecond, "longest a change waits in a burst")
	f.DurationVar(&o.pollInterval, "file-poll", 500*time.Millisecond, "how often the file source checks its file")
	f.DurationVar(&o.certValidity, "cert-validity", 24*time.Hour, "lifetime of issued tunnel certificates")
	f.DurationVar(&o.shutdownGrace, "shutdown-grace", 5*time.Second, "how long open streams get on SIGTERM")
	f.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

func (o *serveOptions) run(ctx context.Context) error {
	if o.logFormat == "json" {
		logrus.SetFormatter(&logrus.JSONFormatter{})
	}
	settings, err := model.LoadSettings(o.settingsFile)
	if err != nil {
		return err
	}
	run, err := o.sourceRunner()
	if err != nil {
		return err
	}
	log := logrus.WithField("component", "server")
	log.Warn("DEVELOPMENT MODE: xDS is unauthenticated and the tunnel CA lives in memory; any client that reaches the xDS port gets any node's config and keys")
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: o.xdsAddress, HTTPAddress: o.httpAddress, DebugAddress: o.debugAddress,
		Settings: settings, Holdoff: o.holdoff, MaxDelay: o.maxDelay, CertValidity: o.certValidity,
		ShutdownGrace: o.shutdownGrace, Log: log,
	})
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
	go func() {
		logrus.Infof("look at what it serves: spoke status --server http://%s ; spoke config dump --server http://%s --proxy node/NAME", srv.Addr("debug"), srv.Addr("debug"))
	}()
	return srv.Run(ctx)
}

// sourceRunner returns the chosen source's Run.
func (o *serveOptions) sourceRunner() (func(context.Context, xds.Sink) error, error) {
	if path, ok := strings.CutPrefix(o.source, "file="); ok && path != "" {
		src := &xds.FileSource{Path: path, Interval: o.pollInterval, Log: logrus.WithField("component", "file-source")}
		return func(ctx context.Context, sink xds.Sink) error { src.Run(ctx, sink); return nil }, nil
	}
	if o.source != "kubernetes" {
		return nil, fmt.Errorf("--source %q: use kubernetes or file=PATH", o.source)
	}
	if !o.allowInsecure {
		return nil, fmt.Errorf("--source kubernetes would hand every node's config and tunnel keys to any client of the unauthenticated xDS port; pass --insecure-allow-kubernetes to do it anyway (development clusters only)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (set --kubeconfig outside a cluster): %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	src := &xds.KubeSource{Client: client, Log: logrus.WithField("component", "kubernetes-source")}
	return src.Run, nil
}
