package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator"
)

// TestTunnelRefusalsSayWhatWasWrong, with a real apiserver proxy: a
// handshake request without the tunnel headers (400) is reported as such,
// not as "nothing sent within tunnelHandshakeTimeout"; a handshake claiming
// an 8 KiB node id is reported and logged with the id cut.
func TestTunnelRefusalsSayWhatWasWrong(t *testing.T) {
	tp, sec, cert := refusalTopology(t)
	pair, err := tls.X509KeyPair(cert.CertPEM, cert.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(sec.issuer.CAPEM())
	handshake := func(headers string) int {
		conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tp.settings.TunnelPort), &tls.Config{
			Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: tp.settings.APIServerProxyName, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "GET /reverse_connections/request HTTP/1.1\r\nHost: spoke\r\n%s\r\n", headers)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	lastReason := func() string {
		var tunnels status.Tunnels
		if body, err := httpBody("http://" + sec.srv.Addr("debug") + "/debug/tunnels"); err == nil && json.Unmarshal([]byte(body), &tunnels) == nil {
			return tunnels.Refusals["node-a"].Reason
		}
		return ""
	}

	if code := handshake(""); code != http.StatusBadRequest {
		t.Fatalf("a handshake without tunnel headers: status %d, want 400", code)
	}
	waitFor(t, 10*time.Second, "node-a's refusal", func() bool { return lastReason() != "" })
	if r := lastReason(); !strings.Contains(r, "400") || strings.Contains(r, "nothing sent") {
		t.Errorf("the 400 is reported as %q", r)
	}

	long := strings.Repeat("x", 8<<10)
	if code := handshake(fmt.Sprintf("x-envoy-reverse-tunnel-node-id: %s\r\nx-envoy-reverse-tunnel-cluster-id: %s\r\nx-envoy-reverse-tunnel-tenant-id: %s\r\nx-envoy-reverse-tunnel-upstream-cluster-name: %s\r\n",
		long, tp.settings.ClusterID, tp.settings.TenantID, translator.APIServerProxies)); code != http.StatusForbidden {
		t.Fatalf("a handshake claiming an 8 KiB node id: status %d, want 403", code)
	}
	waitFor(t, 10*time.Second, "the 403 refusal", func() bool { return strings.Contains(lastReason(), "403") })
	if r := lastReason(); len(r) > 1024 {
		t.Errorf("the refusal keeps %d bytes of the claimed id", len(r))
	}
	for _, line := range strings.Split(sec.logs.String(), "\n") {
		if strings.Contains(line, "tunnel refused") && len(line) > 2048 {
			t.Errorf("a refusal log line of %d bytes", len(line))
		}
	}
}
