package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestStatusShowsTunnelsPerNode: the server reads the tunnels each node
// holds from the apiserver proxy beside it; spoke status and /metrics show
// node-a's tunnels and flag node-b, which has no node proxy; the CONNECTs
// the apiserver proxy refuses are in /metrics by reason and node; every
// metric the shipped dashboard and alert rules name is there.
func TestStatusShowsTunnelsPerNode(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	api := sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sec.srv.WatchTunnels(ctx, api.Admin)

	debug := "http://" + sec.srv.Addr("debug")
	var tunnels status.Tunnels
	held := int(tp.settings.TunnelsPerEndpoint) // the node proxy runs one worker (envoytest)
	waitFor(t, 10*time.Second, fmt.Sprintf("the server to read node-a's %d tunnels", held), func() bool {
		body, err := httpBody(debug + "/debug/tunnels")
		return err == nil && json.Unmarshal([]byte(body), &tunnels) == nil && tunnels.Nodes["node-a"] == held
	})
	if c, ok := tunnels.Nodes["node-b"]; !ok || c != 0 {
		t.Errorf("node-b (no node proxy) should be listed with 0 tunnels: %+v", tunnels.Nodes)
	}
	metrics, _ := httpBody("http://" + sec.srv.Addr("http") + "/metrics")
	for _, want := range []string{fmt.Sprintf(`spoke_tunnels{node="node-a"} %d`, held), `spoke_tunnels{node="node-b"} 0`, "spoke_nodes_without_tunnel 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(metrics, "tunnel"))
		}
	}
	// Refused CONNECTs reach spoke's metrics, by reason and node: node-b
	// has no tunnel (502), 10.99.99.99 no owner (404).
	sock := tp.settings.EgressSocketPath
	if _, code := roundTrip(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port)); code != translator.NoTunnelStatus {
		t.Fatalf("a CONNECT to node-b: %d, want %d", code, translator.NoTunnelStatus)
	}
	if _, code := roundTrip(t, sock, "10.99.99.99:80"); code != http.StatusNotFound {
		t.Fatalf("a CONNECT no node owns: %d, want 404", code)
	}
	waitFor(t, 10*time.Second, "the refused CONNECTs in spoke's metrics", func() bool {
		m, _ := httpBody("http://" + sec.srv.Addr("http") + "/metrics")
		return seriesValue(m, `spoke_connect_refusals_total{reason="no_tunnel"}`) >= 1 &&
			seriesValue(m, `spoke_node_connect_refusals_total{reason="no_tunnel",target="node/node-b"}`) >= 1 &&
			seriesValue(m, `spoke_connect_refusals_total{reason="no_owner"}`) >= 1 &&
			seriesValue(m, `spoke_connect_refusals_total{reason="cap"}`) == 0
	})
	// With tunnels, refusals and pushes served, every series a dashboard
	// panel or an alert rule of manifests/monitoring names exists.
	metrics, _ = httpBody("http://" + sec.srv.Addr("http") + "/metrics")
	checkMonitoringNamesExist(t, metrics)
	out, err := exec.Command(buildSpoke(t), "status", "--server", debug).CombinedOutput()
	if err != nil {
		t.Fatalf("spoke status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "node-b") || !strings.Contains(string(out), "NO TUNNEL") || !strings.Contains(string(out), fmt.Sprintf("node-a  %d", held)) {
		t.Errorf("spoke status does not show node-a's tunnels and flag node-b:\n%s", out)
	}
	t.Logf("spoke status:\n%s", out)
}

func httpBody(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(body), err
}

// TestConnectToNodeWithoutTunnelSaysSo: a CONNECT to a pod of a node that
// holds no tunnel is answered at once with translator.NoTunnelStatus (502)
// and a body that names the cause, not a generic 503 or a hang, and the
// apiserver proxy counts it; a target no node owns still gets 404.
func TestConnectToNodeWithoutTunnelSaysSo(t *testing.T) {
	tp := newTopology(t)
	tp.startAPIServerProxy() // no node proxy: node-a and node-b hold no tunnel
	sock := tp.settings.EgressSocketPath
	start := time.Now()
	conn := dialEgress(t, sock)
	fmt.Fprintf(conn, "CONNECT 127.1.1.7:%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", tp.port)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatalf("no answer to a CONNECT for a node without tunnel: %v", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	t.Logf("answered in %v: %s %q", time.Since(start).Round(time.Millisecond), resp.Status, body)
	if resp.StatusCode != translator.NoTunnelStatus || !strings.Contains(string(body), "holds no tunnel") {
		t.Errorf("got %s %q, want %d saying the node holds no tunnel", resp.Status, body, translator.NoTunnelStatus)
	}
	if n := tp.apiProxy.Stat("cluster.node/node-a.upstream_cx_connect_fail"); n < 1 {
		t.Errorf("the refusal was not counted (cluster.node/node-a.upstream_cx_connect_fail = %d)", n)
	}
	if _, status := roundTrip(t, sock, "10.99.99.99:80"); status != http.StatusNotFound {
		t.Errorf("a target no node owns: status %d, want 404", status)
	}
}

// TestNoTunnelLogLineSilencedByComponentLevel: Envoy writes an error line
// ("cluster to node mapping changed") for every CONNECT to a node without a
// tunnel, unconditionally in its code; spoke counts those CONNECTs instead
// (cluster.node/<node>.upstream_cx_connect_fail, spoke status). The
// apiserver proxy started with --component-log-level filter:critical (here
// beside the tests' connection:debug), as docs/operations.md advises,
// writes none of them.
func TestNoTunnelLogLineSilencedByComponentLevel(t *testing.T) {
	tp := newTopology(t)
	s := tp.settings
	b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", translator.APIServerProxy(&tp.cluster, s),
		tp.pki.Secrets(t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		flags []string
		quiet bool
	}{{nil, false}, {[]string{"--component-log-level", "connection:debug,filter:critical"}, true}} {
		proxy := envoytest.StartWithFlags(t, tp.bin, "apiserver-proxy", b, tc.flags...)
		for i := 0; i < 3; i++ {
			if _, status := roundTrip(t, s.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)); status != translator.NoTunnelStatus {
				t.Fatalf("CONNECT to a node without tunnel: status %d", status)
			}
		}
		time.Sleep(500 * time.Millisecond) // let Envoy's log reach us
		n := strings.Count(proxy.Log(), "cluster to node mapping changed")
		t.Logf("flags %v: %d no-tunnel error lines for 3 CONNECTs", tc.flags, n)
		if quiet := n == 0; quiet != tc.quiet {
			t.Errorf("flags %v: %d no-tunnel error lines, want quiet=%v", tc.flags, n, tc.quiet)
		}
		proxy.Stop()
	}
}

// refusalTopology serves the topology from a server with its own tunnel
// CA and an apiserver proxy whose tunnel handshakes time out after 1 s, and
// returns node-a's tunnel certificate from that CA.
func refusalTopology(t *testing.T) (*topology, *secureServer, pki.Certificate) {
	t.Helper()
	tp := newTopologyWith(t, func(s *model.Settings) { s.TunnelHandshakeTimeout = model.Duration(time.Second) })
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	cert, err := sec.issuer.NodeCertificate("node-a")
	if err != nil {
		t.Fatal(err)
	}
	return tp, sec, cert
}

// TestStatusShowsLastTunnelRefusalPerNode: the apiserver proxy's handshake
// log reaches the server beside it, which keeps each node's last refused
// tunnel with its reason. Tried with real Envoys: a node proxy holding
// node-a's tunnel certificate that claims node-b (refused with 403 by the
// reverse_tunnel filter: kept under node-a, the certificate's node), one
// whose certificate comes from another CA (TLS refused) and a connection
// that never starts its handshake (closed after tunnelHandshakeTimeout).
// spoke status prints them and /metrics counts them by class.
func TestStatusShowsLastTunnelRefusalPerNode(t *testing.T) {
	tp, sec, cert := refusalTopology(t)
	impostor := translator.Secrets(tp.settings, translator.RoleNode, cert.CertPEM, cert.KeyPEM, sec.issuer.CAPEM())
	tp.startNodeProxyWith("node-b", "impostor-b-with-a-cert", impostor)
	tp.startNodeProxy("node-b", "node-b") // tunnel certificate from the test's own CA: not the server's tunnel CA
	// From its own address: refusals of sources no node owns are kept per address.
	silent, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}).Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()

	debug := "http://" + sec.srv.Addr("debug")
	var tunnels status.Tunnels
	classes := func() map[string]bool {
		seen := map[string]bool{}
		for _, r := range tunnels.Refusals {
			seen[r.Class] = true
		}
		return seen
	}
	waitFor(t, 15*time.Second, "refusals of all three classes at the server", func() bool {
		body, err := httpBody(debug + "/debug/tunnels")
		if err != nil || json.Unmarshal([]byte(body), &tunnels) != nil {
			return false
		}
		seen := classes()
		return seen[status.RefusedIdentity] && seen[status.RefusedTLS] && seen[status.RefusedIncomplete]
	})
	if r := tunnels.Refusals["node-a"]; r.Class != status.RefusedIdentity || !strings.Contains(r.Reason, `claimed node "node-b"`) {
		t.Errorf("node-a's last refusal should be the impostor's 403: %+v", r)
	}
	if r := tunnels.Refusals["?127.0.0.9"]; r.Class != status.RefusedIncomplete {
		t.Errorf("the silent connection from 127.0.0.9 should be kept as incomplete: %+v", tunnels.Refusals)
	}
	for key, r := range tunnels.Refusals {
		if r.Class == status.RefusedTLS && !strings.Contains(r.Reason, "TLS handshake failed: TLS_error") {
			t.Errorf("%s: a TLS refusal without Envoy's reason: %+v", key, r)
		}
	}
	metrics, _ := httpBody("http://" + sec.srv.Addr("http") + "/metrics")
	for _, class := range []string{status.RefusedIdentity, status.RefusedTLS, status.RefusedIncomplete} {
		if seriesValue(metrics, `spoke_tunnel_refusals_total{class="`+class+`"}`) <= 0 {
			t.Errorf("/metrics does not count %s refusals:\n%s", class, grepLines(metrics, "refusal"))
		}
	}
	out, err := exec.Command(buildSpoke(t), "status", "--server", debug).CombinedOutput()
	if err != nil {
		t.Fatalf("spoke status: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "REFUSED TUNNELS") || !strings.Contains(string(out), "handshake refused (403)") {
		t.Errorf("spoke status does not show the refusals:\n%s", out)
	}
	t.Logf("spoke status:\n%s", out)
}
