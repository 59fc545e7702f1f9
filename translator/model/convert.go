package model

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// DefaultKubeletPort is used when a node does not report its kubelet endpoint.
const DefaultKubeletPort = 10250

// Problem is one object (or part of one) that was skipped, and why.
type Problem struct {
	Object  string // e.g. "Node node-a", "Pod default/web"
	Message string // what is wrong and what to do
	// Kind sorts problems operators watch for apart ("" for the rest).
	Kind string `json:"kind,omitempty"`
}

// KindPodAddress marks a pod address refused because its node may not own
// it (podaddresses.go): a misconfigured CNI, or a node claiming addresses.
const KindPodAddress = "pod-address"

// KindSource marks a refused input of a source (a cluster file without
// nodes): nothing of it is served; the last good config is.
const KindSource = "source"

func (p Problem) String() string { return p.Object + ": " + p.Message }

// Objects is the Kubernetes input of a translation, as decoded from a dump or
// kept by informers.
type Objects struct {
	Nodes          []*corev1.Node
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
	ServiceCIDRs   []*networkingv1.ServiceCIDR
}

// Build converts Kubernetes objects into the model. Objects that cannot be
// routed safely are left out and reported; Build itself never fails, so one bad
// object never stops the others. The server keeps the same model up to date
// one object at a time with a Store; Build is the reference it is tested
// against.
func Build(objs Objects, s Settings) (Cluster, []Problem) {
	b := NewBuilder(s)
	for _, n := range objs.Nodes {
		b.Add(n)
	}
	for _, p := range objs.Pods {
		b.Add(p)
	}
	for _, svc := range objs.Services {
		b.Add(svc)
	}
	for _, slice := range objs.EndpointSlices {
		b.Add(slice)
	}
	for _, sc := range objs.ServiceCIDRs {
		b.Add(sc)
	}
	return b.Build()
}

// build runs Build's checks on the converted input of a Builder, in Build's
// order (which the reported problems follow).
func build(in *Builder) (Cluster, []Problem) {
	b := builder{settings: in.settings, nodes: map[string]bool{}}
	for _, n := range in.nodes {
		b.addNode(n)
	}
	b.addServiceRanges(in.cidrs)
	b.dropSharedNodeIPs()
	b.indexNodes()
	seenPods := make(map[ObjectKey]bool, len(in.pods))
	for _, p := range in.pods {
		if seenPods[p.key] {
			b.report("Pod "+p.key.String(), "skipped: the input holds this pod twice; keep one copy")
			continue
		}
		seenPods[p.key] = true
		if p.considered {
			b.addPod(p.c)
		}
	}
	b.dropConflictingPodIPs()
	seenServices := map[ObjectKey]bool{}
	for _, svc := range in.services {
		if seenServices[svc.key] {
			b.report("Service "+svc.key.String(), "skipped: the input holds this Service twice; keep one copy")
			continue
		}
		seenServices[svc.key] = true
		b.problems = append(b.problems, svc.problems...)
		if svc.ok {
			b.cluster.Services = append(b.cluster.Services, svc.svc)
		}
	}
	b.addAPIServerEndpoints(in.slices)
	b.sortAll()
	b.cluster.Index()
	return b.cluster, b.problems
}

// addServiceRanges collects the ranges of the settings and the ServiceCIDR
// objects and keeps the safe ones; it runs before shared node addresses are
// dropped, because a shared address is still some node's.
func (b *builder) addServiceRanges(cidrs []cidrInput) {
	ranges := settingsServiceRanges(b.settings)
	seen := map[string]bool{}
	for _, sc := range cidrs {
		if seen[sc.name] {
			b.report("ServiceCIDR "+sc.name, "skipped: the input holds this ServiceCIDR twice; keep one copy")
			continue
		}
		seen[sc.name] = true
		ranges = append(ranges, sc.ranges...)
		b.problems = append(b.problems, sc.problems...)
	}
	safe, problems := SafeServiceRanges(ranges, b.cluster.Nodes)
	b.cluster.ServiceRanges = safe
	b.problems = append(b.problems, problems...)
}

// ObjectKey names a namespaced object.
type ObjectKey struct{ Namespace, Name string }

func (k ObjectKey) String() string { return k.Namespace + "/" + k.Name }

// Less orders keys by namespace, then name (the model's pod and Service order).
func (k ObjectKey) Less(o ObjectKey) bool {
	if k.Namespace != o.Namespace {
		return k.Namespace < o.Namespace
	}
	return k.Name < o.Name
}

type builder struct {
	settings Settings
	cluster  Cluster
	problems []Problem
	nodes    map[string]bool // names of the nodes kept so far
	// Set once every node is in: what pod addresses are checked against.
	byName map[string]*Node
	rules  podAddressRules
}

// indexNodes prepares the pod address checks once the nodes and Service
// ranges are final.
func (b *builder) indexNodes() {
	b.byName = make(map[string]*Node, len(b.cluster.Nodes))
	b.rules = podAddressRules{allowed: allowedPodRanges(b.settings), serviceRanges: b.cluster.ServiceRanges, cidrs: cidrIndex{}}
	for i := range b.cluster.Nodes {
		n := &b.cluster.Nodes[i]
		b.byName[n.Name] = n
		b.rules.cidrs.set(n.Name, n.PodCIDRs, true)
	}
}

func (b *builder) report(object, format string, args ...any) {
	b.problems = append(b.problems, problem(object, format, args...))
}

func problem(object, format string, args ...any) Problem {
	return Problem{Object: object, Message: fmt.Sprintf(format, args...)}
}

func (b *builder) addNode(n nodeInput) {
	b.problems = append(b.problems, n.problems...)
	if !n.ok {
		return
	}
	node := n.node
	if b.nodes[node.Name] {
		b.report("Node "+node.Name, "skipped: the input holds this node twice; keep one copy")
		return
	}
	b.cluster.Nodes = append(b.cluster.Nodes, node)
	b.nodes[node.Name] = true
}

// ConvertNode converts one Node on its own, before the checks that need the
// other nodes (shared addresses). ok is false when the node cannot be
// routed at all; problems says why, and what else was left out.
func ConvertNode(n *corev1.Node, s Settings) (node Node, problems []Problem, ok bool) {
	why := nameProblem(dns1123Subdomain, n.Name)
	obj := "Node " + shownName(n.Name, why == "")
	if why != "" {
		return Node{}, []Problem{problem(obj, "skipped: not a valid node name: %s; its pods are skipped too", why)}, false
	}
	if n.Name == s.ClusterID {
		return Node{}, []Problem{problem(obj, "skipped: node name equals the tunnel clusterID %q; set another clusterID in the settings", s.ClusterID)}, false
	}
	if n.Name == s.APIServerProxyName {
		// Its tunnel certificate would carry the apiserver proxy's name, which
		// node proxies trust as the apiserver proxy.
		return Node{}, []Problem{problem(obj, "skipped: node name equals the apiserver proxy's certificate name %q; set another apiServerProxyName in the settings", s.APIServerProxyName)}, false
	}
	node = Node{Name: n.Name, KubeletPort: uint32(n.Status.DaemonEndpoints.KubeletEndpoint.Port), Ready: nodeReady(n)}
	if node.KubeletPort == 0 || node.KubeletPort > 65535 {
		node.KubeletPort = DefaultKubeletPort
	}
	problems = addNodeAddresses(&node, n.Status.Addresses)
	switch {
	case len(node.IPs) == 0 && len(node.HostNames) == 0:
		problems = append(problems, problem(obj, "has no usable addresses in status.addresses: its kubelet cannot be reached (its pods still are)"))
	case len(node.IPs) == 0:
		problems = append(problems, problem(obj, "has no InternalIP or ExternalIP: its node proxy has no address to dial its kubelet on, so kubelet requests are refused"))
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			problems = append(problems, problem(obj, "pod CIDR %q ignored: %v; its pods are routed by pod IP", c, err))
			continue
		}
		node.PodCIDRs = append(node.PodCIDRs, p.Masked())
	}
	return node, problems, true
}

func addNodeAddresses(node *Node, addrs []corev1.NodeAddress) (problems []Problem) {
	obj := "Node " + node.Name
	for _, a := range addrs {
		switch AddressKind(a.Type) {
		case InternalIP, ExternalIP:
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || ip.Zone() != "" {
				problems = append(problems, problem(obj, "%s %q ignored: not an IP address", a.Type, a.Address))
				continue
			}
			if !containsIP(node.IPs, ip.Unmap()) {
				node.IPs = append(node.IPs, NodeIP{Kind: AddressKind(a.Type), Addr: ip.Unmap()})
			}
		case Hostname, InternalDNS, ExternalDNS:
			name := strings.ToLower(a.Address)
			if !validHostName(name) {
				problems = append(problems, problem(obj, "%s %q ignored: not a DNS name", a.Type, a.Address))
				continue
			}
			if !contains(node.HostNames, name) {
				node.HostNames = append(node.HostNames, name)
			}
		default:
			problems = append(problems, problem(obj, "address type %q ignored: unknown", a.Type))
		}
	}
	return problems
}

// dropSharedNodeIPs removes every IP and host name that two nodes claim: a
// CONNECT to it could belong to either, so neither may receive it.
func (b *builder) dropSharedNodeIPs() {
	ipOwners := map[netip.Addr][]string{}
	nameOwners := map[string][]string{}
	for _, n := range b.cluster.Nodes {
		for _, ip := range n.IPs {
			ipOwners[ip.Addr] = append(ipOwners[ip.Addr], n.Name)
		}
		for _, h := range n.HostNames {
			nameOwners[h] = append(nameOwners[h], n.Name)
		}
	}
	for i := range b.cluster.Nodes {
		n := &b.cluster.Nodes[i]
		ips := n.IPs[:0]
		for _, ip := range n.IPs {
			if owners := ipOwners[ip.Addr]; len(owners) > 1 {
				b.problems = append(b.problems, sharedAddressProblem(n.Name, ip.Addr.String(), owners))
				continue
			}
			ips = append(ips, ip)
		}
		n.IPs = ips
		names := n.HostNames[:0]
		for _, h := range n.HostNames {
			if owners := nameOwners[h]; len(owners) > 1 {
				b.problems = append(b.problems, sharedHostNameProblem(n.Name, h, owners))
				continue
			}
			names = append(names, h)
		}
		n.HostNames = names
	}
}

func sharedAddressProblem(node, addr string, owners []string) Problem {
	return problem("Node "+node, "address %s ignored: claimed by nodes %s; fix the nodes' status.addresses", addr, sortedJoin(owners))
}

func sharedHostNameProblem(node, name string, owners []string) Problem {
	return problem("Node "+node, "host name %s ignored: claimed by nodes %s", name, sortedJoin(owners))
}

// PodCandidate is one pod converted on its own, before the checks that need
// its node and the other pods.
type PodCandidate struct {
	Pod      Pod       // IPs parsed and deduplicated
	problems []Problem // unparsable IPs, an invalid name
	running  bool
	invalid  bool // its name or namespace is not a Kubernetes name: never routed
}

// ConvertPod converts one pod. considered is false for pods that never take
// part in routing: finished (their IP may already belong to another pod),
// unscheduled ones, and hostNetwork pods that declare no TCP port (they are
// reached through their node's addresses, and only on declared ports).
func ConvertPod(p *corev1.Pod) (c PodCandidate, considered bool) {
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed || p.Spec.NodeName == "" {
		return PodCandidate{}, false
	}
	obj, invalid := objectName("Pod", p.Namespace, p.Name, dns1123Subdomain)
	c.Pod = Pod{Namespace: p.Namespace, Name: p.Name, NodeName: p.Spec.NodeName, Terminating: p.DeletionTimestamp != nil}
	if invalid != nil {
		c.problems, c.invalid = []Problem{*invalid}, true
		return c, true
	}
	if p.Spec.HostNetwork {
		c.Pod.HostNetwork, c.Pod.HostPorts = true, hostPorts(p)
		return c, len(c.Pod.HostPorts) > 0
	}
	c.running = p.Status.Phase == corev1.PodRunning
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, raw := range ips {
		ip, err := netip.ParseAddr(raw.IP)
		if err != nil || ip.Zone() != "" {
			c.problems = append(c.problems, problem(obj, "pod IP %q ignored: not an IP address", raw.IP))
			continue
		}
		if !contains(c.Pod.IPs, ip.Unmap()) {
			c.Pod.IPs = append(c.Pod.IPs, ip.Unmap())
		}
	}
	return c, true
}

// hostPorts lists a pod's declared TCP container ports, sorted, once each.
func hostPorts(p *corev1.Pod) []uint32 {
	var ports []uint32
	for _, ctr := range p.Spec.Containers {
		for _, port := range ctr.Ports {
			if (port.Protocol == "" || port.Protocol == corev1.ProtocolTCP) && port.ContainerPort > 0 && !slices.Contains(ports, uint32(port.ContainerPort)) {
				ports = append(ports, uint32(port.ContainerPort))
			}
		}
	}
	slices.Sort(ports)
	return ports
}

// admit says whether the pod is routable once its node is known to exist
// (nodeKnown) and what to report; address conflicts are checked later.
func (c PodCandidate) admit(nodeKnown bool) (problems []Problem, routable bool) {
	if c.invalid {
		return c.problems, false
	}
	obj := "Pod " + c.Pod.Namespace + "/" + c.Pod.Name
	if !nodeKnown {
		return []Problem{problem(obj, "skipped: node %q is not in the input (or was skipped)", c.Pod.NodeName)}, false
	}
	if c.Pod.HostNetwork {
		return nil, true // no IP of its own: nothing to check
	}
	if len(c.Pod.IPs) == 0 {
		if c.running {
			return append(c.problems, problem(obj, "skipped: Running but status.podIPs is empty")), false
		}
		return c.problems, false // no IP yet (Pending): nothing to route
	}
	return c.problems, true
}

func (b *builder) addPod(c PodCandidate) {
	problems, routable := c.admit(b.nodes[c.Pod.NodeName])
	b.problems = append(b.problems, problems...)
	if !routable {
		return
	}
	pod := c.Pod
	if !pod.HostNetwork {
		var refused []Problem
		pod.IPs, refused = b.rules.admitted(pod, b.byName[pod.NodeName])
		b.problems = append(b.problems, refused...)
		if len(pod.IPs) == 0 {
			return
		}
	}
	b.cluster.Pods = append(b.cluster.Pods, pod)
}

// dropConflictingPodIPs removes pod IPs that a node owns or that pods on two
// different nodes claim: routing them to either node could be wrong.
func (b *builder) dropConflictingPodIPs() {
	nodeIPs := map[netip.Addr]string{}
	for _, n := range b.cluster.Nodes {
		for _, ip := range n.IPs {
			nodeIPs[ip.Addr] = n.Name
		}
	}
	// owner is the first node claiming an IP; claimants lists every node of
	// the (rare) IPs claimed on more than one node.
	owner := make(map[netip.Addr]string, len(b.cluster.Pods))
	claimants := map[netip.Addr]map[string]bool{}
	for _, p := range b.cluster.Pods {
		for _, ip := range p.IPs {
			first, seen := owner[ip]
			switch {
			case !seen:
				owner[ip] = p.NodeName
			case first != p.NodeName:
				if claimants[ip] == nil {
					claimants[ip] = map[string]bool{first: true}
				}
				claimants[ip][p.NodeName] = true
			}
		}
	}
	pods := b.cluster.Pods[:0]
	for _, p := range b.cluster.Pods {
		ips := p.IPs[:0]
		for _, ip := range p.IPs {
			if owner, ok := nodeIPs[ip]; ok {
				b.problems = append(b.problems, podOnNodeIPProblem(p, ip, owner))
				continue
			}
			if nodes, shared := claimants[ip]; shared {
				b.problems = append(b.problems, sharedPodIPProblem(p, ip, slices.Sorted(maps.Keys(nodes))))
				continue
			}
			ips = append(ips, ip)
		}
		if len(ips) == 0 && !p.HostNetwork {
			continue
		}
		p.IPs = ips
		pods = append(pods, p)
	}
	b.cluster.Pods = pods
}

func podOnNodeIPProblem(p Pod, ip netip.Addr, node string) Problem {
	return problem("Pod "+p.Namespace+"/"+p.Name, "pod IP %s ignored: it is an address of node %s but the pod is not hostNetwork", ip, node)
}

func sharedPodIPProblem(p Pod, ip netip.Addr, nodes []string) Problem {
	return problem("Pod "+p.Namespace+"/"+p.Name, "pod IP %s ignored: pods on nodes %s claim it", ip, strings.Join(nodes, ", "))
}

// ConvertService converts one Service; ok is false when it has nothing a
// CONNECT could reach (ExternalName, headless, no TCP port).
func ConvertService(svc *corev1.Service) (out Service, problems []Problem, ok bool) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return Service{}, nil, false
	}
	obj, invalid := objectName("Service", svc.Namespace, svc.Name, dns1035Label)
	if invalid != nil {
		return Service{}, []Problem{*invalid}, false
	}
	out = Service{Namespace: svc.Namespace, Name: svc.Name}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, raw := range ips {
		if raw == corev1.ClusterIPNone || raw == "" {
			continue // headless: the apiserver dials endpoint pod IPs instead
		}
		ip, err := netip.ParseAddr(raw)
		if err != nil || ip.Zone() != "" {
			problems = append(problems, problem(obj, "cluster IP %q ignored: not an IP address", raw))
			continue
		}
		if !contains(out.ClusterIPs, ip.Unmap()) {
			out.ClusterIPs = append(out.ClusterIPs, ip.Unmap())
		}
	}
	for _, port := range svc.Spec.Ports {
		if port.Protocol != "" && port.Protocol != corev1.ProtocolTCP {
			continue // CONNECT carries TCP only
		}
		if port.Port <= 0 || port.Port > 65535 {
			problems = append(problems, problem(obj, "port %d ignored: out of range", port.Port))
			continue
		}
		if !contains(out.Ports, uint32(port.Port)) {
			out.Ports = append(out.Ports, uint32(port.Port))
		}
	}
	return out, problems, len(out.ClusterIPs) > 0 && len(out.Ports) > 0
}

// addAPIServerEndpoints takes the apiserver proxies from the settings if given,
// else from the EndpointSlices of default/kubernetes (one proxy per apiserver,
// reached on the tunnel port, never through a load balancer).
func (b *builder) addAPIServerEndpoints(slices []sliceInput) {
	if eps, problems, fromSettings := SettingsEndpoints(b.settings); fromSettings {
		b.cluster.APIServerEndpoints, b.problems = eps, append(b.problems, problems...)
		return
	}
	for _, slice := range slices {
		b.problems = append(b.problems, slice.problems...)
		for _, ep := range slice.endpoints {
			b.cluster.APIServerEndpoints = appendEndpoint(b.cluster.APIServerEndpoints, ep)
		}
	}
}

// SettingsEndpoints returns the apiserver proxies listed in the settings;
// fromSettings is false when none are, and EndpointSlices decide.
func SettingsEndpoints(s Settings) (eps []Endpoint, problems []Problem, fromSettings bool) {
	for _, raw := range s.APIServerEndpoints {
		ep, err := ParseEndpoint(raw, s.TunnelPort)
		if err != nil {
			problems = append(problems, problem("settings apiServerEndpoints", "%v", err))
			continue
		}
		eps = appendEndpoint(eps, ep)
	}
	return eps, problems, len(s.APIServerEndpoints) > 0
}

// SliceEndpoints returns the ready apiserver addresses of one EndpointSlice
// of default/kubernetes; relevant is false for every other slice.
func SliceEndpoints(slice *discoveryv1.EndpointSlice, tunnelPort uint32) (eps []Endpoint, problems []Problem, relevant bool) {
	if slice.Namespace != "default" || slice.Labels[discoveryv1.LabelServiceName] != "kubernetes" {
		return nil, nil, false
	}
	for _, e := range slice.Endpoints {
		if e.Conditions.Ready != nil && !*e.Conditions.Ready {
			continue
		}
		for _, raw := range e.Addresses {
			ip, err := netip.ParseAddr(raw)
			if err != nil {
				problems = append(problems, problem("EndpointSlice default/"+slice.Name, "address %q ignored: not an IP address", raw))
				continue
			}
			eps = appendEndpoint(eps, Endpoint{Addr: ip.Unmap(), Port: tunnelPort})
		}
	}
	return eps, problems, true
}

func (b *builder) sortAll() {
	c := &b.cluster
	sortNodes(c.Nodes)
	sortPods(c.Pods)
	sortServices(c.Services)
	sortEndpoints(c.APIServerEndpoints)
}

func sortNodes(ns []Node) { sort.Slice(ns, func(i, j int) bool { return ns[i].Name < ns[j].Name }) }

func sortPods(ps []Pod) {
	sort.Slice(ps, func(i, j int) bool {
		return ObjectKey{ps[i].Namespace, ps[i].Name}.Less(ObjectKey{ps[j].Namespace, ps[j].Name})
	})
}

func sortServices(ss []Service) {
	sort.Slice(ss, func(i, j int) bool {
		return ObjectKey{ss[i].Namespace, ss[i].Name}.Less(ObjectKey{ss[j].Namespace, ss[j].Name})
	})
}

func sortEndpoints(eps []Endpoint) {
	sort.Slice(eps, func(i, j int) bool {
		if eps[i].Addr != eps[j].Addr {
			return eps[i].Addr.Less(eps[j].Addr)
		}
		return eps[i].Port < eps[j].Port
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// validHostName accepts lower-case RFC 1123 names: they become virtual-host
// domains, so anything else could widen a match.
func validHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

func appendEndpoint(eps []Endpoint, ep Endpoint) []Endpoint {
	for _, e := range eps {
		if e == ep {
			return eps
		}
	}
	return append(eps, ep)
}

func containsIP(ips []NodeIP, a netip.Addr) bool {
	for _, ip := range ips {
		if ip.Addr == a {
			return true
		}
	}
	return false
}

func contains[T comparable](xs []T, x T) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

func sortedJoin(xs []string) string {
	xs = append([]string(nil), xs...)
	sort.Strings(xs)
	return strings.Join(xs, ", ")
}
