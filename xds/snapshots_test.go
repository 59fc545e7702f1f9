package xds

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/translator/model/modeltest"
)

// testPublisher is a Publisher with its store; update replaces the store's
// content with objs (as the file source does) and applies the changes.
type testPublisher struct {
	*Publisher
	store *model.Store
}

func (p testPublisher) update(ctx context.Context, objs model.Objects) UpdateStats {
	p.store.Replace(objs, nil)
	return p.drain(ctx)
}

// drain applies until no backlog is left, adding up the stats.
func (p testPublisher) drain(ctx context.Context) UpdateStats {
	var total UpdateStats
	for {
		st := p.Apply(ctx)
		total.Translated += st.Translated
		total.Pushed += st.Pushed
		total.Removed += st.Removed
		if st.Backlog == 0 {
			return total
		}
	}
}

func newTestPublisher(t testing.TB, certValidity time.Duration) testPublisher {
	t.Helper()
	issuer, err := pki.NewDevelopmentIssuer(certValidity)
	if err != nil {
		t.Fatal(err)
	}
	return newTestPublisherWith(issuer)
}

func newTestPublisherWith(issuer *pki.Issuer) testPublisher {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	store := model.NewStore(model.DefaultSettings())
	return testPublisher{NewPublisher(cachev3.NewSnapshotCache(false, nodeHash{}, cacheLogger{log}), store, model.DefaultSettings(), issuer, metrics.New(), log), store}
}

// TestUpdateTouchesOnlyWhatChanged: a pod change re-translates only its
// node (the apiserver proxy's routes do not change for a pod inside its
// node's prefix route); a node address change touches that node and the
// apiserver proxy; an identical update touches nothing.
func TestUpdateTouchesOnlyWhatChanged(t *testing.T) {
	p := newTestPublisher(t, time.Hour)
	ctx := context.Background()
	objs := syntheticObjects(3, 4, 2)
	if st := p.update(ctx, objs); st.Translated != 4 || st.Pushed != 4 {
		t.Fatalf("first update: %+v, want 4 translated and pushed (apiserver + 3 nodes)", st)
	}
	if st := p.update(ctx, objs); st != (UpdateStats{}) {
		t.Errorf("identical update: %+v, want nothing", st)
	}
	apiBefore, _ := p.Versions(auth.APIServerKey)
	n1Before, _ := p.Versions("node/node-00001")

	pod := *objs.Pods[1] // on node-00000
	pod.Status.PodIP = "10.100.0.77"
	objs.Pods[1] = &pod
	if st := p.update(ctx, objs); st.Translated != 1 || st.Pushed != 1 {
		t.Errorf("pod change: %+v, want only its node", st)
	}
	if after, _ := p.Versions(auth.APIServerKey); !sameVersions(after, apiBefore) {
		t.Error("the apiserver proxy changed for a pod inside a prefix route")
	}
	if after, _ := p.Versions("node/node-00001"); !sameVersions(after, n1Before) {
		t.Error("another node's versions changed")
	}

	node := *objs.Nodes[2]
	node.Status.Addresses = append(node.Status.Addresses[:0:0], node.Status.Addresses...)
	node.Status.Addresses[0].Address = "172.16.2.99"
	objs.Nodes[2] = &node
	if st := p.update(ctx, objs); st.Translated != 2 || st.Pushed != 2 {
		t.Errorf("node address change: %+v, want that node and the apiserver proxy", st)
	}

	objs.Nodes = objs.Nodes[:2]
	if st := p.update(ctx, objs); st.Removed != 1 {
		t.Errorf("node removal: %+v, want one snapshot removed", st)
	}
}

// TestServiceChangeInsideARangeReachesNoNodeProxy: with the cluster's
// ServiceCIDR known, adding, changing and deleting a Service inside it
// re-translates and pushes the apiserver proxy only; a Service outside every
// range still reaches every node proxy (they accept it by ClusterIP:port).
func TestServiceChangeInsideARangeReachesNoNodeProxy(t *testing.T) {
	p := newTestPublisher(t, time.Hour)
	ctx := context.Background()
	objs := withServiceRange(syntheticObjects(3, 2, 2))
	p.update(ctx, objs)
	nodeBefore, _ := p.Versions("node/node-00001")

	svc := *objs.Services[0]
	svc.Spec.Ports = []corev1.ServicePort{{Port: 9999}}
	objs.Services = append([]*corev1.Service{&svc}, objs.Services[1:]...)
	if st := p.update(ctx, objs); st.Translated != 1 || st.Pushed != 1 {
		t.Errorf("Service port change: %+v, want the apiserver proxy only", st)
	}
	objs.Services = objs.Services[1:]
	if st := p.update(ctx, objs); st.Translated != 1 || st.Pushed != 1 {
		t.Errorf("Service deleted: %+v, want the apiserver proxy only", st)
	}
	if after, _ := p.Versions("node/node-00001"); !sameVersions(after, nodeBefore) {
		t.Error("a node proxy's versions changed for Services inside the range")
	}
	outside := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "outside"},
		Spec: corev1.ServiceSpec{ClusterIPs: []string{"192.168.9.9"}, Ports: []corev1.ServicePort{{Port: 80}}}}
	objs.Services = append(objs.Services, outside)
	if st := p.update(ctx, objs); st.Pushed != 4 {
		t.Errorf("Service outside the range: %+v, want the apiserver proxy and 3 node proxies", st)
	}
}

func sameVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCertificatesRenewWithoutClusterChanges: with short-lived certificates,
// Refresh re-issues and re-publishes secrets (and only secrets) before they
// expire, although the cluster did not change.
func TestCertificatesRenewWithoutClusterChanges(t *testing.T) {
	p := newTestPublisher(t, 3*time.Second)
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	p.issuer.SetClock(func() time.Time { return now })
	ctx := context.Background()
	p.update(ctx, syntheticObjects(1, 2, 1))
	before, _ := p.Versions("node/node-00000")
	p.Refresh(ctx)
	if now, _ := p.Versions("node/node-00000"); !sameVersions(now, before) {
		t.Fatal("refresh with fresh certificates changed versions")
	}
	now = now.Add(2 * time.Second) // two thirds of the 3s validity: the next period
	p.Refresh(ctx)
	after, _ := p.Versions("node/node-00000")
	for typ, v := range before {
		isSecret := strings.HasSuffix(typ, ".Secret")
		if changed := after[typ] != v; changed != isSecret {
			t.Errorf("%s: changed=%v, want changed only for secrets", typ, changed)
		}
	}
}

// TestPublisherMatchesFullTranslation drives the publisher with random
// object events (conflicting addresses, pods on missing nodes, Services,
// apiserver endpoints) and checks after each batch that what it serves every
// proxy equals a full translation of model.Build on the same objects, and
// that proxies of nodes Build does not route have no snapshot.
func TestPublisherMatchesFullTranslation(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		p := newTestPublisher(t, time.Hour)
		u := modeltest.NewUniverse(seed)
		ctx := context.Background()
		for batch := 0; batch < 100; batch++ {
			u.Steps(p.store, 3)
			p.drain(ctx)
			want, _ := model.Build(u.View(), p.settings)
			served, _, ok := p.Served(auth.Proxy{Role: translator.RoleAPIServer})
			if !ok || !sameResources(served, translator.APIServerProxy(&want, p.settings)) {
				t.Fatalf("seed %d batch %d: apiserver proxy differs from a full translation", seed, batch)
			}
			for _, name := range []string{"n0", "n1", "n2", "n3", "n4", "bad:name", "gone"} {
				served, _, ok := p.Served(auth.Proxy{Role: translator.RoleNode, Node: name})
				full, err := translator.NodeProxy(&want, p.settings, name)
				if ok != (err == nil) {
					t.Fatalf("seed %d batch %d: node %s served=%v, Build routes it=%v", seed, batch, name, ok, err == nil)
				}
				if ok && !sameResources(served, full) {
					t.Fatalf("seed %d batch %d: node %s differs from a full translation", seed, batch, name)
				}
			}
		}
	}
}

func sameResources(a, b translator.Resources) bool {
	return translator.ContentHash(toResources(a.Listeners)) == translator.ContentHash(toResources(b.Listeners)) &&
		translator.ContentHash(toResources(a.Routes)) == translator.ContentHash(toResources(b.Routes)) &&
		translator.ContentHash(toResources(a.Clusters)) == translator.ContentHash(toResources(b.Clusters)) &&
		translator.ContentHash(toResources(a.Endpoints)) == translator.ContentHash(toResources(b.Endpoints)) &&
		fmt.Sprint(a.Secrets) == fmt.Sprint(b.Secrets)
}

// TestReservedNodeNamesGetNoCertificate: a node named like the xDS server's
// self-issued certificate would, with a tunnel certificate for that name,
// pass as the xDS server to other node proxies: it gets no certificate and
// no snapshot; the other nodes are unaffected.
func TestReservedNodeNamesGetNoCertificate(t *testing.T) {
	p := newTestPublisher(t, time.Hour)
	p.issuer.Reserve("the xDS server", "spoke-server")
	objs := syntheticObjects(2, 1, 1)
	impostor := *objs.Nodes[1]
	impostor.Name = "spoke-server"
	objs.Nodes[1] = &impostor
	objs.Pods[1].Spec.NodeName = "spoke-server"
	p.update(context.Background(), objs)
	if v, _ := p.Versions("node/spoke-server"); len(v) != 0 {
		t.Errorf("the node named like the xDS server got a snapshot: %v", v)
	}
	if !p.issuer.NeedsRenewal("spoke-server") {
		t.Error("a tunnel certificate was issued for the reserved name")
	}
	if v, _ := p.Versions("node/node-00000"); len(v) == 0 {
		t.Error("the other node got nothing")
	}
}

// TestRestartServesIdenticalVersions: a restarted server (a new publisher
// on the same tunnel CA and cluster) serves every proxy the same versions of
// every type, secrets included, so reconnecting Envoys get nothing new; on
// the previous issuer every restart re-issued every certificate.
func TestRestartServesIdenticalVersions(t *testing.T) {
	caCert, caKey, err := pki.GenerateCA("restart tunnel CA")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	versions := make([]map[string]map[string]string, 2)
	for run := range versions {
		issuer, err := pki.NewIssuer(caCert, caKey, 24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		issuer.SetClock(func() time.Time { return now.Add(time.Duration(run) * time.Hour) }) // restarted an hour later
		p := newTestPublisherWith(issuer)
		p.update(context.Background(), syntheticObjects(3, 2, 2))
		versions[run] = map[string]map[string]string{}
		for _, key := range []string{auth.APIServerKey, "node/node-00000", "node/node-00002"} {
			v, _ := p.Versions(key)
			if len(v) == 0 {
				t.Fatalf("run %d: nothing published for %s", run, key)
			}
			versions[run][key] = v
		}
	}
	for key, before := range versions[0] {
		for typ, v := range before {
			if after := versions[1][key][typ]; after != v {
				t.Errorf("%s %s: version %s after the restart, %s before", key, typ, after, v)
			}
		}
	}
}
