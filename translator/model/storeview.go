package model

import (
	"maps"
	"net/netip"
	"slices"
	"sort"
)

// The read side of Store: TakeChanges re-evaluates the nodes the writes
// marked, applying Build's cross-object checks to each, and the readers
// return what the last TakeChanges computed.

// TakeChanges brings the readable model up to date with every write so far
// and returns what changed since the last call.
func (s *Store) TakeChanges() Changes {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rangesDirty || s.pending.NodeSet { // a node may now sit inside a Service range
		ranges := s.shared.ServiceRanges
		s.rebuildServiceRanges()
		s.rangesDirty = false
		if !slices.Equal(ranges, s.shared.ServiceRanges) {
			s.pending.Shared = true
			// Pod addresses inside a Service range are refused (the
			// refusal names it): the claims the change moved into, out
			// of or between ranges count anew.
			for ip := range s.podClaims {
				if coveringRange(ranges, ip) != coveringRange(s.shared.ServiceRanges, ip) {
					s.markClaimants(ip)
				}
			}
		}
	}
	ch := s.pending
	s.pending = Changes{Nodes: map[string]bool{}}
	for name := range ch.Nodes {
		v := s.evaluate(name)
		if !v.routable && len(v.problems) == 0 {
			delete(s.views, name)
		} else {
			s.views[name] = v
		}
		if len(v.problems) > 0 {
			s.withProblems[name] = true
		} else {
			delete(s.withProblems, name)
		}
	}
	if s.sharedDirty {
		s.rebuildShared()
		s.sharedDirty = false
	}
	return ch
}

// evaluate applies Build's cross-object checks to one node and its pods.
func (s *Store) evaluate(name string) *nodeView {
	v := &nodeView{}
	stored := s.nodes[name]
	if stored != nil {
		v.problems = append(v.problems, stored.problems...)
	}
	keys := make([]ObjectKey, 0, len(s.podsOn[name]))
	for key := range s.podsOn[name] {
		keys = append(keys, key)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].Less(keys[j]) })
	if !stored.isRoutable() {
		for _, key := range keys {
			problems, _ := s.pods[key].admit(false)
			v.problems = append(v.problems, problems...)
		}
		return v
	}
	v.routable = true
	v.node = stored.node
	v.node.IPs, v.node.HostNames = nil, nil
	for _, ip := range stored.node.IPs {
		if owners := s.ipOwners[ip.Addr]; len(owners) > 1 {
			v.problems = append(v.problems, sharedAddressProblem(name, ip.Addr.String(), slices.Sorted(maps.Keys(owners))))
			continue
		}
		v.node.IPs = append(v.node.IPs, ip)
	}
	for _, h := range stored.node.HostNames {
		if owners := s.nameOwners[h]; len(owners) > 1 {
			v.problems = append(v.problems, sharedHostNameProblem(name, h, slices.Sorted(maps.Keys(owners))))
			continue
		}
		v.node.HostNames = append(v.node.HostNames, h)
	}
	for _, key := range keys {
		if pod, ok := s.evaluatePod(s.pods[key], v); ok {
			v.pods = append(v.pods, pod)
		}
	}
	return v
}

func (s *Store) evaluatePod(c *PodCandidate, v *nodeView) (Pod, bool) {
	problems, routable := c.admit(true)
	v.problems = append(v.problems, problems...)
	if !routable {
		return Pod{}, false
	}
	if c.Pod.HostNetwork {
		return c.Pod, true
	}
	pod := c.Pod
	pod.IPs = nil
	for _, ip := range c.Pod.IPs {
		if why := s.addressRules.refusal(ip, &s.nodes[c.Pod.NodeName].node); why != "" {
			v.problems = append(v.problems, refusedPodIPProblem(pod, ip, why))
			continue
		}
		if owners := s.ipOwners[ip]; len(owners) == 1 {
			v.problems = append(v.problems, podOnNodeIPProblem(pod, ip, slices.Sorted(maps.Keys(owners))[0]))
			continue
		}
		if nodes := s.claimingNodes(ip); len(nodes) > 1 {
			v.problems = append(v.problems, sharedPodIPProblem(pod, ip, nodes))
			continue
		}
		pod.IPs = append(pod.IPs, ip)
	}
	return pod, len(pod.IPs) > 0
}

// claimingNodes lists the routable nodes with a pod listing ip, sorted.
func (s *Store) claimingNodes(ip netip.Addr) []string {
	nodes := map[string]bool{}
	for _, c := range s.podClaims[ip] {
		if n := s.nodes[c.node]; n.isRoutable() && s.addressRules.refusal(ip, &n.node) == "" {
			nodes[c.node] = true
		}
	}
	return slices.Sorted(maps.Keys(nodes))
}

func (s *Store) rebuildShared() {
	s.shared.Services, s.shared.APIServerEndpoints, s.sharedIssues = nil, nil, nil
	for _, st := range s.services {
		s.sharedIssues = append(s.sharedIssues, st.problems...)
		if st.ok {
			s.shared.Services = append(s.shared.Services, st.svc)
		}
	}
	sortServices(s.shared.Services)
	eps, problems, fromSettings := SettingsEndpoints(s.settings)
	if !fromSettings {
		for _, slice := range s.slices {
			problems = append(problems, slice.problems...)
			for _, ep := range slice.endpoints {
				eps = appendEndpoint(eps, ep)
			}
		}
	}
	sortEndpoints(eps)
	s.shared.APIServerEndpoints, s.sharedIssues = eps, append(s.sharedIssues, problems...)
}

// rebuildServiceRanges checks the ranges of the settings and the ServiceCIDR
// objects against every routable node, as Build does.
func (s *Store) rebuildServiceRanges() {
	ranges := settingsServiceRanges(s.settings)
	s.rangeIssues = nil
	for _, c := range s.cidrs {
		ranges = append(ranges, c.ranges...)
		s.rangeIssues = append(s.rangeIssues, c.problems...)
	}
	var nodes []Node
	for _, n := range s.nodes {
		if n.isRoutable() {
			nodes = append(nodes, n.node)
		}
	}
	safe, problems := SafeServiceRanges(ranges, nodes)
	s.shared.ServiceRanges, s.rangeIssues = safe, append(s.rangeIssues, problems...)
	s.addressRules.serviceRanges = safe
}

// NodeView returns a routable node and its routable pods (read-only).
func (s *Store) NodeView(name string) (Node, []Pod, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.views[name]
	if !ok || !v.routable {
		return Node{}, nil, false
	}
	return v.node, v.pods, true
}

// NodeWithAddress names the routable node that lists ip among its
// addresses, or "" when none or several do.
func (s *Store) NodeWithAddress(ip netip.Addr) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if owners := s.ipOwners[ip]; len(owners) == 1 {
		for n := range owners {
			return n
		}
	}
	return ""
}

// NodeNames lists the routable nodes, sorted.
func (s *Store) NodeNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name, v := range s.views {
		if v.routable {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Shared returns a Cluster holding only the Services, apiserver endpoints
// and Service ranges (what every node proxy shares; read-only).
func (s *Store) Shared() Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Cluster{Services: s.shared.Services, APIServerEndpoints: s.shared.APIServerEndpoints, ServiceRanges: s.shared.ServiceRanges}
}

// Cluster materializes the whole model, as Build would return it; with
// withPods false it leaves the pods out (cheap: O(nodes)).
func (s *Store) Cluster(withPods bool) Cluster {
	keep := func(Pod) bool { return withPods }
	return s.ClusterWith(keep)
}

// ClusterWith is Cluster with only the pods keep accepts: the apiserver
// proxy needs only the pods its nodes' prefix routes do not cover, and
// sorting 150,000 pods it does not need would dominate its translation.
func (s *Store) ClusterWith(keep func(Pod) bool) Cluster {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := Cluster{Services: s.shared.Services, APIServerEndpoints: s.shared.APIServerEndpoints, ServiceRanges: s.shared.ServiceRanges}
	for _, v := range s.views {
		if !v.routable {
			continue
		}
		c.Nodes = append(c.Nodes, v.node)
		for _, pod := range v.pods {
			if keep(pod) {
				c.Pods = append(c.Pods, pod)
			}
		}
	}
	sortNodes(c.Nodes)
	sortPods(c.Pods)
	c.Index()
	return c
}

// Problems returns every problem of the current model, sorted.
func (s *Store) Problems() []Problem {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := append([]Problem(nil), s.input...)
	out = append(out, s.sharedIssues...)
	out = append(out, s.rangeIssues...)
	for name := range s.withProblems {
		out = append(out, s.views[name].problems...)
	}
	SortProblems(out)
	return out
}

// ObjectCounts says how many objects of each kind the sources hold.
func (s *Store) ObjectCounts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return map[string]int{
		"Node": len(s.nodes), "Pod": len(s.pods) + len(s.ignoredPods),
		"Service": len(s.services), "EndpointSlice": len(s.slices), "ServiceCIDR": len(s.cidrs),
	}
}

// SortProblems orders problems by object, then message.
func SortProblems(ps []Problem) {
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].Object != ps[j].Object {
			return ps[i].Object < ps[j].Object
		}
		return ps[i].Message < ps[j].Message
	})
}
