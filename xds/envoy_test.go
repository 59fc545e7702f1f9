package xds_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// startServer runs a spoke server on the file source with ephemeral ports.
func startServer(t *testing.T, clusterFile string) (*xds.Server, model.Settings) {
	t.Helper()
	s := model.DefaultSettings()
	s.EgressSocketPath = filepath.Join(t.TempDir(), "egress.sock")
	s.TunnelListenAddress = "127.0.0.1"
	s.TunnelPort = uint32(freePort(t))
	log := logrus.New()
	log.SetLevel(logrus.InfoLevel)
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: s, Holdoff: 20 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: log.WithField("test", t.Name()),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx); close(done) }()
	src := &source.File{Path: clusterFile, Interval: 50 * time.Millisecond, Log: log}
	go src.Run(ctx, srv.Sink())
	t.Cleanup(func() { cancel(); <-done })
	return srv, s
}

func startEnvoy(t *testing.T, bin string, srv *xds.Server, role translator.Role, id string, delta bool) *envoytest.Process {
	t.Helper()
	b, err := envoy.Bootstrap(envoy.BootstrapOptions{Role: role, NodeID: id, XDSAddresses: []string{srv.Addr("xds")}, Insecure: true, AdminPort: 0, Delta: delta})
	if err != nil {
		t.Fatal(err)
	}
	return envoytest.Start(t, bin, string(role)+"-"+id, b)
}

// TestRealEnvoysACKEverything starts the apiserver proxy and two node proxies
// (one SotW, one delta) from `spoke bootstrap` against the server on the file
// source: every type must reach SYNCED with no NACK, Envoy must hold the
// resources, and a file change must reach only the node it concerns.
func TestRealEnvoysACKEverything(t *testing.T) {
	bin := envoytest.Binary(t)
	srv, file := serverOnExample(t)
	api := startEnvoy(t, bin, srv, translator.RoleAPIServer, "apiserver-test", false)
	w1 := startEnvoy(t, bin, srv, translator.RoleNode, "worker-1", false)
	w2 := startEnvoy(t, bin, srv, translator.RoleNode, "worker-2", true)

	waitSynced(t, srv, 3)
	for _, p := range []*envoytest.Process{api, w1, w2} {
		if n := p.Stat("listener_manager.lds.update_rejected") + p.Stat("cluster_manager.cds.update_rejected"); n != 0 {
			t.Errorf("%s rejected %d updates", p.Name, n)
		}
	}
	checkHeldIsServed(t, srv, "apiserver", "node/worker-1", "node/worker-2")
	dump, _ := w1.Get("/config_dump")
	for _, want := range []string{"reverse-tunnel-", "node-tunnel", "10.244.1.10:*", "apiserver-proxies", "spoke-tunnel-node"} {
		if !strings.Contains(dump, want) {
			t.Errorf("worker-1's Envoy lacks %q", want)
		}
	}
	if strings.Contains(dump, "10.244.2.10") {
		t.Error("worker-1's Envoy holds worker-2's pod")
	}
	dump, _ = api.Get("/config_dump")
	for _, want := range []string{"apiserver-egress", "tunnel-handshake", "10.244.2.*"} {
		if !strings.Contains(dump, want) {
			t.Errorf("apiserver proxy lacks %q", want)
		}
	}
	// A cluster per node (its own stream cap), one for Services.
	clusters, _ := api.Get("/config_dump?resource=dynamic_active_clusters")
	for _, want := range []string{`"name": "node/worker-1"`, `"name": "node/worker-2"`, `"name": "services"`} {
		if !strings.Contains(clusters, want) {
			t.Errorf("apiserver proxy's clusters lack %s", want)
		}
	}

	// A new pod on worker-1: worker-1 gets it, worker-2 gets nothing.
	w2Before := sentVersions(srv, "node/worker-2")
	addPod(t, file, "late-pod", "worker-1", "10.244.1.99")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if d, _ := w1.Get("/config_dump?resource=dynamic_route_configs"); strings.Contains(d, "10.244.1.99:*") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new pod never reached worker-1's Envoy")
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitSynced(t, srv, 3)
	if after := sentVersions(srv, "node/worker-2"); after != w2Before {
		t.Errorf("worker-2 was pushed for a pod on worker-1: %s -> %s", w2Before, after)
	}
	// An update over delta xDS too: what the server tracks worker-2 holds
	// follows the changes it ACKs.
	addPod(t, file, "late-pod-2", "worker-2", "10.244.2.99")
	for deadline := time.Now().Add(10 * time.Second); sentVersions(srv, "node/worker-2") == w2Before; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the new pod on worker-2 was never sent")
		}
	}
	waitSynced(t, srv, 3)
	checkHeldIsServed(t, srv, "apiserver", "node/worker-1", "node/worker-2")
}

// checkHeldIsServed: for Envoys that ACKed everything, what the server
// tracks they hold is, resource by resource, what it serves them.
func checkHeldIsServed(t *testing.T, srv *xds.Server, proxies ...string) {
	t.Helper()
	for _, proxy := range proxies {
		diffs := srv.Tracker().Diff(proxy)
		if len(diffs) != 1 {
			t.Errorf("%s: %d Envoys in the diff, want 1", proxy, len(diffs))
			continue
		}
		for _, td := range diffs[0].Types {
			if td.State != status.StateSynced || td.Unknown != "" || td.Differs != 0 || td.Held != td.Served || td.Served == 0 {
				t.Errorf("%s %s: %+v; want SYNCED, held = served, nothing differing", proxy, td.Type, td)
			}
		}
		if len(diffs[0].Types) < 4 { // the apiserver proxy has no EDS
			t.Errorf("%s: %d types compared, want every type it holds", proxy, len(diffs[0].Types))
		}
	}
}

// addPod adds a running pod to the cluster file.
func addPod(t *testing.T, file, name, node, ip string) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(raw), "items:\n", "items:\n"+newPod(name, node, ip), 1)
	if err := os.WriteFile(file, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newPod(name, node, ip string) string {
	return fmt.Sprintf("- {apiVersion: v1, kind: Pod, metadata: {name: %s, namespace: default}, spec: {nodeName: %s}, status: {phase: Running, podIP: %s}}\n", name, node, ip)
}

// sentVersions summarises what the server has sent a proxy, type by type.
func sentVersions(srv *xds.Server, proxy string) string {
	var parts []string
	for _, st := range srv.Statuses() {
		if st.Proxy == proxy {
			for _, typ := range []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment", "Secret"} {
				for url, ts := range st.Types {
					if strings.HasSuffix(url, "."+typ) {
						parts = append(parts, typ+"="+ts.Sent)
					}
				}
			}
		}
	}
	return strings.Join(parts, ",")
}

// waitSynced waits until n Envoys are connected and every type of each is SYNCED.
func waitSynced(t *testing.T, srv *xds.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last []status.ProxyStatus
	for time.Now().Before(deadline) {
		last = srv.Statuses()
		if len(last) == n && allSynced(last) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("Envoys not all SYNCED after 20s: %+v", last)
}

func allSynced(rows []status.ProxyStatus) bool {
	for _, r := range rows {
		if len(r.States) < 4 { // the apiserver proxy has no endpoints (EDS) to sync
			return false
		}
		for _, state := range r.States {
			if state != status.StateSynced {
				return false
			}
		}
	}
	return true
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
