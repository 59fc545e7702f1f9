package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/auth/authtest"
	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestRealEnvoyWithoutValidIdentityGetsNothing: real node Envoys whose
// client certificate comes from a foreign CA, or that hold node-a's
// certificate but call themselves node-b, receive no listener, cluster or
// secret; the real node-a next to them does.
func TestRealEnvoyWithoutValidIdentityGetsNothing(t *testing.T) {
	tp := newTopology(t)
	file := writeCluster(t, tp)
	sec := startSecureServer(t, tp, file, time.Hour)
	foreign := authtest.NewCA(t, "foreign CA")
	fCert, fKey := foreign.KubeletClient(t, "node-a")
	aCert, aKey := sec.clusterCA.KubeletClient(t, "node-a")
	outsiders := map[string]*envoytest.Process{
		"foreign CA":              sec.startOutsider(t, tp.bin, "node-a", fCert, fKey),
		"node-a's cert as node-b": sec.startOutsider(t, tp.bin, "node-b", aCert, aKey),
	}
	real := sec.startNodeProxy(t, tp.bin, "node-a", false)
	waitFor(t, 15*time.Second, "the real node-a to get its listener", func() bool {
		return real.Stat("listener_manager.lds.update_success") > 0
	})
	time.Sleep(2 * time.Second) // the outsiders retry meanwhile
	for name, p := range outsiders {
		for _, stat := range []string{"listener_manager.lds.update_success", "cluster_manager.cds.update_success"} {
			if v := p.Stat(stat); v > 0 {
				t.Errorf("%s: %s = %d, want 0", name, stat, v)
			}
		}
		if dump, _ := p.Get("/config_dump?include_eds"); strings.Contains(dump, "spoke-tunnel-node") && strings.Contains(dump, "BEGIN CERTIFICATE") {
			t.Errorf("%s: holds a tunnel certificate", name)
		}
	}
	log := sec.logs.String()
	for _, want := range []string{"refused an xDS client at the TLS handshake", "claims another node or role"} {
		if !strings.Contains(log, want) {
			t.Errorf("server log lacks %q", want)
		}
	}
}

// TestKubeletClientCertificateRotation: the node proxy's xDS client
// certificate is read the way kubelet keeps it, through the symlink
// kubelet-client-current.pem; swapping the symlink to a new certificate
// (as kubelet's rotation does) makes Envoy use the new one without restart,
// and the server keeps serving it.
func TestKubeletClientCertificateRotation(t *testing.T) {
	tp := newTopology(t)
	file := writeCluster(t, tp)
	sec := startSecureServer(t, tp, file, time.Hour)
	pki := filepath.Join(sec.dir, "var-lib-kubelet-pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(pki, "kubelet-client-current.pem")
	rotate := func(stamp string) {
		cert, key := sec.clusterCA.KubeletClient(t, "node-a")
		target := authtest.WriteFile(t, pki, "kubelet-client-"+stamp+".pem", cert, key)
		tmp := current + ".tmp"
		_ = os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	rotate("1")
	sdsDir := filepath.Join(sec.dir, "envoy-node-a")
	if err := os.MkdirAll(sdsDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := envoy.WriteSDSFiles(sdsDir, current, current, sec.serverCA); err != nil {
		t.Fatal(err)
	}
	b, err := envoy.Bootstrap(envoy.BootstrapOptions{
		Role: translator.RoleNode, NodeID: "node-a", XDSAddresses: []string{sec.srv.Addr("xds")},
		TLS: &envoy.XDSClientTLS{SDSDir: sdsDir, ServerName: "spoke-server"},
	})
	if err != nil {
		t.Fatal(err)
	}
	node := envoytest.Start(t, tp.bin, "node-a-rotating", b)
	waitFor(t, 15*time.Second, "node-a to get its config", func() bool { return node.Stat("listener_manager.lds.update_success") > 0 })
	before := xdsClientSerial(t, node)
	rotate("2")
	waitFor(t, 15*time.Second, "Envoy to load the rotated client certificate", func() bool { return xdsClientSerial(t, node) != before })
	// A new xDS connection (Envoy reconnects after a server-side close) must
	// authenticate with the new certificate; the server still serves node-a.
	waitFor(t, 5*time.Second, "node-a to stay connected", func() bool {
		for _, st := range sec.srv.Tracker().Status() {
			if st.Proxy == "node/node-a" {
				return true
			}
		}
		return false
	})
}

// xdsClientSerial returns the serial of the client certificate of Envoy's
// xDS connection: in /certs, the certificate without any SAN (a kubelet
// client certificate names its node in the CN; tunnel certificates carry a
// DNS SAN). File-based SDS shows every certificate as inline.
func xdsClientSerial(t *testing.T, p *envoytest.Process) string {
	t.Helper()
	for _, c := range envoyCerts(t, p.Get) {
		if !c.CA && c.SANs == 0 {
			return c.Serial
		}
	}
	body, _ := p.Get("/certs")
	t.Fatalf("no xDS client certificate in /certs:\n%s", body)
	return ""
}

func writeCluster(t *testing.T, tp *topology) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(clusterTemplate, tp.port, tp.port)), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// waitFor checks ok every 100 ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	waitForExplained(t, d, 100*time.Millisecond, what, ok, nil)
}

// waitForExplained is waitFor checking every interval; on a timeout the
// failure adds what explain says (what was seen instead), when not nil.
func waitForExplained(t *testing.T, d, every time.Duration, what string, ok func() bool, explain func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			var seen string
			if explain != nil {
				seen = "; " + explain()
			}
			t.Fatalf("timed out after %v waiting for %s%s", d, what, seen)
		}
		time.Sleep(every)
	}
}

// TestEgressSocketOnlyForItsUser: the apiserver proxy's CONNECT socket, as
// the real Envoy creates it from the translated listener, has mode 0600, and
// another local user (uid 65534) cannot connect even when the directory
// lets it reach the file; only the socket's owner (the apiserver's user)
// can.
func TestEgressSocketOnlyForItsUser(t *testing.T) {
	dir, err := os.MkdirTemp("", "spoke-egress")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tp := newTopologyWith(t, func(s *model.Settings) { s.EgressSocketPath = filepath.Join(dir, "egress.sock") })
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	tp.startAPIServerProxy()
	tp.startNodeProxy("node-a", "node-a")
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	info, err := os.Stat(tp.settings.EgressSocketPath)
	if err != nil {
		t.Fatal(err)
	}
	if mode := info.Mode().Perm(); mode != 0o600 {
		t.Errorf("egress socket mode %o, want 600", mode)
	}
	out, err := authtest.DialUnixAs(t, 65534, tp.settings.EgressSocketPath)
	if err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 65534 connecting to the egress socket: want permission denied, got err=%v %s", err, out)
	}
}
