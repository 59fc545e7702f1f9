package xds

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/pki"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// Publisher turns the store's changes into per-proxy snapshots. Only the
// node proxies the store names as changed are re-translated, the apiserver
// proxy only when translator.APIServerAffected says its routes may have
// changed (and its route plan really did), and a type is pushed only when its
// content hash changed: a pod change reaches only its node's Envoy.
type Publisher struct {
	cache    cachev3.SnapshotCache
	store    *model.Store
	settings model.Settings
	issuer   *pki.Issuer
	metrics  *metrics.Metrics
	log      logrus.FieldLogger

	mu           sync.Mutex
	shared       model.Cluster          // Services, apiserver endpoints, Service ranges
	base         *translator.Translator // over shared: the Services vhost is built once
	nodeSharedFP string                 // base's NodeSharedFingerprint
	prefixes     map[string][]netip.Prefix
	apiserverFP  uint64 // hash of the apiserver proxy's route plan
	// apiserverLast is the last apiserver proxy translation; a change that
	// leaves its node part alone (apiserverNodesDirty false) reuses it.
	apiserverLast       *translator.Translator
	apiserverNodesDirty bool
	apiserverDone       bool
	apiserverDirty      bool                       // its routes may have changed; not yet re-translated
	backlog             map[string]bool            // node names waiting for a change that concerns all
	published           map[string]*publishedState // snapshot key -> what it was last sent
	problems            map[string]bool
	lastProblems        []model.Problem
	synced              bool
}

// publishedState is what one proxy's snapshot holds.
type publishedState struct {
	res      translator.Resources       // secrets by name only
	versions map[string]string          // type URL -> version (content hash)
	counts   map[string]int             // type URL -> resources
	names    map[string]map[string]bool // type URL -> resource names
	setAt    time.Time                  // for push latency
}

// NewPublisher returns a Publisher reading store and writing to cache.
func NewPublisher(cache cachev3.SnapshotCache, store *model.Store, s model.Settings, issuer *pki.Issuer, m *metrics.Metrics, log logrus.FieldLogger) *Publisher {
	return &Publisher{
		cache: cache, store: store, settings: s, issuer: issuer, metrics: m, log: log,
		backlog: map[string]bool{}, published: map[string]*publishedState{}, problems: map[string]bool{},
	}
}

// UpdateStats says what one update did.
type UpdateStats struct {
	Translated, Pushed, Removed int
	// Backlog is how many node proxies still wait for a Services/endpoints
	// change (or the first load): call Apply again.
	Backlog int
}

// BacklogChunk bounds the work of one Apply beyond the node proxies whose
// own inputs changed: that many node proxies waiting for a change that
// concerns all of them (apiserver endpoints, Service ranges, Services
// outside every range), or the apiserver
// proxy, which costs about as much. Re-translating all 5,000 node proxies
// takes ~0.8 s; a pod change arriving meanwhile waits for one chunk only.
const BacklogChunk = 250

// Apply publishes what changed in the store since the last Apply: first the
// node proxies whose own inputs changed, then either the apiserver proxy (if
// its routes may have changed) or up to BacklogChunk node proxies of the
// backlog. UpdateStats.Backlog says whether to call again. Objects the model
// rejects are logged (once each) and counted, never fatal.
func (p *Publisher) Apply(ctx context.Context) UpdateStats {
	start := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := p.store.TakeChanges()
	var st UpdateStats
	if ch.Empty() && len(p.backlog) == 0 && !p.apiserverDirty {
		return st
	}
	p.reportProblems(p.store.Problems())
	p.metrics.ObserveObjects(p.store.ObjectCounts())
	p.takeChanges(ch)
	for _, name := range slices.Sorted(maps.Keys(ch.Nodes)) {
		p.publishNode(ctx, name, &st)
		delete(p.backlog, name)
	}
	budget := BacklogChunk
	if p.apiserverDirty {
		p.publishAPIServer(ctx, false, &st)
		p.apiserverDirty, budget = false, 0
	}
	for _, name := range slices.Sorted(maps.Keys(p.backlog)) {
		if budget == 0 {
			break
		}
		p.publishNode(ctx, name, &st)
		delete(p.backlog, name)
		budget--
	}
	st.Backlog = len(p.backlog)
	p.synced = p.synced || len(p.backlog) == 0 // ready once every proxy has its first config
	p.metrics.TranslationSeconds.Observe(time.Since(start).Seconds())
	p.log.WithFields(logrus.Fields{"translated": st.Translated, "pushed": st.Pushed, "removed": st.Removed,
		"backlog": st.Backlog, "took": time.Since(start).Round(time.Microsecond)}).Debug("update applied")
	return st
}

// takeChanges records what ch means for the work ahead: a new shared
// translator when Services, endpoints or Service ranges changed, and every
// node proxy in the backlog when that changes what they share (a Service
// inside a Service range does not), the apiserver proxy when its routes may
// have changed.
func (p *Publisher) takeChanges(ch model.Changes) {
	sharedChanged := false
	if ch.Shared || p.base == nil {
		p.shared = p.store.Shared()
		p.base = translator.New(&p.shared, p.settings)
		fp := p.base.NodeSharedFingerprint()
		sharedChanged, p.nodeSharedFP = fp != p.nodeSharedFP, fp
	}
	if sharedChanged || ch.Initial {
		for _, name := range p.store.NodeNames() {
			p.backlog[name] = true
		}
		for _, name := range p.publishedNodes() {
			p.backlog[name] = true
		}
	}
	if translator.APIServerAffected(ch, p.prefixes) || !p.apiserverDone {
		p.apiserverDirty = true
	}
	if translator.APIServerNodesAffected(ch, p.prefixes) {
		p.apiserverNodesDirty = true
	}
	if ch.NodeSet || p.prefixes == nil {
		nodesOnly := p.store.Cluster(false)
		p.prefixes = translator.RoutablePodPrefixes(&nodesOnly, p.settings)
	}
}

// publishNode translates one node proxy from the store, or clears its
// snapshot when the node is gone (or no longer routable).
func (p *Publisher) publishNode(ctx context.Context, name string, st *UpdateStats) {
	node, pods, ok := p.store.NodeView(name)
	key := auth.Proxy{Role: translator.RoleNode, Node: name}.Key()
	if !ok {
		if p.published[key] != nil {
			p.cache.ClearSnapshot(key)
			delete(p.published, key)
			st.Removed++
			p.log.WithField("node", name).Info("node gone: its proxy's snapshot is cleared")
		}
		return
	}
	st.Translated++
	if p.publish(ctx, auth.Proxy{Role: translator.RoleNode, Node: name}, p.base.NodeProxyOf(&node, pods)) {
		st.Pushed++
	}
}

// publishAPIServer re-translates the apiserver proxy when its route plan
// changed (or force: its certificate is due).
func (p *Publisher) publishAPIServer(ctx context.Context, force bool, st *UpdateStats) {
	var tr *translator.Translator
	if p.apiserverNodesDirty || p.apiserverLast == nil {
		full := p.store.ClusterWith(func(pod model.Pod) bool { return !translator.PodCovered(p.prefixes[pod.NodeName], pod) })
		tr = translator.New(&full, p.settings)
	} else { // Services only: O(Services), the node part is the last one's
		shared := p.shared
		tr = translator.New(&shared, p.settings)
		tr.ReuseNodeTargets(p.apiserverLast)
	}
	p.apiserverLast, p.apiserverNodesDirty = tr, false
	fp := tr.APIServerFingerprint()
	if p.apiserverDone && fp == p.apiserverFP && !force {
		return
	}
	st.Translated++
	if p.publish(ctx, auth.Proxy{Role: translator.RoleAPIServer}, tr.APIServerProxy()) {
		st.Pushed++
	}
	p.apiserverFP, p.apiserverDone = fp, true
}

// Refresh re-publishes the proxies whose tunnel certificates are due (new
// certificates; nothing else changes, so only secrets are pushed). After the
// tunnel CA changed (pki.Issuer.Reload) every certificate is due.
func (p *Publisher) Refresh(ctx context.Context) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.synced {
		return
	}
	var st UpdateStats
	for _, name := range p.publishedNodes() {
		if p.issuer.NeedsRenewal(name) {
			p.publishNode(ctx, name, &st)
		}
	}
	if p.issuer.NeedsRenewal(p.settings.APIServerProxyName) {
		p.publishAPIServer(ctx, true, &st)
	}
	if st.Pushed > 0 {
		p.log.WithField("proxies", st.Pushed).Info("tunnel certificates renewed")
	}
}

// publish sets key's snapshot when some type's version changed; it reports
// whether it did.
func (p *Publisher) publish(ctx context.Context, proxy auth.Proxy, res translator.Resources) bool {
	key := proxy.Key()
	certificate := func() (pki.Certificate, error) { return p.issuer.Certificate(p.settings.APIServerProxyName) }
	if proxy.Role == translator.RoleNode {
		certificate = func() (pki.Certificate, error) { return p.issuer.NodeCertificate(proxy.Node) }
	}
	cert, err := certificate()
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
	next := &publishedState{res: res, versions: map[string]string{}, counts: map[string]int{}, names: map[string]map[string]bool{}}
	changed := p.published[key] == nil
	versions := translator.TypeVersions(res)
	for typeURL, items := range byType {
		v := versions.Of(typeURL)
		if v == "" { // the secrets: their hash covers the key material
			v = translator.ContentHash(items)
		}
		next.versions[typeURL], next.counts[typeURL] = v, len(items)
		next.names[typeURL] = map[string]bool{}
		for _, item := range items {
			next.names[typeURL][cachev3.GetResourceName(item)] = true
		}
		if !changed && p.published[key].versions[typeURL] != v {
			changed = true
		}
		snap.Resources[cachev3.GetResponseType(typeURL)] = cachev3.NewResources(v, items)
	}
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
	next.setAt = time.Now()
	p.published[key] = next
	return true
}

// publishedNodes lists the nodes whose proxies have a snapshot, sorted.
func (p *Publisher) publishedNodes() []string {
	var names []string
	for key := range p.published {
		if name, ok := strings.CutPrefix(key, "node/"); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// Served returns what the server serves proxy (secrets excluded) and its versions.
func (p *Publisher) Served(proxy auth.Proxy) (translator.Resources, map[string]string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.published[proxy.Key()]
	if !ok {
		return translator.Resources{}, nil, false
	}
	return st.res, st.versions, true
}

// Proxies returns the snapshot keys, sorted: every proxy the server has a
// config for, connected or not.
func (p *Publisher) Proxies() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.published))
}

// ServedSecrets returns the SDS secrets proxy's snapshot holds, by name.
func (p *Publisher) ServedSecrets(proxy auth.Proxy) []*tlsv3.Secret {
	snap, err := p.cache.GetSnapshot(proxy.Key())
	if err != nil {
		return nil
	}
	items := snap.GetResources(resourcev3.SecretType)
	var secrets []*tlsv3.Secret
	for _, name := range slices.Sorted(maps.Keys(items)) {
		if s, ok := items[name].(*tlsv3.Secret); ok {
			secrets = append(secrets, s)
		}
	}
	return secrets
}

// ResourceNames returns the names of the resources of typeURL that key's
// snapshot holds.
func (p *Publisher) ResourceNames(key, typeURL string) map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.published[key]; ok {
		return st.names[typeURL]
	}
	return nil
}

// Versions returns the current version and resource count of each type for a
// snapshot key.
func (p *Publisher) Versions(key string) (versions map[string]string, counts map[string]int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.published[key]; ok {
		return st.versions, st.counts
	}
	return nil, nil
}

// ResourceHashes gives the delta xDS version go-control-plane assigns each
// typeURL resource of key's snapshot (the hash of its deterministic
// encoding), so status can tell a resuming delta Envoy holds them all.
func (p *Publisher) ResourceHashes(key, typeURL string) map[string]string {
	snap, err := p.cache.GetSnapshot(key)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for name, r := range snap.GetResources(typeURL) {
		raw, err := cachev3.MarshalResource(r)
		if err != nil {
			return nil
		}
		out[name] = cachev3.HashResource(raw)
	}
	return out
}

// SnapshotResources returns key's current typeURL resources and their
// version, as the snapshot holds them (status compares them with what an
// Envoy ACKed; nothing may change them).
func (p *Publisher) SnapshotResources(key, typeURL string) (string, map[string]proto.Message) {
	snap, err := p.cache.GetSnapshot(key)
	if err != nil {
		return "", nil
	}
	items := snap.GetResources(typeURL)
	out := make(map[string]proto.Message, len(items))
	for name, r := range items {
		out[name] = r
	}
	return snap.GetVersion(typeURL), out
}

// SetAt returns when key's current snapshot was set (for push latency).
func (p *Publisher) SetAt(key string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.published[key]; ok {
		return st.setAt
	}
	return time.Time{}
}

// KnowsNode reports whether node is in the current model.
func (p *Publisher) KnowsNode(node string) bool {
	_, _, ok := p.store.NodeView(node)
	return ok
}

// Synced reports whether a first full update has been applied.
func (p *Publisher) Synced() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.synced
}

// reportProblems logs each problem once, when it appears, and keeps the
// current ones for the debug API.
func (p *Publisher) reportProblems(problems []model.Problem) {
	current := map[string]bool{}
	refused := 0
	for _, pr := range problems {
		s := pr.String()
		current[s] = true
		if !p.problems[s] {
			p.log.WithField("object", pr.Object).Warn(pr.Message)
		}
		if pr.Kind == model.KindPodAddress {
			refused++
		}
	}
	p.problems, p.lastProblems = current, problems
	p.metrics.SkippedObjects.Set(float64(len(problems)))
	p.metrics.RefusedPodAddrs.Set(float64(refused))
}

// Problems returns what the last update left out of the config, and why.
func (p *Publisher) Problems() []model.Problem {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastProblems
}

func toResources[T types.Resource](items []T) []types.Resource {
	out := make([]types.Resource, len(items))
	for i, it := range items {
		out[i] = it
	}
	return out
}
