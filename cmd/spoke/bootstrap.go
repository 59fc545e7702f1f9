package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/translator"
)

type bootstrapOptions struct {
	role, nodeName, output, outputDir string
	clientCert, clientKey, serverCA   string
	tls                               envoy.XDSClientTLS
	o                                 envoy.BootstrapOptions
	maxHeapMiB                        uint64
	requireClientCert                 bool
}

func newBootstrapCommand() *cobra.Command {
	var b bootstrapOptions
	cmd := &cobra.Command{
		Use:   "bootstrap --role node|apiserver",
		Short: "Print (or write) the static Envoy bootstrap of a role",
		Long: `Print the static bootstrap an Envoy of this role starts with: its node
identity, ADS to the spoke server, the role's reverse-tunnel bootstrap extension
(it cannot arrive over xDS), admin on 127.0.0.1 only, and a connection cap.
Everything else (listeners, routes, clusters, endpoints, secrets) comes over ADS.

Node proxies reach --xds-address over TLS 1.3: with several spoke server
replicas, list each (or give one DNS name, e.g. a headless Service, that
resolves to all); the ADS stream moves to another when its server goes. They authenticate with the
kubelet's client certificate (--client-cert/--client-key; kubelet keeps both in
kubelet-client-current.pem and rotates it), read through a file-based SDS
resource that Envoy watches, so rotations need no restart: --output-dir writes
envoy.yaml and the SDS files (xds-client-sds.yaml, xds-server-ca-sds.yaml).
The server's certificate is verified against --server-ca (read through SDS,
so it may rotate too) and must name --server-name. --node-name is the
Kubernetes node name (in a DaemonSet, from the downward API: spec.nodeName).

Apiserver proxies connect to the server's Unix socket (--xds-socket); the
socket's file mode is their credential.

--insecure connects in plaintext to a server run with --insecure-xds (local
development only).`,
		Example: `  spoke bootstrap --role node --node-name worker-1 --xds-address spoke.kube-system.svc:18000 --output-dir /etc/envoy
  spoke bootstrap --role node --node-name worker-1 --xds-address 10.0.0.2:18000,10.0.0.3:18000 --output-dir /etc/envoy
  spoke bootstrap --role apiserver --xds-socket /var/run/spoke/xds.sock > envoy.yaml
  spoke bootstrap --role node --node-name worker-1 --insecure > envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return b.run(cmd.OutOrStdout()) },
	}
	f := cmd.Flags()
	f.StringVar(&b.role, "role", "", "node or apiserver")
	f.StringVar(&b.nodeName, "node-name", "", "node name (node role); Envoy id (apiserver role, default apiserver-<hostname>)")
	f.StringSliceVar(&b.o.XDSAddresses, "xds-address", []string{"127.0.0.1:18000"}, "gRPC address of each spoke server replica, host:port, repeated or comma-separated; a DNS name stands for all its addresses (node role)")
	f.StringVar(&b.o.XDSSocket, "xds-socket", "/var/run/spoke/xds.sock", "spoke server Unix socket (apiserver role)")
	f.StringVar(&b.clientCert, "client-cert", "/var/lib/kubelet/pki/kubelet-client-current.pem", "node client certificate file (node role)")
	f.StringVar(&b.clientKey, "client-key", "/var/lib/kubelet/pki/kubelet-client-current.pem", "its private key file (may be the same file)")
	f.StringVar(&b.serverCA, "server-ca", "/etc/spoke/xds-ca.crt", "CA that signs the server's xDS certificate (node role)")
	f.StringVar(&b.tls.ServerName, "server-name", "spoke-server", "DNS name the server's certificate must carry (node role)")
	f.StringVar(&b.outputDir, "output-dir", "", "write envoy.yaml (and, for node proxies, xds-client-sds.yaml) here instead of printing")
	f.BoolVar(&b.o.Insecure, "insecure", false, "plaintext TCP to a server run with --insecure-xds (development only)")
	f.Uint32Var(&b.o.AdminPort, "admin-port", 9901, "Envoy admin port (listens on 127.0.0.1)")
	f.BoolVar(&b.o.Delta, "delta", false, "use incremental (delta) xDS")
	f.Uint64Var(&b.o.MaxDownstreamConnections, "max-connections", 50000, "cap on accepted downstream connections")
	f.Uint64Var(&b.maxHeapMiB, "max-heap", 0, "heap limit in MiB: at 95% Envoy refuses new requests and connections (default: 1024 for the apiserver proxy, 256 for a node proxy; keep the container limit above it)")
	f.BoolVar(&b.requireClientCert, "require-client-cert", false, "fail unless --client-cert and --client-key exist here (node role; for an init container on the node itself, so a node without them says so instead of an Envoy waiting forever)")
	f.StringVarP(&b.output, "output", "o", "yaml", "yaml or json")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func (b *bootstrapOptions) run(stdout io.Writer) error {
	// Envoy resolves nothing against the directory bootstrap ran in: its
	// file-based SDS refuses relative paths, and a relative socket would
	// depend on Envoy's working directory.
	for _, path := range []*string{&b.clientCert, &b.clientKey, &b.serverCA, &b.o.XDSSocket} {
		if err := makeAbsolute(path); err != nil {
			return err
		}
	}
	b.o.MaxHeapBytes = b.maxHeapMiB << 20
	o := b.o
	switch b.role {
	case "node":
		o.Role, o.NodeID, o.XDSSocket = translator.RoleNode, b.nodeName, ""
		if !o.Insecure {
			if b.outputDir == "" {
				return fmt.Errorf("a node proxy's bootstrap comes with a file-based SDS resource for its rotating client certificate: pass --output-dir (or --insecure for a development server)")
			}
			dir, err := filepath.Abs(b.outputDir)
			if err != nil {
				return err
			}
			b.tls.SDSDir = dir
			o.TLS = &b.tls
			if b.requireClientCert {
				if err := checkClientCert(b.nodeName, b.clientCert, b.clientKey); err != nil {
					return err
				}
			}
		}
	case "apiserver":
		o.Role = translator.RoleAPIServer
		if o.Insecure {
			o.XDSSocket = "" // plaintext TCP to a development server
		}
		if o.NodeID = b.nodeName; o.NodeID == "" {
			host, _ := os.Hostname()
			o.NodeID = "apiserver-" + host
		}
	default:
		return fmt.Errorf("--role %q: use node or apiserver", b.role)
	}
	bootstrap, err := envoy.Bootstrap(o)
	if err != nil {
		return err
	}
	raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(bootstrap)
	if err != nil {
		return err
	}
	if b.output == "yaml" {
		if raw, err = yaml.JSONToYAML(raw); err != nil {
			return err
		}
	}
	if b.outputDir == "" {
		_, err = stdout.Write(raw)
		return err
	}
	if err := os.MkdirAll(b.outputDir, 0o755); err != nil {
		return fmt.Errorf("create --output-dir: %w", err)
	}
	if o.TLS != nil {
		if err := envoy.WriteSDSFiles(o.TLS.SDSDir, b.clientCert, b.clientKey, b.serverCA); err != nil {
			return err
		}
	}
	path := filepath.Join(b.outputDir, "envoy."+b.output)
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return fmt.Errorf("write the bootstrap: %w", err)
	}
	_, err = fmt.Fprintln(stdout, "wrote", path)
	return err
}

// checkClientCert fails when the kubelet client certificate or key is not
// there. It only looks (os.Stat): the file is root's, mode 0600, and the
// init container running this is not root. A directory it may not search
// is left for Envoy to report.
func checkClientCert(node string, paths ...string) error {
	for _, path := range paths {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("node %s: the kubelet client certificate %s is missing (the node proxy authenticates to spoke serve with it): "+
				"mount the directory where this node's kubelet keeps it (kubelet --cert-dir, default /var/lib/kubelet/pki) or pass --client-cert/--client-key; "+
				"the kubelet writes it only with client certificate rotation on (rotateCertificates)", node, path)
		}
	}
	return nil
}

// makeAbsolute resolves a relative path against the working directory.
func makeAbsolute(path *string) error {
	if *path == "" || filepath.IsAbs(*path) {
		return nil
	}
	abs, err := filepath.Abs(*path)
	if err != nil {
		return fmt.Errorf("make %s absolute: %w", *path, err)
	}
	*path = abs
	return nil
}
