package e2e

import (
	"bufio"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/xds"
)

// TestTunnelCARotationWithoutRestart rotates the tunnel CA the way an
// operator would, editing the files the server reads: (1) trust old and new,
// still signing with the old key; (2) sign with the new key; (3) trust only
// the new one. A CONNECT stream opened before keeps echoing through all of
// it, new CONNECTs work after each step, the node proxy ends up with a
// certificate of the new CA, and tunnels dialed afresh (apiserver proxy
// restarted) work with the new CA alone.
func TestTunnelCARotationWithoutRestart(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	dir := t.TempDir()
	oldCert, oldKey, _ := pki.GenerateCA("old tunnel CA")
	newCert, newKey, _ := pki.GenerateCA("new tunnel CA")
	certFile, keyFile := filepath.Join(dir, "tunnel-ca.crt"), filepath.Join(dir, "tunnel-ca.key")
	replace(t, certFile, oldCert)
	replace(t, keyFile, oldKey)
	issuer, err := pki.LoadIssuerFiles(certFile, keyFile, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sec := newSecureServer(t, issuer) // its xds-ca.crt is what node proxies trust for the xDS server
	sec.run(t, tp, writeCluster(t, tp), func(o *xds.Options) { o.CAReloadInterval = 200 * time.Millisecond })

	apiserverProxy := sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	node := sec.startNodeProxy(t, tp.bin, "node-a", false)
	sock, target := tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port)
	waitForTunnel(t, sock, target)
	long := openConnect(t, sock, target)
	defer long.Close()
	lines := bufio.NewReader(long)
	tick := 0
	stillWorks := func(step string) {
		t.Helper()
		tick++
		_ = long.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(long, "tick %d\n", tick)
		if got, err := lines.ReadString('\n'); err != nil || got != fmt.Sprintf("node-a/pod web-a: tick %d\n", tick) {
			t.Fatalf("%s: the stream opened before the rotation broke: %q %v", step, got, err)
		}
		if got, status := roundTrip(t, sock, target); status != http.StatusOK || got != "node-a/pod web-a" {
			t.Fatalf("%s: a new CONNECT failed: %d %q", step, status, got)
		}
	}
	oldSerial, newSerial := serialOf(t, oldCert), serialOf(t, newCert)

	// (1) Trust both, sign with the old key.
	replace(t, sec.serverCA, append(append([]byte{}, oldCert...), newCert...))
	replace(t, certFile, append(append([]byte{}, oldCert...), newCert...))
	// The apiserver proxy's only CA is the tunnel CA (the node's /certs also
	// shows the xDS server CA file, which the test rewrote itself).
	waitFor(t, 15*time.Second, "the apiserver proxy to trust the new CA", func() bool {
		return strings.Contains(tunnelSerials(t, apiserverProxy.Get), newSerial)
	})
	before := leafSerials(t, node.Get)
	stillWorks("trusting old and new")

	// (2) Sign with the new key.
	replace(t, certFile, append(append([]byte{}, newCert...), oldCert...))
	replace(t, keyFile, newKey)
	waitFor(t, 15*time.Second, "the node proxy to get a certificate of the new CA", func() bool { return leafSerials(t, node.Get) != before })
	stillWorks("signing with the new key")

	// (3) Trust only the new CA.
	replace(t, sec.serverCA, newCert)
	replace(t, certFile, newCert)
	waitFor(t, 15*time.Second, "the apiserver proxy to drop the old CA", func() bool {
		return !strings.Contains(tunnelSerials(t, apiserverProxy.Get), oldSerial)
	})
	stillWorks("trusting only the new CA")

	// Fresh tunnels, handshaken with the new CA alone.
	apiserverProxy.Stop()
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1b")
	waitForTunnel(t, sock, target)
}

// replace writes a file the way rotations should: a new file renamed over.
func replace(t *testing.T, path string, content []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// serialOf is the hex serial of the first certificate in certPEM, as Envoy's
// /certs prints it.
func serialOf(t *testing.T, certPEM []byte) string {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.Text(16)
}

// leafSerials lists the serials of the certificates (not CAs) Envoy holds
// with a SAN: its tunnel certificates.
func leafSerials(t *testing.T, get func(string) (string, error)) string {
	t.Helper()
	var serials []string
	for _, c := range envoyCerts(t, get) {
		if !c.CA && c.SANs > 0 {
			serials = append(serials, c.Serial)
		}
	}
	return strings.Join(serials, ",")
}
