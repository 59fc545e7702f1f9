package translator

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sync"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/translator/model"
)

// Translator translates one model snapshot. It computes the parts that every
// node proxy shares (the Services virtual host) once, so translating all
// 5,000 node proxies does not redo them 5,000 times. Returned resources may
// share these parts: treat them as read-only (clone before changing).
type Translator struct {
	cluster  *model.Cluster
	settings model.Settings

	servicesOnce sync.Once
	services     []*routev3.VirtualHost // the Services host, then the regex-matched ranges

	planOnce sync.Once
	plan     []*tunnelTargets // the node targets, then the Service targets
	nodes    int              // how many of plan are node targets
	reused   *Translator      // from ReuseNodeTargets
}

// egressPlan is computed once per Translator (fingerprint and translation
// share it).
func (t *Translator) egressPlan() []*tunnelTargets {
	t.planOnce.Do(func() {
		var nodes []*tunnelTargets
		if t.reused != nil {
			prev := t.reused.egressPlan()
			nodes = slices.Clip(prev[:t.reused.nodes])
		} else {
			nodes = nodeTargets(t.cluster, t.settings)
		}
		t.plan, t.nodes = append(nodes, serviceTargets(t.cluster, t.settings)...), len(nodes)
		t.reused = nil // no chain of every earlier Translator kept alive
	})
	return t.plan
}

// ReuseNodeTargets makes t take the per-node part of the apiserver proxy's
// routes (and their protos) from prev, and only the Services from its own
// cluster, which then needs no nodes nor pods: a Service change costs
// O(Services), not O(nodes + pods). Call it before anything else on t, and
// only when the nodes and their pods did not change since prev
// (APIServerNodesAffected) and the settings are the same.
func (t *Translator) ReuseNodeTargets(prev *Translator) { t.reused = prev }

// APIServerFingerprint hashes everything the apiserver proxy's config depends
// on, far cheaper than translating it: a pod inside its node's prefix route
// changes nothing here, so the server can skip the apiserver proxy entirely.
func (t *Translator) APIServerFingerprint() uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%+v\x00", t.settings)
	for _, p := range t.egressPlan() {
		h.Write([]byte(p.name + "\x00" + p.hostID + "\x00"))
		for _, d := range p.domains {
			h.Write([]byte(d + "\x00"))
		}
		h.Write([]byte{0xff})
	}
	return h.Sum64()
}

// New returns a Translator for c and s; c must not change while it is used.
func New(c *model.Cluster, s model.Settings) *Translator {
	return &Translator{cluster: c, settings: s}
}

// APIServerProxy translates c for the apiserver proxy (see Translator.APIServerProxy).
func APIServerProxy(c *model.Cluster, s model.Settings) Resources {
	return New(c, s).APIServerProxy()
}

// NodeProxy translates c for one node proxy (see Translator.NodeProxy).
func NodeProxy(c *model.Cluster, s model.Settings, node string) (Resources, error) {
	return New(c, s).NodeProxy(node)
}

// nodeServicesVirtualHosts terminate CONNECT to the Service ranges (and to
// the ClusterIP:port pairs outside them); the same for every node.
func (t *Translator) nodeServicesVirtualHosts() []*routev3.VirtualHost {
	t.servicesOnce.Do(func() {
		domains, matchers := nodeServiceDomains(t.cluster)
		if vh := terminatingVirtualHost("services", domains, OriginalDstTarget); vh != nil {
			t.services = append(t.services, vh)
		}
		t.services = append(t.services, rangeVirtualHosts(matchers)...)
	})
	return t.services
}

// NodeSharedFingerprint hashes what every node proxy's config shares (the
// Services virtual hosts, the apiserver proxies' endpoints, the settings):
// when it is unchanged, a Service or endpoint change needs no node proxy
// re-translated.
func (t *Translator) NodeSharedFingerprint() string {
	shared := []proto.Message{apiServerEndpoints(t.cluster)}
	for _, vh := range t.nodeServicesVirtualHosts() {
		shared = append(shared, vh)
	}
	return ContentHash(shared, fmt.Sprintf("%+v", t.settings))
}
