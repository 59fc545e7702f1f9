package model

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// Store is the model kept up to date one object at a time: the server's
// informers (and the diff of a reloaded file) call Set*/Delete*, and
// TakeChanges says which node proxies, and whether the apiserver proxy, may
// need new config. A pod change costs O(pods on its node), not O(cluster):
// the cross-object checks of Build (shared node addresses, pod IPs claimed
// on two nodes, pod IPs equal to a node's) are kept as indexes.
//
// Build is the batch reference: a random-event test holds Store to it.
// Readers see the model as of the last TakeChanges; writes in between are
// buffered until the next one.
type Store struct {
	settings Settings
	mu       sync.Mutex

	// What the sources said, converted object by object.
	nodes       map[string]*storedNode
	pods        map[ObjectKey]*PodCandidate
	ignoredPods map[ObjectKey]bool // hostNetwork, finished, unscheduled: counted, never routed
	podsOn      map[string]map[ObjectKey]bool
	services    map[ObjectKey]*storedService
	slices      map[ObjectKey]*storedSlice
	cidrs       map[string]*storedCIDR // ServiceCIDR objects, by name
	input       []Problem              // the source's own problems (unparsable files, duplicates)

	// Indexes for the cross-object checks.
	ipOwners   map[netip.Addr]map[string]bool // address -> routable nodes listing it
	nameOwners map[string]map[string]bool     // host name -> routable nodes listing it
	podClaims  map[netip.Addr][]podClaim      // pod IP -> pods listing it (almost always one)
	// The pod address checks: allowPodAddresses, the current safe
	// Service ranges and every routable node's pod CIDRs.
	addressRules podAddressRules

	// The model as of the last TakeChanges.
	views        map[string]*nodeView // node name -> view (routable node and/or problems)
	withProblems map[string]bool      // views that hold problems
	shared       Cluster              // Services and APIServerEndpoints only
	sharedIssues []Problem
	rangeIssues  []Problem

	pending     Changes
	sharedDirty bool // Services or endpoints changed
	rangesDirty bool // ServiceCIDRs changed
}

type storedNode struct {
	node     Node
	problems []Problem
	routable bool
}

type storedService struct {
	svc      Service
	problems []Problem
	ok       bool
}

type storedCIDR struct {
	ranges   []netip.Prefix
	problems []Problem
}

type storedSlice struct {
	endpoints []Endpoint
	problems  []Problem
}

// nodeView is one node as Build would output it: its node with shared
// addresses removed, its routable pods, and every problem filed under it
// (its own and those of the pods naming it).
type nodeView struct {
	node     Node
	pods     []Pod
	problems []Problem
	routable bool
}

// Changes says what changed since the last TakeChanges.
type Changes struct {
	// Nodes whose proxy input (the node, its pods) may have changed; a node
	// that is gone is listed too.
	Nodes map[string]bool
	// NodeSet: a routable node was added, removed or changed its addresses
	// or pod CIDRs (the apiserver proxy's node routes).
	NodeSet bool
	// Shared: Services or apiserver endpoints changed (every node proxy).
	Shared bool
	// PodIPs lists pod IPs that appeared, vanished or changed owner, with
	// every node concerned: the apiserver proxy routes IPs outside a node's
	// prefix routes one by one.
	PodIPs []NodeAddress
	// Initial is set on the first TakeChanges: everything is new.
	Initial bool
}

// NodeAddress is an IP address as seen from one node.
type NodeAddress struct {
	Node string
	IP   netip.Addr
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Nodes) == 0 && !c.NodeSet && !c.Shared && len(c.PodIPs) == 0 && !c.Initial
}

// NewStore returns an empty Store for settings s.
func NewStore(s Settings) *Store {
	return &Store{
		settings: s, nodes: map[string]*storedNode{}, pods: map[ObjectKey]*PodCandidate{},
		ignoredPods: map[ObjectKey]bool{}, podsOn: map[string]map[ObjectKey]bool{},
		services: map[ObjectKey]*storedService{}, slices: map[ObjectKey]*storedSlice{}, cidrs: map[string]*storedCIDR{},
		ipOwners: map[netip.Addr]map[string]bool{}, nameOwners: map[string]map[string]bool{},
		podClaims:    map[netip.Addr][]podClaim{},
		addressRules: podAddressRules{allowed: allowedPodRanges(s), cidrs: cidrIndex{}},
		views:        map[string]*nodeView{}, withProblems: map[string]bool{},
		pending: Changes{Nodes: map[string]bool{}, Initial: true}, sharedDirty: true, rangesDirty: true,
	}
}

// SetNode adds or replaces a node.
func (s *Store) SetNode(n *corev1.Node) { s.locked(func() { s.setNode(n) }) }

// DeleteNode removes a node; its pods stay (reported) until they go too.
func (s *Store) DeleteNode(name string) { s.locked(func() { s.putNode(name, nil) }) }

// SetPod adds or replaces a pod.
func (s *Store) SetPod(p *corev1.Pod) { s.locked(func() { s.setPod(p) }) }

// DeletePod removes a pod.
func (s *Store) DeletePod(namespace, name string) {
	s.locked(func() { s.deletePod(ObjectKey{namespace, name}) })
}

// SetService adds or replaces a Service.
func (s *Store) SetService(svc *corev1.Service) { s.locked(func() { s.setService(svc) }) }

// DeleteService removes a Service.
func (s *Store) DeleteService(namespace, name string) {
	s.locked(func() { s.putService(ObjectKey{namespace, name}, nil) })
}

// SetEndpointSlice adds or replaces an EndpointSlice; only those of
// default/kubernetes are kept.
func (s *Store) SetEndpointSlice(slice *discoveryv1.EndpointSlice) {
	s.locked(func() { s.setSlice(slice) })
}

// DeleteEndpointSlice removes an EndpointSlice.
func (s *Store) DeleteEndpointSlice(namespace, name string) {
	s.locked(func() { s.putSlice(ObjectKey{namespace, name}, nil) })
}

// SetServiceCIDR adds or replaces a ServiceCIDR.
func (s *Store) SetServiceCIDR(sc *networkingv1.ServiceCIDR) {
	s.locked(func() { s.setServiceCIDR(sc) })
}

// DeleteServiceCIDR removes a ServiceCIDR.
func (s *Store) DeleteServiceCIDR(name string) { s.locked(func() { s.putServiceCIDR(name, nil) }) }

func (s *Store) locked(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
}

func (s *Store) setNode(n *corev1.Node) { s.putNode(n.Name, convertStoredNode(n, s.settings)) }

func (s *Store) setPod(p *corev1.Pod) {
	key := ObjectKey{p.Namespace, p.Name}
	c, considered := ConvertPod(p)
	if !considered {
		s.ignoredPods[key] = true
		s.putPod(key, nil)
		return
	}
	delete(s.ignoredPods, key)
	s.putPod(key, &c)
}

func (s *Store) deletePod(key ObjectKey) {
	delete(s.ignoredPods, key)
	s.putPod(key, nil)
}

func (s *Store) setService(svc *corev1.Service) {
	out, problems, ok := ConvertService(svc)
	s.putService(ObjectKey{svc.Namespace, svc.Name}, &storedService{svc: out, problems: problems, ok: ok})
}

func (s *Store) setServiceCIDR(sc *networkingv1.ServiceCIDR) {
	ranges, problems := ConvertServiceCIDR(sc)
	s.putServiceCIDR(sc.Name, &storedCIDR{ranges: ranges, problems: problems})
}

func (s *Store) setSlice(slice *discoveryv1.EndpointSlice) {
	key := ObjectKey{slice.Namespace, slice.Name}
	eps, problems, relevant := SliceEndpoints(slice, s.settings.TunnelPort)
	if !relevant {
		s.putSlice(key, nil) // e.g. its service-name label changed
		return
	}
	s.putSlice(key, &storedSlice{endpoints: eps, problems: problems})
}

// Replace makes the store hold exactly objs (a reloaded file, a full view):
// objects that did not change cause no change. Of duplicates the first copy
// is kept and the others reported, as Build does.
func (s *Store) Replace(objs Objects, problems []Problem) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.input = append([]Problem(nil), problems...)
	nodeName := func(n *corev1.Node) string { return n.Name }
	replaceKind(s, "node", objs.Nodes, nodeName, s.setNode, slices.Collect(maps.Keys(s.nodes)), func(name string) { s.putNode(name, nil) })
	pods := slices.Collect(maps.Keys(s.pods))
	pods = append(pods, slices.Collect(maps.Keys(s.ignoredPods))...)
	replaceKind(s, "pod", objs.Pods, objectKey[*corev1.Pod], s.setPod, pods, s.deletePod)
	replaceKind(s, "Service", objs.Services, objectKey[*corev1.Service], s.setService,
		slices.Collect(maps.Keys(s.services)), func(k ObjectKey) { s.putService(k, nil) })
	replaceKind(s, "ServiceCIDR", objs.ServiceCIDRs, func(sc *networkingv1.ServiceCIDR) string { return sc.Name }, s.setServiceCIDR,
		slices.Collect(maps.Keys(s.cidrs)), func(name string) { s.putServiceCIDR(name, nil) })
	replaceKind(s, "", objs.EndpointSlices, objectKey[*discoveryv1.EndpointSlice], s.setSlice,
		slices.Collect(maps.Keys(s.slices)), func(k ObjectKey) { s.putSlice(k, nil) })
}

// replaceKind sets every object of one kind (the first of duplicates,
// reporting the others unless kind is empty) and deletes the held keys the
// objects no longer name.
func replaceKind[T any, K comparable](s *Store, kind string, objs []T, keyOf func(T) K, set func(T), held []K, del func(K)) {
	seen := map[K]bool{}
	for _, o := range objs {
		key := keyOf(o)
		if seen[key] {
			if kind != "" {
				s.input = append(s.input, problem(fmt.Sprintf("%s %v", strings.ToUpper(kind[:1])+kind[1:], key),
					"skipped: the input holds this %s twice; keep one copy", kind))
			}
			continue
		}
		seen[key] = true
		set(o)
	}
	for _, key := range held {
		if !seen[key] {
			del(key)
		}
	}
}

func objectKey[T interface {
	GetNamespace() string
	GetName() string
}](o T) ObjectKey {
	return ObjectKey{o.GetNamespace(), o.GetName()}
}

func convertStoredNode(n *corev1.Node, s Settings) *storedNode {
	node, problems, ok := ConvertNode(n, s)
	return &storedNode{node: node, problems: problems, routable: ok}
}

func (n *storedNode) isRoutable() bool { return n != nil && n.routable }

// putNode records next (nil: deleted) and marks every node whose view it may
// change: itself, the nodes sharing an old or new address or host name, and
// the nodes of pods listing one of those addresses.
func (s *Store) putNode(name string, next *storedNode) {
	prev := s.nodes[name]
	if reflect.DeepEqual(prev, next) {
		return
	}
	s.markNode(name)
	if prev.isRoutable() {
		s.pending.NodeSet = true
		s.indexNode(prev, false)
	}
	if next == nil {
		delete(s.nodes, name)
	} else {
		s.nodes[name] = next
	}
	if next.isRoutable() {
		s.pending.NodeSet = true
		s.indexNode(next, true)
	}
	if prev.isRoutable() != next.isRoutable() || !slices.Equal(routableCIDRs(prev), routableCIDRs(next)) {
		// Pod IP claims count only on routable nodes, and only inside
		// their pod CIDRs.
		for key := range s.podsOn[name] {
			for _, ip := range s.pods[key].Pod.IPs {
				s.markClaimants(ip)
			}
		}
		s.markClaimsInside(routableCIDRs(prev))
		s.markClaimsInside(routableCIDRs(next))
	}
}

func routableCIDRs(n *storedNode) []netip.Prefix {
	if !n.isRoutable() {
		return nil
	}
	return n.node.PodCIDRs
}

// markClaimsInside marks the claimants of every pod IP inside cidrs: a node
// without pod CIDRs may claim such an address only while no other node's
// CIDR holds it. It reads every claim, which a node's CIDRs changing (rare)
// can afford.
func (s *Store) markClaimsInside(cidrs []netip.Prefix) {
	if len(cidrs) == 0 {
		return
	}
	for ip := range s.podClaims {
		if CoveredBy(cidrs, ip) {
			s.markClaimants(ip)
		}
	}
}

func (s *Store) indexNode(n *storedNode, add bool) {
	s.addressRules.cidrs.set(n.node.Name, n.node.PodCIDRs, add)
	for _, ip := range n.node.IPs {
		setMember(s.ipOwners, ip.Addr, n.node.Name, add)
		for owner := range s.ipOwners[ip.Addr] {
			s.markNode(owner)
		}
		s.markClaimants(ip.Addr)
	}
	for _, h := range n.node.HostNames {
		setMember(s.nameOwners, h, n.node.Name, add)
		for owner := range s.nameOwners[h] {
			s.markNode(owner)
		}
	}
}

// putPod records next (nil: deleted or never routed) and marks its old and
// new node and the nodes of every pod listing one of its IPs.
func (s *Store) putPod(key ObjectKey, next *PodCandidate) {
	prev := s.pods[key]
	if reflect.DeepEqual(prev, next) {
		return
	}
	if prev != nil {
		node := prev.Pod.NodeName
		delete(s.podsOn[node], key)
		if len(s.podsOn[node]) == 0 {
			delete(s.podsOn, node)
		}
		for _, ip := range prev.Pod.IPs {
			s.pending.PodIPs = append(s.pending.PodIPs, NodeAddress{Node: node, IP: ip})
			s.removeClaim(ip, key)
			s.markClaimants(ip)
		}
		s.markNode(node)
		delete(s.pods, key)
	}
	if next != nil {
		node := next.Pod.NodeName
		if s.podsOn[node] == nil {
			s.podsOn[node] = map[ObjectKey]bool{}
		}
		s.podsOn[node][key] = true
		for _, ip := range next.Pod.IPs {
			s.podClaims[ip] = append(s.podClaims[ip], podClaim{pod: key, node: node})
			s.markClaimants(ip)
		}
		s.markNode(node)
		s.pods[key] = next
	}
}

func (s *Store) putService(key ObjectKey, next *storedService) {
	prev := s.services[key]
	if reflect.DeepEqual(prev, next) {
		return
	}
	s.sharedDirty = true
	if prev != nil && prev.ok || next != nil && next.ok {
		s.pending.Shared = true
	}
	if next == nil {
		delete(s.services, key)
	} else {
		s.services[key] = next
	}
}

// putServiceCIDR records next (nil: deleted). Whether node proxies see a
// change is decided when the safe ranges are recomputed (TakeChanges).
func (s *Store) putServiceCIDR(name string, next *storedCIDR) {
	prev := s.cidrs[name]
	if reflect.DeepEqual(prev, next) {
		return
	}
	s.rangesDirty = true
	if next == nil {
		delete(s.cidrs, name)
	} else {
		s.cidrs[name] = next
	}
}

func (s *Store) putSlice(key ObjectKey, next *storedSlice) {
	prev := s.slices[key]
	if reflect.DeepEqual(prev, next) {
		return
	}
	s.sharedDirty = true
	if _, _, fromSettings := SettingsEndpoints(s.settings); !fromSettings {
		s.pending.Shared = true
	}
	if next == nil {
		delete(s.slices, key)
	} else {
		s.slices[key] = next
	}
}

func (s *Store) markNode(name string) { s.pending.Nodes[name] = true }

// markClaimants marks the nodes of the pods listing ip, and notes the IP for
// the apiserver proxy.
func (s *Store) markClaimants(ip netip.Addr) {
	for _, c := range s.podClaims[ip] {
		s.markNode(c.node)
		s.pending.PodIPs = append(s.pending.PodIPs, NodeAddress{Node: c.node, IP: ip})
	}
}

// podClaim is one pod listing an IP. A slice of them per IP, not a map:
// 150,000 IPs with one claim each would otherwise cost a map apiece.
type podClaim struct {
	pod  ObjectKey
	node string
}

func (s *Store) removeClaim(ip netip.Addr, key ObjectKey) {
	claims := s.podClaims[ip]
	for i, c := range claims {
		if c.pod == key {
			claims = append(claims[:i:i], claims[i+1:]...)
			break
		}
	}
	if len(claims) == 0 {
		delete(s.podClaims, ip)
		return
	}
	s.podClaims[ip] = claims
}

func setMember[K comparable](m map[K]map[string]bool, k K, member string, add bool) {
	if add {
		if m[k] == nil {
			m[k] = map[string]bool{}
		}
		m[k][member] = true
		return
	}
	delete(m[k], member)
	if len(m[k]) == 0 {
		delete(m, k)
	}
}
