package xds

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"sort"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// Publisher turns cluster updates into per-proxy snapshots. A node proxy's
// snapshot is re-translated only when its inputs (its node, its pods, the
// Services, the apiserver endpoints) changed, and a type is pushed only when
// its content hash changed: a pod change reaches only its node's Envoy.
type Publisher struct {
	cache    cachev3.SnapshotCache
	settings model.Settings
	issuer   *Issuer
	metrics  *Metrics
	log      logrus.FieldLogger

	mu            sync.Mutex
	cluster       model.Cluster
	fingerprint   map[string]uint64 // node name -> hash of its inputs
	apiserverFP   uint64            // hash of the apiserver proxy's inputs
	apiserverDone bool
	versions      map[string]map[string]string // key -> type URL -> version
	counts        map[string]map[string]int    // key -> type URL -> resources
	served        map[string]translator.Resources
	setAt         map[string]time.Time // key -> when its last snapshot was set
	problems      map[string]bool
	synced        bool
	lastObjects   model.Objects // the last view, for Refresh
	lastProblems  []model.Problem
}

// NewPublisher returns a Publisher writing to cache.
func NewPublisher(cache cachev3.SnapshotCache, s model.Settings, issuer *Issuer, m *Metrics, log logrus.FieldLogger) *Publisher {
	return &Publisher{
		cache: cache, settings: s, issuer: issuer, metrics: m, log: log,
		fingerprint: map[string]uint64{}, versions: map[string]map[string]string{}, counts: map[string]map[string]int{},
		served: map[string]translator.Resources{}, setAt: map[string]time.Time{}, problems: map[string]bool{},
	}
}

// UpdateStats says what one update did.
type UpdateStats struct {
	Translated, Pushed, Removed int
}

// Update translates objs and sets the snapshots that changed. Objects the
// model rejects are logged (once each) and counted, never fatal.
func (p *Publisher) Update(ctx context.Context, objs model.Objects, inputProblems []model.Problem) UpdateStats {
	start := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	cluster, problems := model.Build(objs, p.settings)
	p.reportProblems(append(inputProblems, problems...))
	p.metrics.observeObjects(objs)
	p.cluster, p.lastObjects, p.lastProblems = cluster, objs, inputProblems
	tr := translator.New(&p.cluster, p.settings)

	var st UpdateStats
	if fp := tr.APIServerFingerprint(); !p.apiserverDone || fp != p.apiserverFP || p.issuer.NeedsRenewal(p.settings.APIServerProxyName) {
		if p.publish(ctx, Proxy{Role: translator.RoleAPIServer}, tr.APIServerProxy()) {
			st.Pushed++
		}
		st.Translated++
		p.apiserverFP, p.apiserverDone = fp, true
	}
	shared := sharedFingerprint(&p.cluster)
	seen := map[string]bool{}
	for i := range p.cluster.Nodes {
		n := &p.cluster.Nodes[i]
		seen[n.Name] = true
		fp := nodeFingerprint(n, p.cluster.PodsOn(n.Name), shared)
		if old, ok := p.fingerprint[n.Name]; ok && old == fp && !p.issuer.NeedsRenewal(n.Name) {
			continue
		}
		res, err := tr.NodeProxy(n.Name)
		if err != nil {
			p.log.WithError(err).WithField("node", n.Name).Error("translate node proxy")
			continue
		}
		st.Translated++
		if p.publish(ctx, Proxy{Role: translator.RoleNode, Node: n.Name}, res) {
			st.Pushed++
		}
		p.fingerprint[n.Name] = fp
	}
	for name := range p.fingerprint {
		if !seen[name] {
			key := Proxy{Role: translator.RoleNode, Node: name}.Key()
			p.cache.ClearSnapshot(key)
			delete(p.fingerprint, name)
			delete(p.versions, key)
			delete(p.counts, key)
			delete(p.setAt, key)
			delete(p.served, key)
			st.Removed++
			p.log.WithField("node", name).Info("node gone: its proxy's snapshot is cleared")
		}
	}
	p.synced = true
	p.metrics.translationSeconds.Observe(time.Since(start).Seconds())
	p.log.WithFields(logrus.Fields{"translated": st.Translated, "pushed": st.Pushed, "removed": st.Removed,
		"nodes": len(p.cluster.Nodes), "pods": len(p.cluster.Pods), "took": time.Since(start).Round(time.Microsecond)}).Debug("update applied")
	return st
}

// Refresh re-applies the last view: proxies whose certificates are due get
// new ones; nothing else is pushed (unchanged content, unchanged versions).
func (p *Publisher) Refresh(ctx context.Context) {
	p.mu.Lock()
	objs, problems, synced := p.lastObjects, p.lastProblems, p.synced
	p.mu.Unlock()
	if synced {
		p.Update(ctx, objs, problems)
	}
}

// publish sets key's snapshot when some type's version changed; it reports
// whether it did.
func (p *Publisher) publish(ctx context.Context, proxy Proxy, res translator.Resources) bool {
	key := proxy.Key()
	certName := p.settings.APIServerProxyName
	if proxy.Role == translator.RoleNode {
		certName = proxy.Node
	}
	cert, err := p.issuer.Certificate(certName)
	if err != nil {
		p.log.WithError(err).WithField("proxy", key).Error("no tunnel certificate: keeping the last snapshot")
		return false
	}
	secrets := translator.Secrets(p.settings, proxy.Role, cert.CertPEM, cert.KeyPEM, p.issuer.CAPEM())
	byType := map[string][]types.Resource{
		resourcev3.ListenerType: toResources(res.Listeners),
		resourcev3.RouteType:    toResources(res.Routes),
		resourcev3.ClusterType:  toResources(res.Clusters),
		resourcev3.EndpointType: toResources(res.Endpoints),
		resourcev3.SecretType:   toResources(secrets),
	}
	snap := &cachev3.Snapshot{}
	versions, counts := map[string]string{}, map[string]int{}
	changed := false
	for typeURL, items := range byType {
		v := translator.ContentHash(items)
		versions[typeURL], counts[typeURL] = v, len(items)
		if p.versions[key][typeURL] != v {
			changed = true
		}
		snap.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(v, items)
	}
	p.served[key] = res
	if !changed {
		return false
	}
	if err := snap.Consistent(); err != nil {
		p.log.WithError(err).WithField("proxy", key).Error("inconsistent snapshot (a spoke bug): keeping the last one")
		return false
	}
	if err := p.cache.SetSnapshot(ctx, key, snap); err != nil {
		p.log.WithError(err).WithField("proxy", key).Error("set snapshot")
		return false
	}
	p.versions[key], p.counts[key] = versions, counts
	p.setAt[key] = time.Now()
	return true
}

// Served returns what the server serves proxy (secrets excluded) and its versions.
func (p *Publisher) Served(proxy Proxy) (translator.Resources, map[string]string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	res, ok := p.served[proxy.Key()]
	return res, p.versions[proxy.Key()], ok
}

// Versions returns the current version and resource count of each type for a
// snapshot key.
func (p *Publisher) Versions(key string) (versions map[string]string, counts map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.versions[key], p.counts[key]
}

// SetAt returns when key's current snapshot was set (for push latency).
func (p *Publisher) SetAt(key string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.setAt[key]
}

// KnowsNode reports whether node is in the current model.
func (p *Publisher) KnowsNode(node string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.cluster.Node(node)
	return ok
}

// Synced reports whether a first full update has been applied.
func (p *Publisher) Synced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.synced
}

func (p *Publisher) reportProblems(problems []model.Problem) {
	current := map[string]bool{}
	for _, pr := range problems {
		s := pr.String()
		current[s] = true
		if !p.problems[s] {
			p.log.WithField("object", pr.Object).Warn(pr.Message)
		}
	}
	p.problems = current
	p.metrics.skippedObjects.Set(float64(len(problems)))
}

func toResources[T types.Resource](items []T) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}

// sharedFingerprint hashes the inputs every node proxy shares.
func sharedFingerprint(c *model.Cluster) uint64 {
	h := fnv.New64a()
	for _, s := range c.Services {
		fmt.Fprint(h, s.Namespace, "/", s.Name, s.ClusterIPs, s.Ports, ";")
	}
	for _, ep := range c.APIServerEndpoints {
		fmt.Fprint(h, ep.Addr, ep.Port, ";")
	}
	return h.Sum64()
}

// nodeFingerprint hashes everything a node proxy's config depends on.
func nodeFingerprint(n *model.Node, pods []model.Pod, shared uint64) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], shared)
	h.Write(buf[:])
	h.Write([]byte(n.Name))
	for _, ip := range n.IPs {
		h.Write(ip.Addr.AsSlice())
	}
	names := append([]string(nil), n.HostNames...)
	sort.Strings(names)
	for _, name := range names {
		h.Write([]byte(name + ","))
	}
	binary.BigEndian.PutUint64(buf[:], uint64(n.KubeletPort))
	h.Write(buf[:])
	for _, pod := range pods {
		h.Write([]byte(pod.Namespace + "/" + pod.Name))
		for _, ip := range pod.IPs {
			h.Write(ip.AsSlice())
		}
	}
	return h.Sum64()
}
