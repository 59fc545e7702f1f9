// Package modeltest generates random Kubernetes object events for tests
// that hold the incremental model (model.Store) and everything built on it to
// the batch reference (model.Build).
package modeltest

import (
	"math/rand/v2"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/translator/model"
)

// Universe draws random objects from small pools, so that conflicts (shared
// node addresses, pod IPs on two nodes, pod IPs equal to node IPs, pods on
// missing or invalid nodes) happen often.
type Universe struct {
	rng     *rand.Rand
	objects map[string]any // kind/key -> object
}

// NewUniverse returns an empty universe drawing from seed.
func NewUniverse(seed uint64) *Universe {
	return &Universe{rng: rand.New(rand.NewPCG(seed, 99)), objects: map[string]any{}}
}

// Steps applies between 1 and max random events.
func (u *Universe) Steps(s *model.Store, max int) {
	for n := 1 + u.rng.IntN(max); n > 0; n-- {
		u.Step(s)
	}
}

func (u *Universe) pick(xs ...string) string { return xs[u.rng.IntN(len(xs))] }

func (u *Universe) some(xs ...string) []string {
	var out []string
	for n := u.rng.IntN(3); n > 0; n-- {
		out = append(out, u.pick(xs...))
	}
	return out
}

func (u *Universe) node() *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: u.pick("n0", "n1", "n2", "n3", "n4", "bad:name", "spoke-nodes", "été")}}
	for _, ip := range u.some("10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "not-an-ip", "127.0.0.1") {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeAddressType(u.pick("InternalIP", "ExternalIP")), Address: ip})
	}
	for _, h := range u.some("h1", "h2", "Bad_Name") {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: h})
	}
	n.Spec.PodCIDRs = u.some("10.244.0.0/24", "10.244.1.0/24", "10.244.0.0/16", "fd10:1::/64", "bogus")
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = int32(u.rng.IntN(2) * 10255)
	return n
}

func (u *Universe) pod() *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: u.pick("a", "b", "B"), Name: u.pick("p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "P_8")},
		Spec:       corev1.PodSpec{NodeName: u.pick("n0", "n1", "n2", "n3", "n4", "", "gone", "bad:name", "été"), HostNetwork: u.rng.IntN(8) == 0},
		Status:     corev1.PodStatus{Phase: corev1.PodPhase(u.pick("Running", "Running", "Pending", "Succeeded"))},
	}
	// Besides conflicts: addresses no pod may hold (loopback, link-local,
	// inside a Service range) and one outside every pod CIDR.
	for _, ip := range u.some("10.244.0.5", "10.244.1.5", "10.244.0.6", "10.0.0.1", "fd10:1::5", "junk", "127.0.0.1", "169.254.169.254", "10.96.0.9", "10.9.9.9") {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if u.rng.IntN(6) == 0 {
		p.DeletionTimestamp = &metav1.Time{}
	}
	// Declared ports matter for hostNetwork pods (the node proxy opens them
	// on its own addresses): none, TCP, UDP, the kubelet's, duplicates.
	for range u.rng.IntN(3) {
		port := corev1.ContainerPort{ContainerPort: int32(u.pick2(10249, 10250, 9100)), Protocol: corev1.Protocol(u.pick("", "TCP", "UDP"))}
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "c", Ports: []corev1.ContainerPort{port}})
	}
	return p
}

func (u *Universe) pick2(xs ...int) int { return xs[u.rng.IntN(len(xs))] }

func (u *Universe) service() *corev1.Service {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: u.pick("s0", "s1", "s2")}}
	svc.Spec.ClusterIPs = u.some("10.96.0.1", "10.96.0.2", "None", "bad")
	for _, port := range []int32{443, 8080, 0} {
		if u.rng.IntN(2) == 0 {
			svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Port: port, Protocol: corev1.Protocol(u.pick("TCP", "UDP", ""))})
		}
	}
	if u.rng.IntN(8) == 0 {
		svc.Spec.Type = corev1.ServiceTypeExternalName
	}
	return svc
}

func (u *Universe) slice() *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: u.pick("default", "kube-system"), Name: u.pick("k0", "k1")}}
	s.Labels = map[string]string{discoveryv1.LabelServiceName: u.pick("kubernetes", "kubernetes", "other")}
	ready := u.rng.IntN(4) != 0
	s.Endpoints = []discoveryv1.Endpoint{{Addresses: u.some("172.31.0.1", "172.31.0.2", "nope"), Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}
	return s
}

// serviceCIDR draws Service ranges that are safe, that cover a node address
// or pod CIDR of the pools above (refused while such a node exists), or that
// are never valid.
func (u *Universe) serviceCIDR() *networkingv1.ServiceCIDR {
	sc := &networkingv1.ServiceCIDR{ObjectMeta: metav1.ObjectMeta{Name: u.pick("c0", "c1")}}
	sc.Spec.CIDRs = u.some("10.96.0.0/12", "10.96.0.0/16", "fd00:10:96::/112", "10.0.0.0/30", "10.244.0.0/20", "fd10::/48", "127.0.0.0/16", "10.0.0.0/4", "bogus")
	return sc
}

// Step applies one random set or delete to the store and to the universe.
func (u *Universe) Step(s *model.Store) {
	del := u.rng.IntN(4) == 0
	switch u.rng.IntN(11) {
	case 0, 1:
		n := u.node()
		u.apply("node/"+n.Name, n, del, func() { s.SetNode(n) }, func() { s.DeleteNode(n.Name) })
	case 2, 3, 4, 5, 6:
		p := u.pod()
		u.apply("pod/"+p.Namespace+"/"+p.Name, p, del, func() { s.SetPod(p) }, func() { s.DeletePod(p.Namespace, p.Name) })
	case 7, 8:
		svc := u.service()
		u.apply("svc/"+svc.Namespace+"/"+svc.Name, svc, del, func() { s.SetService(svc) }, func() { s.DeleteService(svc.Namespace, svc.Name) })
	case 9:
		sc := u.serviceCIDR()
		u.apply("servicecidr/"+sc.Name, sc, del, func() { s.SetServiceCIDR(sc) }, func() { s.DeleteServiceCIDR(sc.Name) })
	default:
		sl := u.slice()
		u.apply("slice/"+sl.Namespace+"/"+sl.Name, sl, del, func() { s.SetEndpointSlice(sl) }, func() { s.DeleteEndpointSlice(sl.Namespace, sl.Name) })
	}
}

// apply sets obj (or deletes it) in the universe and, through set or
// remove, in the store.
func (u *Universe) apply(key string, obj any, del bool, set, remove func()) {
	if del {
		delete(u.objects, key)
		remove()
		return
	}
	u.objects[key] = obj
	set()
}

// View collects the objects for Build, in random order: Build's result must
// not depend on it (and Store has no order).
func (u *Universe) View() model.Objects {
	var objs model.Objects
	for _, o := range u.objects {
		objs.Add(o)
	}
	return objs
}
