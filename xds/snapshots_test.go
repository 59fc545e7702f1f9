package xds

import (
	"context"
	"strings"
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator/model"
)

func newTestPublisher(t *testing.T) *Publisher {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	issuer, err := NewDevelopmentIssuer(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return NewPublisher(cachev3.NewSnapshotCache(true, nodeHash{}, cacheLogger{log}), model.DefaultSettings(), issuer, NewMetrics(), log)
}

// TestUpdateTouchesOnlyWhatChanged: a pod change re-translates only its
// node (the apiserver proxy's routes do not change for a pod inside its
// node's prefix route); a node address change touches that node and the
// apiserver proxy; an identical update touches nothing.
func TestUpdateTouchesOnlyWhatChanged(t *testing.T) {
	p := newTestPublisher(t)
	ctx := context.Background()
	objs := syntheticObjects(3, 4, 2)
	if st := p.Update(ctx, objs, nil); st.Translated != 4 || st.Pushed != 4 {
		t.Fatalf("first update: %+v, want 4 translated and pushed (apiserver + 3 nodes)", st)
	}
	if st := p.Update(ctx, objs, nil); st != (UpdateStats{}) {
		t.Errorf("identical update: %+v, want nothing", st)
	}
	apiBefore, _ := p.Versions(APIServerKey)
	n1Before, _ := p.Versions("node/node-00001")

	pod := *objs.Pods[1] // on node-00000
	pod.Status.PodIP = "10.100.0.77"
	objs.Pods[1] = &pod
	if st := p.Update(ctx, objs, nil); st.Translated != 1 || st.Pushed != 1 {
		t.Errorf("pod change: %+v, want only its node", st)
	}
	if after, _ := p.Versions(APIServerKey); !sameVersions(after, apiBefore) {
		t.Error("the apiserver proxy changed for a pod inside a prefix route")
	}
	if after, _ := p.Versions("node/node-00001"); !sameVersions(after, n1Before) {
		t.Error("another node's versions changed")
	}

	node := *objs.Nodes[2]
	node.Status.Addresses = append(node.Status.Addresses[:0:0], node.Status.Addresses...)
	node.Status.Addresses[0].Address = "172.16.2.99"
	objs.Nodes[2] = &node
	if st := p.Update(ctx, objs, nil); st.Translated != 2 || st.Pushed != 2 {
		t.Errorf("node address change: %+v, want that node and the apiserver proxy", st)
	}

	objs.Nodes = objs.Nodes[:2]
	if st := p.Update(ctx, objs, nil); st.Removed != 1 {
		t.Errorf("node removal: %+v, want one snapshot removed", st)
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
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	issuer, err := NewDevelopmentIssuer(3 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := NewPublisher(cachev3.NewSnapshotCache(true, nodeHash{}, cacheLogger{log}), model.DefaultSettings(), issuer, NewMetrics(), log)
	ctx := context.Background()
	p.Update(ctx, syntheticObjects(1, 2, 1), nil)
	before, _ := p.Versions("node/node-00000")
	p.Refresh(ctx)
	if now, _ := p.Versions("node/node-00000"); !sameVersions(now, before) {
		t.Fatal("refresh with fresh certificates changed versions")
	}
	time.Sleep(2200 * time.Millisecond) // past two thirds of the 3s validity
	p.Refresh(ctx)
	after, _ := p.Versions("node/node-00000")
	for typ, v := range before {
		isSecret := strings.HasSuffix(typ, ".Secret")
		if changed := after[typ] != v; changed != isSecret {
			t.Errorf("%s: changed=%v, want changed only for secrets", typ, changed)
		}
	}
}
