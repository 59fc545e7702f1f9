package model

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// DefaultKubeletPort is used when a node does not report its kubelet endpoint.
const DefaultKubeletPort = 10250

// Problem is one object (or part of one) that was skipped, and why.
type Problem struct {
	Object  string // e.g. "Node node-a", "Pod default/web"
	Message string // what is wrong and what to do
}

func (p Problem) String() string { return p.Object + ": " + p.Message }

// Objects is the Kubernetes input of a translation, as decoded from a dump or
// kept by informers.
type Objects struct {
	Nodes          []*corev1.Node
	Pods           []*corev1.Pod
	Services       []*corev1.Service
	EndpointSlices []*discoveryv1.EndpointSlice
}

// Build converts Kubernetes objects into the model. Objects that cannot be
// routed safely are left out and reported; Build itself never fails, so one bad
// object never stops the others.
func Build(objs Objects, s Settings) (Cluster, []Problem) {
	b := builder{settings: s, nodes: map[string]bool{}}
	for _, n := range objs.Nodes {
		b.addNode(n)
	}
	b.dropSharedNodeIPs()
	for _, p := range objs.Pods {
		b.addPod(p)
	}
	b.dropConflictingPodIPs()
	for _, svc := range objs.Services {
		b.addService(svc)
	}
	b.addAPIServerEndpoints(objs.EndpointSlices)
	b.sortAll()
	b.cluster.Index()
	return b.cluster, b.problems
}

type builder struct {
	settings Settings
	cluster  Cluster
	problems []Problem
	nodes    map[string]bool // names of the nodes kept so far
}

func (b *builder) report(object, format string, args ...any) {
	b.problems = append(b.problems, Problem{Object: object, Message: fmt.Sprintf(format, args...)})
}

func (b *builder) addNode(n *corev1.Node) {
	obj := "Node " + n.Name
	if err := ValidTunnelID(n.Name); err != nil {
		b.report(obj, "skipped: node name %v; its pods are skipped too", err)
		return
	}
	if n.Name == b.settings.ClusterID {
		b.report(obj, "skipped: node name equals the tunnel clusterID %q; set another clusterID in the settings", b.settings.ClusterID)
		return
	}
	if b.nodes[n.Name] {
		b.report(obj, "skipped: the input holds this node twice; keep one copy")
		return
	}
	node := Node{Name: n.Name, KubeletPort: uint32(n.Status.DaemonEndpoints.KubeletEndpoint.Port), Ready: nodeReady(n)}
	if node.KubeletPort == 0 || node.KubeletPort > 65535 {
		node.KubeletPort = DefaultKubeletPort
	}
	b.addNodeAddresses(&node, n.Status.Addresses)
	switch {
	case len(node.IPs) == 0 && len(node.HostNames) == 0:
		b.report(obj, "has no usable addresses in status.addresses: its kubelet cannot be reached (its pods still are)")
	case len(node.IPs) == 0:
		b.report(obj, "has no InternalIP or ExternalIP: its node proxy has no address to dial its kubelet on, so kubelet requests are refused")
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			b.report(obj, "pod CIDR %q ignored: %v; its pods are routed by pod IP", c, err)
			continue
		}
		node.PodCIDRs = append(node.PodCIDRs, p.Masked())
	}
	b.cluster.Nodes = append(b.cluster.Nodes, node)
	b.nodes[node.Name] = true
}

func (b *builder) addNodeAddresses(node *Node, addrs []corev1.NodeAddress) {
	obj := "Node " + node.Name
	for _, a := range addrs {
		switch AddressKind(a.Type) {
		case InternalIP, ExternalIP:
			ip, err := netip.ParseAddr(a.Address)
			if err != nil || ip.Zone() != "" {
				b.report(obj, "%s %q ignored: not an IP address", a.Type, a.Address)
				continue
			}
			if !containsIP(node.IPs, ip.Unmap()) {
				node.IPs = append(node.IPs, NodeIP{Kind: AddressKind(a.Type), Addr: ip.Unmap()})
			}
		case Hostname, InternalDNS, ExternalDNS:
			name := strings.ToLower(a.Address)
			if !validHostName(name) {
				b.report(obj, "%s %q ignored: not a DNS name", a.Type, a.Address)
				continue
			}
			if !contains(node.HostNames, name) {
				node.HostNames = append(node.HostNames, name)
			}
		default:
			b.report(obj, "address type %q ignored: unknown", a.Type)
		}
	}
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
				b.report("Node "+n.Name, "address %s ignored: claimed by nodes %s; fix the nodes' status.addresses", ip.Addr, strings.Join(owners, ", "))
				continue
			}
			ips = append(ips, ip)
		}
		n.IPs = ips
		names := n.HostNames[:0]
		for _, h := range n.HostNames {
			if owners := nameOwners[h]; len(owners) > 1 {
				b.report("Node "+n.Name, "host name %s ignored: claimed by nodes %s", h, strings.Join(owners, ", "))
				continue
			}
			names = append(names, h)
		}
		n.HostNames = names
	}
}

func (b *builder) addPod(p *corev1.Pod) {
	obj := "Pod " + p.Namespace + "/" + p.Name
	switch {
	case p.Spec.HostNetwork:
		return // shares the node's IPs: reached through the node's addresses
	case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
		return // finished: its IP may already belong to another pod
	case p.Spec.NodeName == "":
		return // not scheduled yet
	}
	if !b.nodes[p.Spec.NodeName] {
		b.report(obj, "skipped: node %q is not in the input (or was skipped)", p.Spec.NodeName)
		return
	}
	pod := Pod{Namespace: p.Namespace, Name: p.Name, NodeName: p.Spec.NodeName, Terminating: p.DeletionTimestamp != nil}
	ips := p.Status.PodIPs
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = []corev1.PodIP{{IP: p.Status.PodIP}}
	}
	for _, raw := range ips {
		ip, err := netip.ParseAddr(raw.IP)
		if err != nil || ip.Zone() != "" {
			b.report(obj, "pod IP %q ignored: not an IP address", raw.IP)
			continue
		}
		if !contains(pod.IPs, ip.Unmap()) {
			pod.IPs = append(pod.IPs, ip.Unmap())
		}
	}
	if len(pod.IPs) == 0 {
		if p.Status.Phase == corev1.PodRunning {
			b.report(obj, "skipped: Running but status.podIPs is empty")
		}
		return // no IP yet (Pending): nothing to route
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
		obj := "Pod " + p.Namespace + "/" + p.Name
		ips := p.IPs[:0]
		for _, ip := range p.IPs {
			if owner, ok := nodeIPs[ip]; ok {
				b.report(obj, "pod IP %s ignored: it is an address of node %s but the pod is not hostNetwork", ip, owner)
				continue
			}
			if nodes, shared := claimants[ip]; shared {
				b.report(obj, "pod IP %s ignored: pods on nodes %s claim it", ip, strings.Join(sortedKeys(nodes), ", "))
				continue
			}
			ips = append(ips, ip)
		}
		if len(ips) == 0 {
			continue
		}
		p.IPs = ips
		pods = append(pods, p)
	}
	b.cluster.Pods = pods
}

func (b *builder) addService(svc *corev1.Service) {
	obj := "Service " + svc.Namespace + "/" + svc.Name
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	out := Service{Namespace: svc.Namespace, Name: svc.Name}
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
			b.report(obj, "cluster IP %q ignored: not an IP address", raw)
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
			b.report(obj, "port %d ignored: out of range", port.Port)
			continue
		}
		if !contains(out.Ports, uint32(port.Port)) {
			out.Ports = append(out.Ports, uint32(port.Port))
		}
	}
	if len(out.ClusterIPs) == 0 || len(out.Ports) == 0 {
		return
	}
	b.cluster.Services = append(b.cluster.Services, out)
}

// addAPIServerEndpoints takes the apiserver proxies from the settings if given,
// else from the EndpointSlices of default/kubernetes (one proxy per apiserver,
// reached on the tunnel port, never through a load balancer).
func (b *builder) addAPIServerEndpoints(slices []*discoveryv1.EndpointSlice) {
	s := b.settings
	if len(s.APIServerEndpoints) > 0 {
		for _, raw := range s.APIServerEndpoints {
			ep, err := ParseEndpoint(raw, s.TunnelPort)
			if err != nil {
				b.report("settings apiServerEndpoints", "%v", err)
				continue
			}
			b.cluster.APIServerEndpoints = appendEndpoint(b.cluster.APIServerEndpoints, ep)
		}
		return
	}
	for _, slice := range slices {
		if slice.Namespace != "default" || slice.Labels[discoveryv1.LabelServiceName] != "kubernetes" {
			continue
		}
		for _, e := range slice.Endpoints {
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, raw := range e.Addresses {
				ip, err := netip.ParseAddr(raw)
				if err != nil {
					b.report("EndpointSlice default/"+slice.Name, "address %q ignored: not an IP address", raw)
					continue
				}
				b.cluster.APIServerEndpoints = appendEndpoint(b.cluster.APIServerEndpoints, Endpoint{Addr: ip.Unmap(), Port: s.TunnelPort})
			}
		}
	}
}

func (b *builder) sortAll() {
	c := &b.cluster
	sort.Slice(c.Nodes, func(i, j int) bool { return c.Nodes[i].Name < c.Nodes[j].Name })
	sort.Slice(c.Pods, func(i, j int) bool {
		if c.Pods[i].Namespace != c.Pods[j].Namespace {
			return c.Pods[i].Namespace < c.Pods[j].Namespace
		}
		return c.Pods[i].Name < c.Pods[j].Name
	})
	sort.Slice(c.Services, func(i, j int) bool {
		if c.Services[i].Namespace != c.Services[j].Namespace {
			return c.Services[i].Namespace < c.Services[j].Namespace
		}
		return c.Services[i].Name < c.Services[j].Name
	})
	sort.Slice(c.APIServerEndpoints, func(i, j int) bool {
		a, z := c.APIServerEndpoints[i], c.APIServerEndpoints[j]
		if a.Addr != z.Addr {
			return a.Addr.Less(z.Addr)
		}
		return a.Port < z.Port
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

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
