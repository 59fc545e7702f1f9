package model

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Builder is Build fed one object at a time: each object is converted as it
// arrives and only its converted form is kept (a pod's candidate is about a
// tenth of a Kubernetes Pod), so a dump of 240,000 pods streams through
// `spoke translate` without ever being held as Kubernetes objects. Build
// gives exactly what Build gives for the same objects in the same order.
type Builder struct {
	settings Settings
	added    int // objects of the five kinds, as Objects would count them
	nodes    []nodeInput
	pods     []podInput
	services []serviceInput
	slices   []sliceInput
	cidrs    []cidrInput
}

type nodeInput struct {
	node     Node
	problems []Problem
	ok       bool
}

type podInput struct {
	key        ObjectKey
	c          PodCandidate
	considered bool
}

type serviceInput struct {
	key      ObjectKey
	svc      Service
	problems []Problem
	ok       bool
}

type sliceInput struct {
	endpoints []Endpoint
	problems  []Problem
}

type cidrInput struct {
	name     string
	ranges   []netip.Prefix
	problems []Problem
}

// NewBuilder returns an empty Builder for settings s.
func NewBuilder(s Settings) *Builder { return &Builder{settings: s} }

// Add converts one object (a *corev1.Node, *corev1.Pod, *corev1.Service,
// *discoveryv1.EndpointSlice or *networkingv1.ServiceCIDR; others are
// ignored). EndpointSlices other than default/kubernetes' are not kept.
func (b *Builder) Add(obj any) {
	switch o := obj.(type) {
	case *corev1.Node:
		node, problems, ok := ConvertNode(o, b.settings)
		b.nodes = append(b.nodes, nodeInput{node: node, problems: problems, ok: ok})
	case *corev1.Pod:
		c, considered := ConvertPod(o)
		b.pods = append(b.pods, podInput{key: ObjectKey{o.Namespace, o.Name}, c: c, considered: considered})
	case *corev1.Service:
		svc, problems, ok := ConvertService(o)
		b.services = append(b.services, serviceInput{key: ObjectKey{o.Namespace, o.Name}, svc: svc, problems: problems, ok: ok})
	case *discoveryv1.EndpointSlice:
		if eps, problems, relevant := SliceEndpoints(o, b.settings.TunnelPort); relevant {
			b.slices = append(b.slices, sliceInput{endpoints: eps, problems: problems})
		}
	case *networkingv1.ServiceCIDR:
		ranges, problems := ConvertServiceCIDR(o)
		b.cidrs = append(b.cidrs, cidrInput{name: o.Name, ranges: ranges, problems: problems})
	default:
		return
	}
	b.added++
}

// Mark is a position in what a Builder or Objects holds: Rollback returns
// to it (a decoder that took the items of a document that turned out not to
// be a List).
type Mark struct {
	kinds [5]int
	added int
}

// Mark returns the current position.
func (b *Builder) Mark() Mark {
	return Mark{kinds: [5]int{len(b.nodes), len(b.pods), len(b.services), len(b.slices), len(b.cidrs)}, added: b.added}
}

// Rollback forgets every object added after m.
func (b *Builder) Rollback(m Mark) {
	k := m.kinds
	b.nodes, b.pods, b.services, b.slices, b.cidrs = b.nodes[:k[0]], b.pods[:k[1]], b.services[:k[2]], b.slices[:k[3]], b.cidrs[:k[4]]
	b.added = m.added
}

// Objects says how many objects of the five kinds were added.
func (b *Builder) Objects() int { return b.added }

// Build runs Build's cross-object checks on what was added.
func (b *Builder) Build() (Cluster, []Problem) { return build(b) }

// Add appends a decoded object to its kind's list (others are ignored).
func (o *Objects) Add(obj any) {
	switch v := obj.(type) {
	case *corev1.Node:
		o.Nodes = append(o.Nodes, v)
	case *corev1.Pod:
		o.Pods = append(o.Pods, v)
	case *corev1.Service:
		o.Services = append(o.Services, v)
	case *discoveryv1.EndpointSlice:
		o.EndpointSlices = append(o.EndpointSlices, v)
	case *networkingv1.ServiceCIDR:
		o.ServiceCIDRs = append(o.ServiceCIDRs, v)
	}
}

// Mark returns the current position (see Builder.Mark).
func (o *Objects) Mark() Mark {
	return Mark{kinds: [5]int{len(o.Nodes), len(o.Pods), len(o.Services), len(o.EndpointSlices), len(o.ServiceCIDRs)}}
}

// Rollback forgets every object added after m.
func (o *Objects) Rollback(m Mark) {
	k := m.kinds
	o.Nodes, o.Pods, o.Services, o.EndpointSlices, o.ServiceCIDRs = o.Nodes[:k[0]], o.Pods[:k[1]], o.Services[:k[2]], o.EndpointSlices[:k[3]], o.ServiceCIDRs[:k[4]]
}

// Sink takes decoded objects one at a time: Objects keeps them, a Builder
// converts them.
type Sink interface {
	Add(obj any)
	Mark() Mark
	Rollback(Mark)
}
