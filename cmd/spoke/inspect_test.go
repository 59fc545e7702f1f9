package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// TestStatusAndConfigDump runs the inspection commands against a live server.
func TestStatusAndConfigDump(t *testing.T) {
	srv, _ := serveFile(t, "../../examples/cluster.yaml", time.Second)
	server := "http://" + srv.Addr("debug")

	out, _, err := runSpoke("config", "dump", "--server", server, "--proxy", "node/worker-1")
	if err != nil || !strings.Contains(out, "node-tunnel") || strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("config dump: err %v, output:\n%.300s", err, out)
	}
	if _, _, err := runSpoke("config", "dump", "--server", server, "--proxy", "node/ghost"); err == nil || !strings.Contains(err.Error(), "no config") {
		t.Errorf("unknown node: want an error, got %v", err)
	}
	out, _, err = runSpoke("status", "--server", server)
	if err != nil || !strings.HasPrefix(out, "PROXY") {
		t.Errorf("status: err %v, output %q", err, out)
	}
	if _, _, err := runSpoke("status", "--server", "http://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "spoke serve running") {
		t.Errorf("unreachable server: want a helpful error, got %v", err)
	}
	// host:port as every other address flag takes it (a URL parse error before)
	if out, _, err := runSpoke("status", "--server", srv.Addr("debug")); err != nil || !strings.HasPrefix(out, "PROXY") {
		t.Errorf("--server host:port: err %v, output %q", err, out)
	}
	// the metrics port answers 404 pages: say it is not a spoke debug API
	for _, args := range [][]string{{"status"}, {"config", "dump", "--proxy", "apiserver"}} {
		_, _, err := runSpoke(append(args, "--server", srv.Addr("http"))...)
		if err == nil || !strings.Contains(err.Error(), "is not a spoke debug API") {
			t.Errorf("%v against the metrics port: want 'not a spoke debug API', got %v", args, err)
		}
	}
}

func TestBootstrapCommand(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := runSpoke("bootstrap", "--role", "node", "--node-name", "worker-1", "--delta", "--output-dir", dir,
		"--client-cert", "/pki/kubelet.pem", "--client-key", "/pki/kubelet.pem", "--server-ca", "/etc/spoke/ca.crt"); err != nil {
		t.Fatal(err)
	}
	out, err := os.ReadFile(filepath.Join(dir, "envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"downstream_socket_interface", "DELTA_GRPC", "id: worker-1", "cluster: spoke-node", "address: 127.0.0.1",
		"envoy.transport_sockets.tls", "TLSv1_3", "spoke-xds-server-ca", "exact: spoke-server", "xds-client-sds.yaml", "- h2"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("node bootstrap lacks %q", want)
		}
	}
	sds, err := os.ReadFile(filepath.Join(dir, "xds-client-sds.yaml"))
	if err != nil || !strings.Contains(string(sds), "filename: /pki/kubelet.pem") {
		t.Errorf("SDS file for the client certificate: %s %v", sds, err)
	}
	if ca, err := os.ReadFile(filepath.Join(dir, "xds-server-ca-sds.yaml")); err != nil || !strings.Contains(string(ca), "filename: /etc/spoke/ca.crt") {
		t.Errorf("SDS file for the server CA: %s %v", ca, err)
	}
	api, _, err := runSpoke("bootstrap", "--role", "apiserver", "--xds-socket", "/run/spoke/xds.sock")
	if err != nil || !strings.Contains(api, "path: /run/spoke/xds.sock") || strings.Contains(api, "transport_socket") {
		t.Errorf("apiserver bootstrap should use the socket without TLS: %v\n%s", err, api)
	}
	for _, args := range [][]string{
		{"bootstrap", "--role", "node", "--insecure"},                        // no node name
		{"bootstrap", "--role", "node", "--node-name", "worker-1"},           // TLS needs --output-dir
		{"bootstrap", "--role", "gateway", "--node-name", "x", "--insecure"}, // unknown role
	} {
		if _, _, err := runSpoke(args...); err == nil {
			t.Errorf("%v: want an error", args)
		}
	}
}

// TestBootstrapMakesPathsAbsolute: Envoy's file-based SDS refuses relative
// paths ("invalid file path") and the node proxy would get no config, so
// bootstrap writes the certificate paths absolute, resolved against the
// directory it was run in; the apiserver's xDS socket too.
func TestBootstrapMakesPathsAbsolute(t *testing.T) {
	dir := t.TempDir()
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := runSpoke("bootstrap", "--role", "node", "--node-name", "worker-1", "--output-dir", dir,
		"--client-cert", "pki/kubelet.pem", "--client-key", "./pki/kubelet.pem", "--server-ca", "ca.crt"); err != nil {
		t.Fatal(err)
	}
	sds, _ := os.ReadFile(filepath.Join(dir, "xds-client-sds.yaml"))
	if want := "filename: " + filepath.Join(cwd, "pki/kubelet.pem"); strings.Count(string(sds), want) != 2 {
		t.Errorf("client certificate and key not made absolute (want %q twice):\n%s", want, sds)
	}
	ca, _ := os.ReadFile(filepath.Join(dir, "xds-server-ca-sds.yaml"))
	if want := "filename: " + filepath.Join(cwd, "ca.crt"); !strings.Contains(string(ca), want) {
		t.Errorf("server CA not made absolute (want %q):\n%s", want, ca)
	}
	api, _, err := runSpoke("bootstrap", "--role", "apiserver", "--xds-socket", "run/xds.sock")
	if want := "path: " + filepath.Join(cwd, "run/xds.sock"); err != nil || !strings.Contains(api, want) {
		t.Errorf("apiserver socket not made absolute (want %q): %v\n%s", want, err, api)
	}
	if err := envoy.WriteSDSFiles(dir, "relative.pem", "relative.pem", "/ca.crt"); err == nil {
		t.Error("WriteSDSFiles accepted a relative certificate path")
	}
}

// TestBootstrapRefusesAMissingKubeletCertificate: the DaemonSet's init
// container checks that the kubelet's certificate is there and says what to
// do in one line, instead of an Envoy that waits for its secret forever.
func TestBootstrapRefusesAMissingKubeletCertificate(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "pki", "kubelet-client-current.pem")
	_, _, err := runSpoke("bootstrap", "--role", "node", "--node-name", "worker-1", "--output-dir", dir,
		"--client-cert", missing, "--client-key", missing, "--require-client-cert")
	if err == nil || !strings.Contains(err.Error(), "node worker-1: the kubelet client certificate "+missing+" is missing") || !strings.Contains(err.Error(), "--cert-dir") {
		t.Fatalf("want one clear error naming the node, the file and what to do, got %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "envoy.yaml")); statErr == nil {
		t.Error("a bootstrap was written anyway")
	}
	present := filepath.Join(dir, "kubelet.pem")
	if err := os.WriteFile(present, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runSpoke("bootstrap", "--role", "node", "--node-name", "worker-1", "--output-dir", dir,
		"--client-cert", present, "--client-key", present, "--require-client-cert"); err != nil {
		t.Errorf("with the certificate there: %v", err)
	}
}

// TestStatusListsRefusedPodAddresses: a pod on worker-1 claiming an address
// of worker-2's pod CIDR is refused; spoke status and the metrics say so.
func TestStatusListsRefusedPodAddresses(t *testing.T) {
	example, err := os.ReadFile("../../examples/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	thief := "\n---\n{apiVersion: v1, kind: Pod, metadata: {name: thief, namespace: default}, spec: {nodeName: worker-1}, status: {phase: Running, podIP: 10.244.2.9}}\n"
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(file, append(example, thief...), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _ := serveFile(t, file, time.Second)
	out, _, err := runSpoke("status", "--server", "http://"+srv.Addr("debug"))
	if err != nil || !strings.Contains(out, "REFUSED POD ADDRESSES: 1") || !strings.Contains(out, "Pod default/thief: pod IP 10.244.2.9 refused: it lies outside node worker-1's pod CIDRs") {
		t.Errorf("status: err %v, output:\n%s", err, out)
	}
	metrics, err := httpGet("http://" + srv.Addr("http") + "/metrics")
	if err != nil || !strings.Contains(metrics, "spoke_refused_pod_addresses 1") {
		t.Errorf("metrics: %v\n%s", err, metrics)
	}
}

func httpGet(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return string(body), err
}

// TestStatusEscapesWhatEnvoysSend: a NACK whose message holds terminal
// escape sequences and a newline (which retitled and cleared the terminal
// and printed a forged SYNCED row) reaches the terminal escaped.
func TestStatusEscapesWhatEnvoysSend(t *testing.T) {
	srv, ctx := serveFile(t, "../../examples/cluster.yaml", time.Second)
	conn, err := grpc.NewClient(srv.Addr("xds"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "worker-1", Cluster: "spoke-node"}, TypeUrl: resourcev3.ClusterType})
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	evil := "\x1b]0;owned\x07\x1b[2J\nnode/worker-2  forged  sotw  1s  SYNCED"
	_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: evil}})
	var out string
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out, "NACK of"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no NACK in status:\n%s", out)
		}
		out, _, _ = runSpoke("status", "--server", "http://"+srv.Addr("debug"))
	}
	if strings.ContainsAny(out, "\x1b\x07") || strings.Contains(out, "\nnode/worker-2  forged") {
		t.Errorf("status printed the Envoy's escape sequences or forged row raw:\n%q", out)
	}
	if !strings.Contains(out, `\x1b]0;owned\a\x1b[2J\nnode/worker-2  forged`) {
		t.Errorf("status should show the message escaped:\n%s", out)
	}
}

// TestTruncatedClusterFileKeepsTheLastGoodConfig: a cluster file truncated
// to nothing is refused however long it stays (it wiped every route 2 s
// later before): the node proxies' config stays, and /readyz,
// spoke_source_refused and spoke status say so until a file with nodes
// arrives.
func TestTruncatedClusterFileKeepsTheLastGoodConfig(t *testing.T) {
	example, err := os.ReadFile("../../examples/cluster.yaml")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(file, example, 0o600); err != nil {
		t.Fatal(err)
	}
	srv, _ := serveFile(t, file, 20*time.Millisecond)
	debug, httpAddr := "http://"+srv.Addr("debug"), "http://"+srv.Addr("http")

	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the refusal", func() bool {
		m, _ := httpGet(httpAddr + "/metrics")
		return strings.Contains(m, "spoke_source_refused 1")
	})
	time.Sleep(500 * time.Millisecond) // > the settle time (4 polls) after which a shrink applies
	if dump, _, err := runSpoke("config", "dump", "--server", debug, "--proxy", "node/worker-1"); err != nil || !strings.Contains(dump, "node-tunnel") {
		t.Errorf("worker-1's config after the truncation: %v\n%.300s", err, dump)
	}
	if ready, _ := httpGet(httpAddr + "/readyz"); !strings.Contains(ready, "holds no Node") {
		t.Errorf("/readyz while the file is refused: %q", ready)
	}
	if out, _, _ := runSpoke("status", "--server", debug); !strings.Contains(out, "SOURCE REFUSED: "+file+" holds no Node") {
		t.Errorf("status while the file is refused:\n%s", out)
	}

	if err := os.WriteFile(file, example, 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the file with nodes to be taken", func() bool {
		m, _ := httpGet(httpAddr + "/metrics")
		ready, _ := httpGet(httpAddr + "/readyz")
		return strings.Contains(m, "spoke_source_refused 0") && strings.TrimSpace(ready) == "ok"
	})
}

func waitUntil(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// serveFile runs an insecure server on the cluster file, polled every
// poll, until the test ends, and waits until it has synced.
func serveFile(t *testing.T, file string, poll time.Duration) (*xds.Server, context.Context) {
	t.Helper()
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: model.DefaultSettings(), Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: logrus.New(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = srv.Run(ctx) }()
	go (&source.File{Path: file, Interval: poll, Log: logrus.New()}).Run(ctx, srv.Sink())
	waitUntil(t, "the server to sync "+file, srv.Publisher().Synced)
	return srv, ctx
}

// TestInspectionViews: status as a document (-o json|yaml), config dump of
// one type and one name (a route's virtual host alone), and secrets
// described by their certificates without key material.
func TestInspectionViews(t *testing.T) {
	srv, _ := serveFile(t, "../../examples/cluster.yaml", time.Second)
	server := srv.Addr("debug")

	out, _, err := runSpoke("status", "--server", server, "-o", "json")
	var report statusReport
	if err != nil || json.Unmarshal([]byte(out), &report) != nil || report.Problems == nil || (report.Tunnels == nil && report.TunnelsError == "") {
		t.Errorf("status -o json: err %v, output:\n%.400s", err, out)
	}
	out, _, err = runSpoke("status", "--server", server, "-o", "yaml")
	if err != nil || !strings.Contains(out, "proxies:") || !strings.Contains(out, "problems:") {
		t.Errorf("status -o yaml: err %v, output:\n%.400s", err, out)
	}
	if _, _, err := runSpoke("status", "--server", server, "-o", "xml"); err == nil || !strings.Contains(err.Error(), "table, json or yaml") {
		t.Errorf("status -o xml: want a refusal naming the formats, got %v", err)
	}

	out, _, err = runSpoke("config", "dump", "--server", server, "--proxy", "apiserver", "--type", "routes", "--name", "node/worker-1")
	if err != nil || !strings.Contains(out, "name: node/worker-1") || strings.Contains(out, "node/worker-2") || strings.Contains(out, "ListenersConfigDump\n  dynamic_listeners") {
		t.Errorf("routes of node/worker-1: err %v, output:\n%.600s", err, out)
	}
	out, _, err = runSpoke("config", "dump", "--server", server, "--proxy", "node/worker-1", "--type", "clusters")
	if err != nil || !strings.Contains(out, "apiserver-proxies/1") || strings.Contains(out, "reverse-tunnel-") || strings.Contains(out, "node-tunnel") {
		t.Errorf("clusters of node/worker-1: err %v, output:\n%.600s", err, out)
	}
	if _, _, err := runSpoke("config", "dump", "--server", server, "--proxy", "apiserver", "--type", "bogus"); err == nil || !strings.Contains(err.Error(), "listeners, routes") {
		t.Errorf("--type bogus: want the types listed, got %v", err)
	}

	// shell completion (spoke completion bash|zsh|fish) asks the server
	out, _, err = runSpoke("__complete", "config", "dump", "--server", server, "--proxy", "")
	if err != nil || !strings.Contains(out, "apiserver\n") || !strings.Contains(out, "node/worker-1\n") || !strings.Contains(out, "node/worker-2\n") || !strings.HasSuffix(strings.TrimSpace(out), ":4") {
		t.Errorf("--proxy completion: err %v, output:\n%s", err, out)
	}
	if out, _, err := runSpoke("completion", "bash"); err != nil || !strings.Contains(out, "__start_spoke") {
		t.Errorf("spoke completion bash: err %v, output %.200s", err, out)
	}

	out, _, err = runSpoke("config", "dump", "--server", server, "--proxy", "node/worker-1", "--type", "secrets", "-o", "json")
	var secrets []status.SecretInfo
	if err != nil || json.Unmarshal([]byte(out), &secrets) != nil {
		t.Fatalf("secrets: err %v, output:\n%.600s", err, out)
	}
	kinds := map[string]status.SecretInfo{}
	for _, s := range secrets {
		kinds[s.Kind] = s
	}
	if cert := kinds["certificate"]; !slices.Contains(cert.DNSNames, "worker-1") || cert.Serial == "" || !cert.NotAfter.After(time.Now()) {
		t.Errorf("the node's tunnel certificate: %+v", cert)
	}
	if ca := kinds["trusted-ca"]; ca.Subject == "" || ca.Error != "" {
		t.Errorf("the tunnel CA: %+v", ca)
	}
	for _, secret := range []string{"PRIVATE KEY", "private_key", "BEGIN"} {
		if strings.Contains(out, secret) {
			t.Errorf("the secrets view shows %q", secret)
		}
	}
}
