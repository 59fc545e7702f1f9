// Package e2e proves the translated config end to end with real Envoy 1.40:
// an apiserver proxy and node proxies on loopback addresses, real mTLS tunnels,
// and CONNECTs written exactly as kube-apiserver writes them
// (shared/facts/apiserver-egress.md).
package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// Loopback addresses stand in for node and pod IPs; 127.0.0.0/8 is all local on Linux.
const clusterTemplate = `
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: node-a}
  spec: {podCIDRs: ["127.1.1.0/24"]}
  status:
    addresses: [{type: Hostname, address: node-a}, {type: InternalIP, address: 127.0.1.1}]
    daemonEndpoints: {kubeletEndpoint: {Port: %[1]d}}
- apiVersion: v1
  kind: Node
  metadata: {name: node-b}
  spec: {podCIDRs: ["127.1.2.0/26"]}
  status:
    addresses: [{type: InternalIP, address: 127.0.2.1}]
    daemonEndpoints: {kubeletEndpoint: {Port: %[1]d}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-a, namespace: default}, spec: {nodeName: node-a}, status: {phase: Running, podIP: 127.1.1.7}}
- {apiVersion: v1, kind: Pod, metadata: {name: web-b, namespace: default}, spec: {nodeName: node-b}, status: {phase: Running, podIP: 127.1.2.7}}
- {apiVersion: v1, kind: Service, metadata: {name: webhook, namespace: default}, spec: {clusterIPs: [127.2.0.1], ports: [{port: %[2]d}]}}
`

type topology struct {
	t        *testing.T
	bin      string
	settings model.Settings
	cluster  model.Cluster
	pki      *envoytest.PKI
	port     int // the port every test backend listens on
	apiProxy *envoytest.Process
	// tweakNode, when set, changes a node proxy's translated config before
	// it starts (a test playing with one Envoy setting).
	tweakNode func(*translator.Resources)
}

func newTopology(t *testing.T) *topology { return newTopologyWith(t, nil) }

// newTopologyWith lets a test change the settings before the model is built.
func newTopologyWith(t *testing.T, tweak func(*model.Settings)) *topology {
	return newTopologyWithItems(t, tweak, "")
}

// newTopologyWithItems adds list items (YAML) to the cluster of clusterTemplate.
func newTopologyWithItems(t *testing.T, tweak func(*model.Settings), items string) *topology {
	tp, problems := newTopologyWithProblems(t, tweak, items)
	if len(problems) > 0 {
		t.Fatalf("unexpected problems: %v", problems)
	}
	return tp
}

// newTopologyWithProblems is newTopologyWithItems for items the model
// refuses in part: it returns what was refused.
func newTopologyWithProblems(t *testing.T, tweak func(*model.Settings), items string) (*topology, []model.Problem) {
	bin := envoytest.Binary(t)
	port := freePort(t)
	s := model.DefaultSettings()
	s.EgressSocketPath = filepath.Join(t.TempDir(), "egress.sock")
	s.TunnelListenAddress = "127.0.0.1"
	s.TunnelPort = uint32(freePort(t))
	s.APIServerEndpoints = []string{fmt.Sprintf("127.0.0.1:%d", s.TunnelPort)}
	// Every node and pod lives on this host's loopback.
	s.AllowPodAddresses = []string{"127.0.0.0/8"}
	if tweak != nil {
		tweak(&s)
	}
	var objs model.Objects
	if _, err := input.Decode([]byte(fmt.Sprintf(clusterTemplate, port, port)+items), &objs); err != nil {
		t.Fatal(err)
	}
	cluster, problems := model.Build(objs, s)
	return &topology{t: t, bin: bin, settings: s, cluster: cluster, pki: envoytest.NewPKI(t), port: port}, problems
}

// startAPIServerProxy runs the apiserver proxy with Envoy flags
// (--concurrency: one worker unless set).
func (tp *topology) startAPIServerProxy(flags ...string) {
	s := tp.settings
	res := translator.APIServerProxy(&tp.cluster, s)
	b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", res, tp.pki.Secrets(tp.t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
	if err != nil {
		tp.t.Fatal(err)
	}
	tp.apiProxy = envoytest.StartWithFlags(tp.t, tp.bin, "apiserver-proxy", b, flags...)
}

// podBehindTunnel serves node-a's pod web-a, starts the apiserver proxy and
// node-a's proxy, and waits until a CONNECT to the pod works. It returns the
// egress socket and the pod's address.
func (tp *topology) podBehindTunnel() (socket, target string) {
	tp.t.Helper()
	serve(tp.t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	socket, target = tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
	waitForTunnel(tp.t, socket, target)
	return socket, target
}

// startNodeProxy runs the node proxy of node, presenting a tunnel certificate
// for certName (node itself, unless a test plays an impostor).
func (tp *topology) startNodeProxy(node, certName string) *envoytest.Process {
	return tp.startNodeProxyWith(node, "node-proxy-"+node+"-cert-"+certName, tp.pki.Secrets(tp.t, tp.settings, translator.RoleNode, certName))
}

// startNodeProxyWithFlags runs node's own proxy with Envoy flags
// (--concurrency: one worker unless set).
func (tp *topology) startNodeProxyWithFlags(node string, flags ...string) *envoytest.Process {
	return tp.startNodeProxyWith(node, "node-proxy-"+node, tp.pki.Secrets(tp.t, tp.settings, translator.RoleNode, node), flags...)
}

// startNodeProxyWithName runs node's own proxy as the Envoy called name
// (two of one node: a DaemonSet roll's old and new pods).
func (tp *topology) startNodeProxyWithName(node, name string) *envoytest.Process {
	return tp.startNodeProxyWith(node, name, tp.pki.Secrets(tp.t, tp.settings, translator.RoleNode, node))
}

func (tp *topology) startNodeProxyWith(node, name string, secrets []*tlsv3.Secret, flags ...string) *envoytest.Process {
	res, err := translator.NodeProxy(&tp.cluster, tp.settings, node)
	if err != nil {
		tp.t.Fatal(err)
	}
	if tp.tweakNode != nil {
		tp.tweakNode(&res)
	}
	b, err := envoy.StaticBootstrap(translator.RoleNode, node, res, secrets, 0)
	if err != nil {
		tp.t.Fatal(err)
	}
	return envoytest.StartWithFlags(tp.t, tp.bin, name, b, flags...)
}

// TestConnectThroughReverseTunnels sends the apiserver's CONNECTs into the
// egress socket and checks that each reaches the right node's target, and
// that targets no node owns are refused.
func TestConnectThroughReverseTunnels(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	serve(t, "127.0.1.1", tp.port, "node-a/kubelet")
	serve(t, "127.0.2.1", tp.port, "node-b/kubelet")
	serve(t, "127.2.0.1", tp.port, "service webhook")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	tp.startNodeProxy("node-b", "node-b")
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	waitForTunnel(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port))

	for _, tc := range []struct{ target, want string }{
		{fmt.Sprintf("127.1.1.7:%d", tp.port), "node-a/pod web-a"}, // pod IP, covered by node-a's /24 prefix route
		{fmt.Sprintf("127.1.2.7:%d", tp.port), "node-b/pod web-b"}, // pod IP, /26: routed per pod IP
		{fmt.Sprintf("127.0.1.1:%d", tp.port), "node-a/kubelet"},   // kubelet by InternalIP
		{fmt.Sprintf("node-a:%d", tp.port), "node-a/kubelet"},      // kubelet by host name (apiserver default)
		{fmt.Sprintf("127.0.2.1:%d", tp.port), "node-b/kubelet"},   // the other node's kubelet
		{fmt.Sprintf("127.2.0.1:%d", tp.port), "service webhook"},  // Service ClusterIP through any node
	} {
		got, status := roundTrip(t, sock, tc.target)
		if status != http.StatusOK || got != tc.want {
			t.Errorf("CONNECT %s: got status %d, answer %q; want 200 from %q", tc.target, status, got, tc.want)
		}
	}

	for _, tc := range []struct{ target, why string }{
		{fmt.Sprintf("10.99.99.99:%d", tp.port), "belongs to no node and no Service"},
		{fmt.Sprintf("127.1.3.7:%d", tp.port), "outside every node's pod CIDR and no pod"},
		{fmt.Sprintf("127.1.2.8:%d", tp.port), "inside node-b's non-aligned CIDR but no pod has it"},
		{fmt.Sprintf("127.0.1.1:%d", tp.port+1), "node-a's address but not its kubelet port: node-a refuses"},
		{fmt.Sprintf("127.2.0.1:%d", tp.port+1), "Service IP on a port the Service does not have"},
		{fmt.Sprintf("node-b:%d", tp.port), "a host name node-b does not report"},
	} {
		start := time.Now()
		_, status := roundTrip(t, sock, tc.target)
		if status == http.StatusOK {
			t.Errorf("CONNECT %s (%s): got 200, want a refusal", tc.target, tc.why)
		}
		// kube-apiserver has no deadline of its own: refusals must be fast.
		checkWithin(t, "the refusal of CONNECT "+tc.target, time.Since(start), 5*time.Second)
	}
}

// TestTunnelHandshakeBoundToCertificate: a node proxy holding node-a's tunnel
// certificate that announces itself as node-b gets no tunnel, so node-b's
// traffic never reaches it; the real node-b (its own certificate) does.
func TestTunnelHandshakeBoundToCertificate(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	tp.startAPIServerProxy()
	impostor := tp.startNodeProxy("node-b", "node-a")
	target := fmt.Sprintf("127.1.2.7:%d", tp.port)

	// The impostor dials every second or so; give it several attempts.
	expectNoTunnel(t, tp.settings.EgressSocketPath, target, 6*time.Second, "an impostor's tunnel")
	// The refusal must come from the node id check (403 on the handshake), not
	// from TLS: the impostor's certificate is valid, only its claim is false.
	if !strings.Contains(impostor.Log(), "HTTP handshake failed with status 403") {
		t.Errorf("the impostor's handshake was not refused with 403; its log:\n%s", grepLines(impostor.Log(), "reverse_tunnel"))
	}

	tp.startNodeProxy("node-b", "node-b")
	waitForTunnel(t, tp.settings.EgressSocketPath, target)
}

// TestExpiredTunnelCertificateRefused: node-b's proxy with an expired
// tunnel certificate (right CA, right name) gets no tunnel; the apiserver
// proxy's TLS refuses it. With a valid certificate node-b then works.
func TestExpiredTunnelCertificateRefused(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	tp.startAPIServerProxy()
	tp.startNodeProxyWith("node-b", "node-b-expired", tp.pki.ExpiredSecrets(t, tp.settings, translator.RoleNode, "node-b"))
	target := fmt.Sprintf("127.1.2.7:%d", tp.port)
	expectNoTunnel(t, tp.settings.EgressSocketPath, target, 5*time.Second, "a tunnel with an expired certificate")
	if n := tp.apiProxy.StatSum(".ssl.fail_verify_error"); n == 0 {
		t.Errorf("the apiserver proxy recorded no certificate verification failure; stats:\n%s", tp.apiProxy.Stats("ssl."))
	}
	tp.startNodeProxy("node-b", "node-b")
	waitForTunnel(t, tp.settings.EgressSocketPath, target)
}

// roundTrip CONNECTs to target through the egress socket with the apiserver's
// exact request bytes; on 200 it sends "ping" and returns the backend's answer.
func roundTrip(t *testing.T, socket, target string) (string, int) {
	t.Helper()
	conn, br, status, err := sendCONNECT(socket, target, 5*time.Second)
	if err != nil {
		t.Fatalf("dial egress socket: %v", err)
	}
	defer conn.Close()
	if status != http.StatusOK {
		return "", status
	}
	if br.Buffered() > 0 {
		t.Errorf("CONNECT %s: %d bytes after the response header; the apiserver rejects that", target, br.Buffered())
	}
	fmt.Fprintf(conn, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil {
		return "", status
	}
	return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), ": ping"), status
}

// sendCONNECT dials the egress socket and sends the apiserver's exact
// CONNECT bytes for target, with timeout as the connection's deadline;
// status is the response's, 0 when none came. err is a failed dial only;
// otherwise the caller closes conn and reads what follows from br.
func sendCONNECT(socket, target string, timeout time.Duration) (conn net.Conn, br *bufio.Reader, status int, err error) {
	conn, err = net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		return nil, nil, 0, err
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", target)
	br = bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil {
		return conn, br, 0, nil
	}
	return conn, br, resp.StatusCode, nil
}

// expectNoTunnel fails the test if a CONNECT to target succeeds within d
// (the refused node proxy keeps retrying meanwhile); how says through what.
func expectNoTunnel(t *testing.T, socket, target string, d time.Duration, how string) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); {
		if _, status := roundTrip(t, socket, target); status == http.StatusOK {
			t.Fatalf("CONNECT %s succeeded through %s", target, how)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func waitForTunnel(t *testing.T, socket, target string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, status := roundTrip(t, socket, target); status == http.StatusOK {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("no working tunnel for %s after 30s", target)
}

// serve answers each line with "name: line" on ip:port until the test ends.
func serve(t *testing.T, ip string, port int, name string) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("backend %s: %v", name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go answerLines(ln, name)
}

// answerLines answers each line of every connection ln accepts with
// "name: line", until ln is closed.
func answerLines(ln net.Listener, name string) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			br := bufio.NewReader(conn)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(conn, "%s: %s", name, line)
			}
		}()
	}
}

// freePort returns a TCP port that was free on all loopback addresses a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func grepLines(text, needle string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, needle) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// seriesValue is the value of one series in a /metrics body, -1 if absent.
func seriesValue(metrics, series string) float64 {
	for _, l := range strings.Split(metrics, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}

// TestServiceRangeCarriesServicesThroughNodeProxies: with the Service range
// known, node proxies hold the range (one wildcard domain) and no Service's
// ClusterIP:port, and a Service CONNECT still goes through: the apiserver
// proxy matches the exact pair, the real node proxy the range. Loopback
// stands in for the range here, which the model refuses as a Service range,
// so the test sets the model's safe ranges itself.
func TestServiceRangeCarriesServicesThroughNodeProxies(t *testing.T) {
	tp := newTopology(t)
	tp.cluster.ServiceRanges = []netip.Prefix{netip.MustParsePrefix("127.2.0.0/16")}
	service := fmt.Sprintf("127.2.0.1:%d", tp.port)
	res, err := translator.NodeProxy(&tp.cluster, tp.settings, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	routes := res.Routes[0].String()
	if strings.Contains(routes, service) || !strings.Contains(routes, `"127.2.*"`) {
		t.Fatalf("node-a's routes should hold the range and not the Service:\n%s", routes)
	}
	serve(t, "127.2.0.1", tp.port, "service webhook")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	waitForTunnel(t, tp.settings.EgressSocketPath, service)
	if got, status := roundTrip(t, tp.settings.EgressSocketPath, service); status != http.StatusOK || got != "service webhook" {
		t.Errorf("CONNECT %s: status %d, answer %q; want 200 from the Service", service, status, got)
	}
}

// TestIPv6ServiceRangeMatchedByRegex: kind's IPv6 Service range
// (fd00:10:96::/112) has zero groups, so node proxies hold it as a prefix
// wildcard plus an :authority regex; a real Envoy accepts that config (the
// regex is under its RE2 size limit) and a Service CONNECT to an address of
// the range goes through it. The address is put on lo for the test.
func TestIPv6ServiceRangeMatchedByRegex(t *testing.T) {
	const ip = "fd00:10:96::a"
	if out, err := exec.Command("ip", "-6", "addr", "add", ip+"/128", "dev", "lo", "nodad").CombinedOutput(); err != nil {
		t.Skipf("cannot add %s to lo (needs root and IPv6): %v %s", ip, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "-6", "addr", "del", ip+"/128", "dev", "lo").Run() })
	tp := newTopologyWithItems(t, nil, `
- {apiVersion: networking.k8s.io/v1, kind: ServiceCIDR, metadata: {name: kubernetes-v6}, spec: {cidrs: ["fd00:10:96::/112"]}}
`)
	tp.cluster.Services = append(tp.cluster.Services, model.Service{Namespace: "default", Name: "api-v6",
		ClusterIPs: []netip.Addr{netip.MustParseAddr(ip)}, Ports: []uint32{uint32(tp.port)}})
	service := fmt.Sprintf("[%s]:%d", ip, tp.port)
	res, err := translator.NodeProxy(&tp.cluster, tp.settings, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if routes := res.Routes[0].String(); strings.Contains(routes, service) || !strings.Contains(routes, "safe_regex") {
		t.Fatalf("node-a should hold the IPv6 range as a regex route, not the Service:\n%s", routes)
	}
	serve(t, ip, tp.port, "service api-v6")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	waitForTunnel(t, tp.settings.EgressSocketPath, service)
	if got, status := roundTrip(t, tp.settings.EgressSocketPath, service); status != http.StatusOK || got != "service api-v6" {
		t.Errorf("CONNECT %s: status %d, answer %q", service, status, got)
	}
}
