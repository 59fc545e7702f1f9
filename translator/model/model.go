// Package model holds the plain Go view of a cluster that the translator needs.
// It knows nothing about Envoy; conversion from Kubernetes objects lives in convert.go.
// Store is the incremental form the server keeps, fed object by object.
//
// model imports the Kubernetes API types, never Envoy, gRPC or client-go.
package model

import "net/netip"

// AddressKind mirrors the Kubernetes NodeAddressType values the translation uses.
type AddressKind string

const (
	InternalIP  AddressKind = "InternalIP"
	ExternalIP  AddressKind = "ExternalIP"
	Hostname    AddressKind = "Hostname"
	InternalDNS AddressKind = "InternalDNS"
	ExternalDNS AddressKind = "ExternalDNS"
)

// Node is one Kubernetes node, reduced to what routing needs.
type Node struct {
	Name string
	// IPs are the node's InternalIP and ExternalIP addresses, in status order.
	IPs []NodeIP
	// HostNames are Hostname, InternalDNS and ExternalDNS addresses: the apiserver
	// dials these when they come first in --kubelet-preferred-address-types.
	HostNames   []string
	KubeletPort uint32
	PodCIDRs    []netip.Prefix
	// Ready is the NodeReady condition. Routing ignores it on purpose: a
	// NotReady node may still hold a working tunnel (and `kubectl logs` is how
	// one debugs it); without a tunnel its streams fail fast with 503 anyway.
	Ready bool
}

// NodeIP is one IP address of a node with its kind.
type NodeIP struct {
	Kind AddressKind
	Addr netip.Addr
}

// KubeletIP is the address the node proxy dials for its own kubelet: the first
// InternalIP, else the first ExternalIP. ok is false for a node without IPs.
func (n *Node) KubeletIP() (addr netip.Addr, ok bool) {
	for _, kind := range []AddressKind{InternalIP, ExternalIP} {
		for _, ip := range n.IPs {
			if ip.Kind == kind {
				return ip.Addr, true
			}
		}
	}
	return netip.Addr{}, false
}

// Pod is one pod with a routable IP, or a hostNetwork pod that declares TCP
// ports. Pods without IPs, hostNetwork pods without ports and finished pods
// are dropped during conversion.
type Pod struct {
	Namespace string
	Name      string
	NodeName  string
	IPs       []netip.Addr
	// HostNetwork pods have no IPs of their own: they listen on their node's
	// addresses, on HostPorts (their declared TCP container ports), which
	// the node proxy then accepts on its own addresses.
	HostNetwork bool
	HostPorts   []uint32
	// Terminating is true once deletionTimestamp is set; the pod still runs
	// (graceful shutdown) and `kubectl logs` on it must keep working.
	Terminating bool
}

// Service is a Service with at least one ClusterIP and one TCP port.
type Service struct {
	Namespace  string
	Name       string
	ClusterIPs []netip.Addr
	Ports      []uint32
}

// Endpoint is one apiserver proxy a node proxy dials a tunnel to.
type Endpoint struct {
	Addr netip.Addr
	Port uint32
}

// Cluster is the whole model: the translator's only input besides Settings.
// Every slice is sorted by name (or address) so output is deterministic.
type Cluster struct {
	Nodes              []Node
	Pods               []Pod
	Services           []Service
	APIServerEndpoints []Endpoint
	// ServiceRanges are the safe Service CIDRs (see SafeServiceRanges),
	// sorted: node proxies accept CONNECTs to all of them.
	ServiceRanges []netip.Prefix

	// index makes lookups O(1) at 5,000 nodes / 150,000 pods. Build sets it;
	// a hand-made Cluster calls Index, or lookups fall back to linear scans.
	index *clusterIndex
}

type clusterIndex struct {
	nodes map[string]int   // node name -> position in Nodes
	pods  map[string][]int // node name -> positions in Pods
}

// Index (re)builds the lookup index; call it after changing the slices.
func (c *Cluster) Index() {
	idx := &clusterIndex{nodes: make(map[string]int, len(c.Nodes)), pods: make(map[string][]int, len(c.Nodes))}
	for i, n := range c.Nodes {
		idx.nodes[n.Name] = i
	}
	for i, p := range c.Pods {
		idx.pods[p.NodeName] = append(idx.pods[p.NodeName], i)
	}
	c.index = idx
}

// Node returns the node with the given name.
func (c *Cluster) Node(name string) (*Node, bool) {
	if c.index != nil {
		i, ok := c.index.nodes[name]
		if !ok {
			return nil, false
		}
		return &c.Nodes[i], true
	}
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], true
		}
	}
	return nil, false
}

// PodsOn returns the pods scheduled on the named node, in model order.
func (c *Cluster) PodsOn(node string) []Pod {
	var out []Pod
	if c.index != nil {
		for _, i := range c.index.pods[node] {
			out = append(out, c.Pods[i])
		}
		return out
	}
	for _, p := range c.Pods {
		if p.NodeName == node {
			out = append(out, p)
		}
	}
	return out
}
