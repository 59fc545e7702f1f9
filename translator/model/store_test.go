package model_test

import (
	"fmt"
	"reflect"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/translator/model/modeltest"
)

// TestStoreMatchesBuild applies thousands of random object events to a Store
// and checks, after each batch, that its model and problems equal Build's on
// the same objects, and that TakeChanges named every node whose view changed
// and flagged every change of the apiserver proxy's routes.
func TestStoreMatchesBuild(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			settings := model.DefaultSettings()
			u := modeltest.NewUniverse(seed)
			s := model.NewStore(settings)
			var before model.Cluster
			beforePlan := translator.New(&before, settings).APIServerFingerprint()
			for batch := 0; batch < 150; batch++ {
				u.Steps(s, 3)
				ch := s.TakeChanges()
				want, wantProblems := model.Build(u.View(), settings)
				got := s.Cluster(true)
				if !sameModel(got, want) {
					t.Fatalf("batch %d: store model differs from Build\nstore: %+v\nbuild: %+v", batch, describe(got), describe(want))
				}
				gotProblems := s.Problems()
				model.SortProblems(wantProblems)
				if fmt.Sprint(gotProblems) != fmt.Sprint(wantProblems) {
					t.Fatalf("batch %d: problems differ\nstore: %v\nbuild: %v", batch, gotProblems, wantProblems)
				}
				checkChanges(t, batch, ch, &before, &want, settings, beforePlan)
				before, beforePlan = want, translator.New(&want, settings).APIServerFingerprint()
			}
		})
	}
}

// checkChanges: every node whose view differs between before and after is
// in ch.Nodes; a different node list sets NodeSet; different Services or
// endpoints set Shared; a different apiserver plan is flagged by
// translator.APIServerAffected.
func checkChanges(t *testing.T, batch int, ch model.Changes, before, after *model.Cluster, s model.Settings, beforePlan uint64) {
	t.Helper()
	names := map[string]bool{}
	for _, n := range append(append([]model.Node(nil), before.Nodes...), after.Nodes...) {
		names[n.Name] = true
	}
	for name := range names {
		b, bok := before.Node(name)
		a, aok := after.Node(name)
		same := bok == aok && (!bok || fmt.Sprintf("%+v", *b) == fmt.Sprintf("%+v", *a)) &&
			fmt.Sprintf("%+v", before.PodsOn(name)) == fmt.Sprintf("%+v", after.PodsOn(name))
		if !same && !ch.Nodes[name] {
			t.Fatalf("batch %d: node %s changed but TakeChanges did not name it (%+v)", batch, name, ch)
		}
	}
	if fmt.Sprintf("%+v", before.Nodes) != fmt.Sprintf("%+v", after.Nodes) && !ch.NodeSet {
		t.Fatalf("batch %d: nodes changed but NodeSet is false", batch)
	}
	if fmt.Sprintf("%+v%+v%v", before.Services, before.APIServerEndpoints, before.ServiceRanges) != fmt.Sprintf("%+v%+v%v", after.Services, after.APIServerEndpoints, after.ServiceRanges) && !ch.Shared {
		t.Fatalf("batch %d: Services, endpoints or Service ranges changed but Shared is false", batch)
	}
	afterPlan := translator.New(after, s).APIServerFingerprint()
	if afterPlan != beforePlan && !translator.APIServerAffected(ch, translator.RoutablePodPrefixes(before, s)) {
		t.Fatalf("batch %d: the apiserver proxy's routes changed but APIServerAffected is false (%+v)", batch, ch)
	}
}

func sameModel(a, b model.Cluster) bool {
	return reflect.DeepEqual(describe(a), describe(b))
}

// describe prints a Cluster without its index (nil and empty slices alike).
func describe(c model.Cluster) []string {
	return []string{fmt.Sprintf("%+v", c.Nodes), fmt.Sprintf("%+v", c.Pods), fmt.Sprintf("%+v", c.Services), fmt.Sprintf("%+v", c.APIServerEndpoints), fmt.Sprintf("%v", c.ServiceRanges)}
}

// TestStoreReplaceIsQuietWhenNothingChanged: reloading the same file, or an
// informer relist that delivers unchanged objects, changes nothing.
func TestStoreReplaceIsQuietWhenNothingChanged(t *testing.T) {
	u := modeltest.NewUniverse(5)
	s := model.NewStore(model.DefaultSettings())
	for i := 0; i < 200; i++ {
		u.Step(s)
	}
	s.TakeChanges()
	s.Replace(u.View(), nil)
	if ch := s.TakeChanges(); !ch.Empty() {
		t.Fatalf("replacing with the same objects reported changes: %+v", ch)
	}
	objs := u.View()
	objs.Pods = nil
	s.Replace(objs, nil)
	if ch := s.TakeChanges(); len(ch.Nodes) == 0 && len(u.View().Pods) > 0 {
		t.Fatalf("dropping every pod reported no node change")
	}
}

// TestStoreReplaceDropsASliceThatStopsCounting: a reloaded file in which the
// apiserver's EndpointSlice lost its service-name label no longer feeds the
// apiserver endpoints (it did before Replace shared the Set path).
func TestStoreReplaceDropsASliceThatStopsCounting(t *testing.T) {
	slice := func(label string) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "k", Labels: map[string]string{discoveryv1.LabelServiceName: label}},
			Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"172.31.0.1"}}},
		}
	}
	s := model.NewStore(model.DefaultSettings())
	s.Replace(model.Objects{EndpointSlices: []*discoveryv1.EndpointSlice{slice("kubernetes")}}, nil)
	s.TakeChanges()
	if eps := s.Shared().APIServerEndpoints; len(eps) != 1 {
		t.Fatalf("want the slice's endpoint, got %v", eps)
	}
	s.Replace(model.Objects{EndpointSlices: []*discoveryv1.EndpointSlice{slice("other")}}, nil)
	if ch := s.TakeChanges(); !ch.Shared {
		t.Error("relabelling the slice changed nothing shared")
	}
	if eps := s.Shared().APIServerEndpoints; len(eps) != 0 {
		t.Errorf("the relabelled slice still feeds %v", eps)
	}
}
