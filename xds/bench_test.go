package xds

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/translator/model"
)

func syntheticObjects(nodes, podsPerNode, services int) model.Objects {
	var objs model.Objects
	for i := 0; i < nodes; i++ {
		name := fmt.Sprintf("node-%05d", i)
		objs.Nodes = append(objs.Nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/250, i%250)}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.%d.%d.10", 16+i/250, i%250)}}},
		})
		for p := 0; p < podsPerNode; p++ {
			objs.Pods = append(objs.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("pod-%05d-%03d", i, p)},
				Spec:       corev1.PodSpec{NodeName: name},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, p+2)},
			})
		}
	}
	for s := 0; s < services; s++ {
		objs.Services = append(objs.Services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("svc-%04d", s)},
			Spec:       corev1.ServiceSpec{ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", s/250, s%250)}, Ports: []corev1.ServicePort{{Port: 443}, {Port: 8080}}},
		})
	}
	objs.EndpointSlices = []*discoveryv1.EndpointSlice{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"172.31.0.10"}}},
	}}
	return objs
}

// withServiceRange adds the ServiceCIDR that syntheticObjects' Services
// come from (as Kubernetes 1.33+ creates for --service-cluster-ip-range).
func withServiceRange(objs model.Objects) model.Objects {
	objs.ServiceCIDRs = []*networkingv1.ServiceCIDR{{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
		Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{"10.96.0.0/16"}}}}
	return objs
}

// publisherAtScale is a publisher that has published a 5,000-node /
// 150,000-pod / 1,000-Service cluster, and that cluster's objects; with
// ranges, the cluster has its ServiceCIDR.
func publisherAtScale(b *testing.B, ranges bool) (testPublisher, model.Objects) {
	objs := syntheticObjects(5000, 30, 1000)
	if ranges {
		objs = withServiceRange(objs)
	}
	p := newTestPublisher(b, time.Hour)
	p.update(context.Background(), objs)
	return p, objs
}

// BenchmarkUpdateOnePodChanged: one pod is replaced (deleted, and created
// under a new name) in a 5,000-node / 150,000-pod cluster; reports the cost
// of one update from the store write to the snapshot being set, the server's
// unit of work. BenchmarkUpdateFullView is the same change through a full
// view (Replace), the cost of a file reload, as a baseline.
func BenchmarkUpdateOnePodChanged(b *testing.B) {
	p, objs := publisherAtScale(b, true)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		old := objs.Pods[i%len(objs.Pods)]
		pod := *old
		pod.Name += "-x"
		pod.Status.PodIP = movedIP(old.Status.PodIP)
		objs.Pods[i%len(objs.Pods)] = &pod
		p.store.DeletePod(old.Namespace, old.Name)
		p.store.SetPod(&pod)
		if st := p.Apply(ctx); st.Pushed != 1 {
			b.Fatalf("one pod change pushed %d proxies, want 1", st.Pushed)
		}
	}
}

func BenchmarkUpdateFullView(b *testing.B) {
	p, objs := publisherAtScale(b, true)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		pod := *objs.Pods[i%len(objs.Pods)]
		pod.Name += "-x"
		pod.Status.PodIP = movedIP(pod.Status.PodIP)
		objs.Pods[i%len(objs.Pods)] = &pod
		if st := p.update(ctx, objs); st.Pushed != 1 {
			b.Fatalf("one pod change pushed %d proxies, want 1", st.Pushed)
		}
	}
}

// movedIP flips the top bit of the last octet: a new IP in the same /24.
func movedIP(ip string) string {
	a := netip.MustParseAddr(ip).As4()
	a[3] ^= 0x80
	return netip.AddrFrom4(a).String()
}

// BenchmarkServedStateMemory reports the heap the server holds for 5,000
// node proxies and 150,000 pods after one full update (input objects
// included, as an informer cache would hold them), without any stream.
func BenchmarkServedStateMemory(b *testing.B) {
	for b.Loop() {
		objs := syntheticObjects(5000, 30, 1000)
		p := newTestPublisher(b, time.Hour)
		p.update(context.Background(), objs)
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		b.ReportMetric(float64(m.HeapInuse)/(1<<20), "heap-MiB")
		runtime.KeepAlive(p)
		runtime.KeepAlive(objs)
	}
}

// BenchmarkUpdateServiceChanged: one Service gets a new port in a
// 5,000-node / 150,000-pod cluster whose ServiceCIDR holds it: only the
// apiserver proxy changes. The baseline, WithoutRanges, is a cluster without
// ServiceCIDR objects: every node proxy's routes change.
func BenchmarkUpdateServiceChanged(b *testing.B) { benchmarkServiceChange(b, true, 1) }

func BenchmarkUpdateServiceChangedWithoutRanges(b *testing.B) { benchmarkServiceChange(b, false, 5001) }

func benchmarkServiceChange(b *testing.B, ranges bool, wantPushed int) {
	p, objs := publisherAtScale(b, ranges)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		svc := *objs.Services[0]
		svc.Spec.Ports = []corev1.ServicePort{{Port: int32(9000 + i%1000)}}
		p.store.SetService(&svc)
		if st := p.drain(ctx); st.Pushed != wantPushed {
			b.Fatalf("a Service change pushed %d proxies, want %d", st.Pushed, wantPushed)
		}
	}
}

// BenchmarkPodChangeDuringServiceRollout: in a cluster without
// ServiceCIDR objects, a Service changes and a pod changes right after; timed is the first Apply (the pod's node, which goes
// first, one chunk of the Service backlog, the apiserver proxy), and
// reported as pod-snapshot-ms is how long after that Apply started the pod's
// node had its new snapshot: what a pod change waits while all 5,000 node
// proxies get the new Service. The rest of the rollout is drained untimed.
func BenchmarkPodChangeDuringServiceRollout(b *testing.B) {
	p, objs := publisherAtScale(b, false)
	ctx := context.Background()
	var toPod time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		svc := *objs.Services[0]
		svc.Spec.Ports = []corev1.ServicePort{{Port: int32(9000 + i%1000)}}
		p.store.SetService(&svc)
		old := objs.Pods[(i*7919)%len(objs.Pods)]
		pod := *old
		pod.Name += "-x"
		pod.Status.PodIP = movedIP(old.Status.PodIP)
		objs.Pods[(i*7919)%len(objs.Pods)] = &pod
		p.store.DeletePod(old.Namespace, old.Name)
		p.store.SetPod(&pod)
		key := "node/" + pod.Spec.NodeName
		before, _ := p.Versions(key)
		b.StartTimer()
		start := time.Now()
		st := p.Apply(ctx)
		b.StopTimer()
		toPod += p.SetAt(key).Sub(start)
		if after, _ := p.Versions(key); after[resourcev3.RouteType] == before[resourcev3.RouteType] || st.Backlog == 0 {
			b.Fatalf("the pod's node was not published first (backlog %d)", st.Backlog)
		}
		p.drain(ctx)
		b.StartTimer()
	}
	b.ReportMetric(float64(toPod.Microseconds())/1000/float64(b.N), "pod-snapshot-ms")
}
