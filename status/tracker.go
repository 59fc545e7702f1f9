// Package status knows what each connected Envoy has: it implements
// go-control-plane's server callbacks to authenticate every ADS stream (with
// auth), hold the Envoy to that identity, and record per resource type the
// version sent, the version ACKed and the last NACK. It joins that with what
// the server publishes into the rows of `spoke status`, and serves the debug
// API.
//
// status reads the published config through the Published interface; it
// never imports the xDS server, its cache, or a source.
package status

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/metrics"
	"github.com/spokeproxy/spoke/translator"
)

// TypeStatus is what one Envoy has of one resource type.
type TypeStatus struct {
	Sent      string    `json:"sent"`
	Acked     string    `json:"acked"`
	LastNack  string    `json:"lastNack,omitempty"`
	NackedAt  time.Time `json:"nackedAt,omitempty"`
	NackedVer string    `json:"nackedVersion,omitempty"`

	nackLog nackLog   // paces this type's NACK log lines
	held    heldState // what the Envoy holds, resource by resource (Diff)
	// changeAt is when the change behind the last response was made, if it
	// was made while this Envoy was connected: its ACK stops that clock
	// (spoke_xds_push_latency_seconds).
	changeAt time.Time
}

// StreamStatus is one connected Envoy.
type StreamStatus struct {
	Stream    int64                  `json:"stream"`
	Proxy     string                 `json:"proxy"`
	EnvoyID   string                 `json:"envoyID"`
	Delta     bool                   `json:"delta"`
	Connected time.Time              `json:"connectedSince"`
	Types     map[string]*TypeStatus `json:"types"`
	// Authenticated says how the identity was established (certificate
	// subject, local socket, or insecure plaintext).
	Authenticated string `json:"authenticated"`

	identity auth.Identity
	refused  map[string]bool // resource names already reported as refused
	node     *corev3.Node    // as the Envoy sent it, less its extension list
}

// nackLog paces the log lines of one stream's NACKs of one type: an Envoy
// (or a client with a node's certificate) may send thousands a second.
type nackLog struct {
	at     time.Time // last line
	unseen int       // NACKs since, not logged
}

// Tracker implements go-control-plane's server callbacks: it authenticates
// each stream from its connection, holds the Envoy to that identity (a node
// id or role that differs is refused), refuses requests for resources the
// Envoy's config does not hold, and records per type the version sent, the
// version ACKed and the last NACK with Envoy's message.
type Tracker struct {
	published Published
	metrics   *metrics.Metrics
	log       logrus.FieldLogger

	mu      sync.Mutex
	streams map[streamKey]*StreamStatus
	nonces  map[streamKey]map[string]string // delta: stream -> nonce -> version
}

// streamKey names a stream: go-control-plane numbers SotW and delta streams
// with separate counters, so an id alone is ambiguous.
type streamKey struct {
	delta bool
	id    int64
}

// Published is what the tracker and the debug API read of the config the
// server publishes, per snapshot key (auth.Proxy.Key).
type Published interface {
	// KnowsNode reports whether node is in the current model.
	KnowsNode(node string) bool
	// ResourceNames lists the names of typeURL resources key's snapshot holds.
	ResourceNames(key, typeURL string) map[string]bool
	// ResourceHashes gives the delta xDS version (go-control-plane's hash) of
	// each typeURL resource key's snapshot holds.
	ResourceHashes(key, typeURL string) map[string]string
	// SetAt is when key's current snapshot was set (for push latency).
	SetAt(key string) time.Time
	// Versions gives the current version and resource count per type.
	Versions(key string) (versions map[string]string, counts map[string]int)
	// Served is what proxy is served (secrets by name only) and its versions.
	Served(proxy auth.Proxy) (translator.Resources, map[string]string, bool)
	// Proxies are the snapshot keys served (apiserver, node/NAME), sorted.
	Proxies() []string
	// ServedSecrets are the SDS secrets proxy is served, with key material:
	// for describing their certificates only.
	ServedSecrets(proxy auth.Proxy) []*tlsv3.Secret
	// SnapshotResources are key's current typeURL resources, by name, and
	// their version: the very protos served (never to be changed), with
	// key material, for comparing with what an Envoy holds only.
	SnapshotResources(key, typeURL string) (string, map[string]proto.Message)
}

// NewTracker returns a Tracker reading p.
func NewTracker(p Published, m *metrics.Metrics, log logrus.FieldLogger) *Tracker {
	// Every series whose label values status defines exists from the
	// start, at zero: alerts and dashboards can use rate() before the first
	// event.
	for typeURL := range servedTypes {
		m.Nacks.WithLabelValues(TypeLabel(typeURL))
		m.Pushes.WithLabelValues(shortType(typeURL))
		m.PushLatency.WithLabelValues(shortType(typeURL))
	}
	m.Nacks.WithLabelValues(TypeLabel(""))
	for _, role := range []translator.Role{translator.RoleAPIServer, translator.RoleNode} {
		m.Connected.WithLabelValues(string(role))
	}
	for _, class := range RefusalClasses {
		m.TunnelRefusals.WithLabelValues(class)
	}
	return &Tracker{published: p, metrics: m, log: log, streams: map[streamKey]*StreamStatus{}, nonces: map[streamKey]map[string]string{}}
}

// Status returns every connected Envoy, sorted by proxy then stream.
func (t *Tracker) Status() []StreamStatus {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]StreamStatus, 0, len(t.streams))
	for _, s := range t.streams {
		if s.Proxy == "" {
			continue
		}
		cp := *s
		cp.Types = map[string]*TypeStatus{}
		for k, v := range s.Types {
			v := *v
			cp.Types[k] = &v
		}
		out = append(out, cp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Proxy != out[j].Proxy {
			return out[i].Proxy < out[j].Proxy
		}
		if out[i].Delta != out[j].Delta {
			return !out[i].Delta
		}
		return out[i].Stream < out[j].Stream
	})
	return out
}

func (t *Tracker) open(ctx context.Context, k streamKey) error {
	t.metrics.StreamsOpened.Inc()
	id, err := auth.Authenticate(ctx)
	if err != nil {
		t.metrics.Denied.WithLabelValues(metrics.DeniedUnauthenticated).Inc()
		t.log.WithError(err).WithField("stream", k.id).Error("refusing unauthenticated xDS stream")
		return grpcstatus.Error(codes.Unauthenticated, err.Error())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[k] = &StreamStatus{Stream: k.id, Delta: k.delta, Connected: time.Now(), Types: map[string]*TypeStatus{},
		Authenticated: id.Subject, identity: id, refused: map[string]bool{}}
	return nil
}

func (t *Tracker) closed(k streamKey) {
	t.metrics.StreamsClosed.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[k]; ok && s.Proxy != "" {
		t.metrics.Connected.WithLabelValues(roleOf(s.Proxy)).Dec()
		t.flushNackLogs(s)
		t.log.WithFields(logrus.Fields{"stream": k.id, "delta": k.delta, "proxy": s.Proxy}).Info("Envoy disconnected")
	}
	delete(t.streams, k)
	delete(t.nonces, k)
}

// identify checks every request that names a node against the stream's
// identity, and binds the stream to its proxy on the first one. An Envoy
// claiming another node or role than its credentials say is refused and the
// stream closed: the snapshot key derives from the claim, so it must never
// differ from the identity.
func (t *Tracker) identify(k streamKey, node *corev3.Node) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[k]
	if !ok || node == nil {
		return nil
	}
	claimed, err := auth.ProxyOf(node)
	if err != nil {
		t.metrics.Denied.WithLabelValues(metrics.DeniedNoRole).Inc()
		t.log.WithError(err).WithFields(logrus.Fields{"stream": k.id, "authenticated": s.Authenticated}).Error("refusing xDS stream")
		return grpcstatus.Error(codes.PermissionDenied, err.Error())
	}
	want := s.identity.Proxy
	if s.identity.Insecure {
		want = claimed // plaintext development mode: the claim is all there is
	}
	if s.Proxy != "" && s.Proxy != want.Key() {
		want = auth.Proxy{} // an identity never changes within a stream
	}
	if claimed != want {
		t.metrics.Denied.WithLabelValues(metrics.DeniedIdentityMismatch).Inc()
		t.log.WithFields(logrus.Fields{"stream": k.id, "claims": claimed.Key(), "envoy": node.GetId(), "authenticated": s.Authenticated}).
			Error("refusing xDS stream: the Envoy claims another node or role than its credentials prove")
		return grpcstatus.Errorf(codes.PermissionDenied, "node %q (%s) does not match the authenticated identity (%s)", node.GetId(), node.GetCluster(), s.Authenticated)
	}
	if s.Proxy != "" {
		return nil
	}
	s.Proxy, s.EnvoyID = claimed.Key(), node.GetId()
	// What the bootstrap view shows, not the extension list: hundreds of
	// entries per Envoy, cloned for nothing (Envoy's /server_info has them).
	// Shared with the request, which nothing changes.
	s.node = &corev3.Node{Id: node.GetId(), Cluster: node.GetCluster(), Metadata: node.GetMetadata(), Locality: node.GetLocality(),
		UserAgentName: node.GetUserAgentName(), UserAgentVersionType: node.UserAgentVersionType, ClientFeatures: node.GetClientFeatures()}
	t.metrics.Connected.WithLabelValues(string(claimed.Role)).Inc()
	fields := logrus.Fields{"stream": k.id, "proxy": s.Proxy, "envoy": node.GetId(), "delta": s.Delta, "authenticated": s.Authenticated}
	if claimed.Node != "" && !t.published.KnowsNode(claimed.Node) {
		t.log.WithFields(fields).Error("Envoy names a node that is not in the cluster: it gets no config until that node appears")
		return nil
	}
	t.log.WithFields(fields).Info("Envoy connected")
	return nil
}

// rememberedRefusals bounds the refused names a stream's record keeps, so a
// request naming millions of resources cannot grow the server's memory.
// Beyond it, refused names are counted every time they are asked for.
const rememberedRefusals = 10000

// checkNames reports requested resources that are not in the Envoy's
// config: they are never served (the snapshot is the authenticated proxy's),
// but asking is counted once per name and stream, and logged in one line per
// request that names new ones (a request naming 100,000 names must not
// write 100,000 log lines).
func (t *Tracker) checkNames(k streamKey, typeURL string, names []string) {
	if len(names) == 0 {
		return
	}
	t.mu.Lock()
	s, ok := t.streams[k]
	if !ok || s.Proxy == "" {
		t.mu.Unlock()
		return
	}
	proxy := s.Proxy
	t.mu.Unlock()
	allowed := t.published.ResourceNames(proxy, typeURL)
	var refused []string
	t.mu.Lock()
	for _, name := range names {
		key := typeURL + "/" + name
		if allowed[name] || name == "*" || s.refused[key] {
			continue
		}
		if len(s.refused) < rememberedRefusals {
			s.refused[key] = true
		}
		refused = append(refused, name)
	}
	t.mu.Unlock()
	if len(refused) == 0 {
		return
	}
	t.metrics.Denied.WithLabelValues(metrics.DeniedResourceNotAllowed).Add(float64(len(refused)))
	t.log.WithFields(logrus.Fields{"proxy": proxy, "type": TypeLabel(typeURL), "refused": len(refused),
		"first": refused[:min(len(refused), 3)], "authenticated": s.Authenticated}).
		Warn("refused: the Envoy asked for resources that are not in its config")
}

func (t *Tracker) typeStatus(k streamKey, typeURL string) (*StreamStatus, *TypeStatus) {
	s, ok := t.streams[k]
	if !ok {
		return nil, nil
	}
	ts, ok := s.Types[typeURL] // served types only: servedType refused the rest
	if !ok {
		ts = &TypeStatus{}
		s.Types[typeURL] = ts
	}
	return s, ts
}

// request records an ACK (a request carrying the nonce of a response and no
// error) or a NACK (error_detail set; Envoy keeps its last good config). A
// SotW request without a nonce but with a version opens a new stream of an
// Envoy that already runs that version (it moved from another server, or
// this one restarted): that is what it holds until it ACKs another.
func (t *Tracker) request(k streamKey, typeURL, nonce, version string, errDetail *grpcstatus.Status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ts := t.typeStatus(k, typeURL)
	if s == nil {
		return
	}
	if nonce == "" {
		if !k.delta && version != "" && ts.Acked == "" {
			ts.Acked = version
		}
		return
	}
	if errDetail != nil {
		ts.LastNack, ts.NackedAt, ts.NackedVer = CutDetail(errDetail.Message()), time.Now(), ts.Sent
		ts.changeAt = time.Time{} // refused: no push completed
		t.metrics.Nacks.WithLabelValues(TypeLabel(typeURL)).Inc()
		t.logNack(s, typeURL, ts)
		return
	}
	ts.Acked = version
	if !ts.changeAt.IsZero() {
		t.metrics.PushLatency.WithLabelValues(shortType(typeURL)).Observe(time.Since(ts.changeAt).Seconds())
		ts.changeAt = time.Time{}
	}
}

// servedType refuses a request for a type spoke does not serve and closes
// its stream: go-control-plane would keep a watch per type URL, so a client
// naming thousands of made-up types would grow the server without bound.
// Envoy asks only for the types its config names, all served.
func (t *Tracker) servedType(k streamKey, typeURL string, nack bool) error {
	if servedTypes[typeURL] {
		return nil
	}
	if nack {
		t.metrics.Nacks.WithLabelValues(TypeLabel(typeURL)).Inc()
	}
	t.metrics.Denied.WithLabelValues(metrics.DeniedUnknownType).Inc()
	t.mu.Lock()
	proxy := ""
	if s, ok := t.streams[k]; ok {
		proxy = s.Proxy
	}
	t.mu.Unlock()
	t.log.WithFields(logrus.Fields{"proxy": proxy, "type": CutDetail(typeURL)}).Warn("refused: the client asked for a resource type spoke does not serve; its stream is closed")
	return grpcstatus.Errorf(codes.InvalidArgument, "resource type %.200q is not served by spoke (it serves listeners, routes, clusters, endpoints and secrets)", typeURL)
}

// nackLogInterval paces NACK log lines: the first NACK of a type on a
// stream is logged, then at most one line with a count per interval.
const nackLogInterval = 5 * time.Second

// logNack logs ts's last NACK, or counts it for the next line (t.mu held).
func (t *Tracker) logNack(s *StreamStatus, typeURL string, ts *TypeStatus) {
	ts.nackLog.unseen++
	if at := ts.nackLog.at; !at.IsZero() && time.Since(at) < nackLogInterval {
		return
	}
	t.writeNackLog(s, typeURL, ts)
}

// writeNackLog writes ts's NACK line: the NACK, or how many came since the
// last line and the latest message.
func (t *Tracker) writeNackLog(s *StreamStatus, typeURL string, ts *TypeStatus) {
	l := &ts.nackLog
	entry := t.log.WithFields(logrus.Fields{"proxy": s.Proxy, "envoy": s.EnvoyID, "type": TypeLabel(typeURL), "rejected": ts.Sent, "keeps": ts.Acked})
	if l.at.IsZero() {
		entry.Error("Envoy NACKed config: " + ts.LastNack)
	} else {
		entry.WithField("nacks", l.unseen).Error(fmt.Sprintf("Envoy NACKed config %d more times since %s; the last: %s", l.unseen, l.at.Format(time.RFC3339), ts.LastNack))
	}
	l.at, l.unseen = time.Now(), 0
}

// flushNackLogs writes the count of NACKs not logged yet (t.mu held).
func (t *Tracker) flushNackLogs(s *StreamStatus) {
	for typeURL, ts := range s.Types {
		if ts.nackLog.unseen > 0 {
			t.writeNackLog(s, typeURL, ts)
		}
	}
}

// resumed records what a delta Envoy declares it holds on a new stream (it
// moved from another server, or this one restarted): when that is every
// resource of the type as the server holds it now, the server sends
// nothing and the Envoy runs the current version.
func (t *Tracker) resumed(k streamKey, typeURL string, held map[string]string) {
	t.mu.Lock()
	s, ts := t.typeStatus(k, typeURL)
	if s == nil || s.Proxy == "" || ts.Acked != "" {
		t.mu.Unlock()
		return
	}
	proxy := s.Proxy
	t.mu.Unlock()
	current := t.published.ResourceHashes(proxy, typeURL)
	if len(current) == 0 || !maps.Equal(current, held) {
		return
	}
	versions, _ := t.published.Versions(proxy)
	_, snapshot := t.published.SnapshotResources(proxy, typeURL)
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ts := t.typeStatus(k, typeURL); ts != nil && ts.Acked == "" {
		ts.Acked = versions[typeURL]
		ts.held.resources = snapshot // the same names and hashes: what it holds
	}
}

func (t *Tracker) sent(k streamKey, typeURL string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[k]; ok && s.Types[typeURL] != nil {
		return s.Types[typeURL].Sent
	}
	return ""
}

func (t *Tracker) response(k streamKey, typeURL, version string) {
	t.mu.Lock()
	s, ts := t.typeStatus(k, typeURL)
	if s == nil {
		t.mu.Unlock()
		return
	}
	ts.Sent = version
	proxy, connected := s.Proxy, s.Connected
	t.mu.Unlock()
	t.metrics.Pushes.WithLabelValues(shortType(typeURL)).Inc()
	// A response for a change made while this Envoy was connected starts
	// the change -> ACK clock; one sent because it (re)connected does not:
	// its snapshot may be hours old.
	at := t.published.SetAt(proxy)
	if !at.After(connected) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ts := t.typeStatus(k, typeURL); ts != nil && ts.Sent == version {
		ts.changeAt = at
	}
}

// Callbacks returns the go-control-plane server callbacks bound to this
// tracker (serverv3.Callbacks).
func (t *Tracker) Callbacks() Callbacks { return Callbacks{t} }

// Callbacks implements go-control-plane's serverv3.Callbacks for a Tracker.
type Callbacks struct{ t *Tracker }

func (c Callbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.t.open(ctx, streamKey{id: id})
}
func (c Callbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.t.closed(streamKey{id: id}) }
func (c Callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.t.open(ctx, streamKey{delta: true, id: id})
}
func (c Callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.t.closed(streamKey{delta: true, id: id})
}

func (c Callbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	k := streamKey{id: id}
	if err := c.t.identify(k, req.GetNode()); err != nil {
		return err
	}
	if err := c.t.servedType(k, req.GetTypeUrl(), req.GetErrorDetail() != nil); err != nil {
		return err
	}
	c.t.checkNames(k, req.GetTypeUrl(), req.GetResourceNames())
	nack := statusOf(req.GetErrorDetail())
	c.t.request(k, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), nack)
	c.t.heldRequest(k, req)
	if nack != nil {
		// A NACK carries the last version Envoy accepted; go-control-plane's
		// cache would answer it at once with the rejected version again, and
		// Envoy would NACK again, in a loop. Present the rejected version
		// instead, so the next push waits for new content.
		if rejected := c.t.sent(k, req.GetTypeUrl()); rejected != "" {
			req.VersionInfo = rejected
		}
	}
	return nil
}

func (c Callbacks) OnStreamResponse(_ context.Context, id int64, req *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	k := streamKey{id: id}
	c.t.response(k, resp.GetTypeUrl(), resp.GetVersionInfo())
	c.t.heldResponse(k, resp.GetTypeUrl(), resp.GetVersionInfo(), func(snapshot map[string]proto.Message) pendingResponse {
		return pendingResponse{nonce: resp.GetNonce(), resources: sentSet(snapshot, req.GetResourceNames())}
	})
}

func (c Callbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	k := streamKey{delta: true, id: id}
	if err := c.t.identify(k, req.GetNode()); err != nil {
		return err
	}
	if err := c.t.servedType(k, req.GetTypeUrl(), req.GetErrorDetail() != nil); err != nil {
		return err
	}
	c.t.checkNames(k, req.GetTypeUrl(), req.GetResourceNamesSubscribe())
	if req.GetResponseNonce() == "" && len(req.GetInitialResourceVersions()) > 0 {
		c.t.resumed(k, req.GetTypeUrl(), req.GetInitialResourceVersions())
	}
	c.t.mu.Lock()
	version := c.t.nonces[k][req.GetResponseNonce()]
	delete(c.t.nonces[k], req.GetResponseNonce())
	c.t.mu.Unlock()
	c.t.request(k, req.GetTypeUrl(), req.GetResponseNonce(), version, statusOf(req.GetErrorDetail()))
	c.t.heldDeltaRequest(k, req)
	return nil
}

func (c Callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	k := streamKey{delta: true, id: id}
	c.t.mu.Lock()
	if c.t.nonces[k] == nil {
		c.t.nonces[k] = map[string]string{}
	}
	c.t.nonces[k][resp.GetNonce()] = resp.GetSystemVersionInfo()
	c.t.mu.Unlock()
	c.t.response(k, resp.GetTypeUrl(), resp.GetSystemVersionInfo())
	c.t.heldResponse(k, resp.GetTypeUrl(), resp.GetSystemVersionInfo(), func(snapshot map[string]proto.Message) pendingResponse {
		sent := make(map[string]proto.Message, len(resp.GetResources()))
		for _, r := range resp.GetResources() {
			sent[r.GetName()] = snapshot[r.GetName()]
		}
		return pendingResponse{nonce: resp.GetNonce(), resources: sent, removed: resp.GetRemovedResources(), delta: true}
	})
}

func (c Callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return grpcstatus.Error(codes.Unimplemented, "spoke serves ADS streams only")
}
func (c Callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}

func statusOf(s interface {
	GetCode() int32
	GetMessage() string
}) *grpcstatus.Status {
	if s == nil || (s.GetCode() == 0 && s.GetMessage() == "") {
		return nil
	}
	return grpcstatus.New(codes.Code(s.GetCode()), s.GetMessage())
}

func roleOf(key string) string {
	if key == auth.APIServerKey {
		return "apiserver"
	}
	return "node"
}

// servedTypes are the resource types spoke serves: the only ones a stream's
// status keeps, and the only metric labels besides "unknown".
var servedTypes = map[string]bool{
	resourcev3.ListenerType: true, resourcev3.RouteType: true, resourcev3.ClusterType: true,
	resourcev3.EndpointType: true, resourcev3.SecretType: true,
}

// TypeLabel is typeURL's metric and log label: its short name when spoke
// serves it, "unknown" for anything a client made up.
func TypeLabel(typeURL string) string {
	if servedTypes[typeURL] {
		return shortType(typeURL)
	}
	return "unknown"
}

// MaxDetail bounds what is kept and shown of an Envoy's error_detail
// message: a client may send megabytes.
const MaxDetail = 1024

// CutDetail cuts message to MaxDetail bytes (on a character boundary) and
// says how much was left out.
func CutDetail(message string) string {
	if len(message) <= MaxDetail {
		return message
	}
	cut := MaxDetail
	for cut > 0 && !utf8.RuneStart(message[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d more bytes cut)", message[:cut], len(message)-cut)
}

// shortType turns a type URL into a label: "Listener", "Cluster", ...
func shortType(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}
