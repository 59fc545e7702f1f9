package xds

import (
	"context"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TypeStatus is what one Envoy has of one resource type.
type TypeStatus struct {
	Sent      string    `json:"sent"`
	Acked     string    `json:"acked"`
	LastNack  string    `json:"lastNack,omitempty"`
	NackedAt  time.Time `json:"nackedAt,omitempty"`
	NackedVer string    `json:"nackedVersion,omitempty"`
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

	identity Identity
	refused  map[string]bool // resource names already reported as refused
}

// Tracker implements go-control-plane's server callbacks: it authenticates
// each stream from its connection, holds the Envoy to that identity (a node
// id or role that differs is refused), refuses requests for resources the
// Envoy's config does not hold, and records per type the version sent, the
// version ACKed and the last NACK with Envoy's message.
type Tracker struct {
	publisher *Publisher
	metrics   *Metrics
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

// NewTracker returns a Tracker.
func NewTracker(p *Publisher, m *Metrics, log logrus.FieldLogger) *Tracker {
	return &Tracker{publisher: p, metrics: m, log: log, streams: map[streamKey]*StreamStatus{}, nonces: map[streamKey]map[string]string{}}
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
	id, err := authenticate(ctx)
	if err != nil {
		t.metrics.denied.WithLabelValues("unauthenticated").Inc()
		t.log.WithError(err).WithField("stream", k.id).Error("refusing unauthenticated xDS stream")
		return status.Error(codes.Unauthenticated, err.Error())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.streams[k] = &StreamStatus{Stream: k.id, Delta: k.delta, Connected: time.Now(), Types: map[string]*TypeStatus{},
		Authenticated: id.Subject, identity: id, refused: map[string]bool{}}
	return nil
}

func (t *Tracker) closed(k streamKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[k]; ok && s.Proxy != "" {
		t.metrics.connected.WithLabelValues(roleOf(s.Proxy)).Dec()
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
	claimed, err := proxyOf(node)
	if err != nil {
		t.metrics.denied.WithLabelValues("no_role").Inc()
		t.log.WithError(err).WithFields(logrus.Fields{"stream": k.id, "authenticated": s.Authenticated}).Error("refusing xDS stream")
		return status.Error(codes.PermissionDenied, err.Error())
	}
	want := s.identity.Proxy
	if s.identity.Insecure {
		want = claimed // plaintext development mode: the claim is all there is
	}
	if s.Proxy != "" && s.Proxy != want.Key() {
		want = Proxy{} // an identity never changes within a stream
	}
	if claimed != want {
		t.metrics.denied.WithLabelValues("identity_mismatch").Inc()
		t.log.WithFields(logrus.Fields{"stream": k.id, "claims": claimed.Key(), "envoy": node.GetId(), "authenticated": s.Authenticated}).
			Error("refusing xDS stream: the Envoy claims another node or role than its credentials prove")
		return status.Errorf(codes.PermissionDenied, "node %q (%s) does not match the authenticated identity (%s)", node.GetId(), node.GetCluster(), s.Authenticated)
	}
	if s.Proxy != "" {
		return nil
	}
	s.Proxy, s.EnvoyID = claimed.Key(), node.GetId()
	t.metrics.connected.WithLabelValues(string(claimed.Role)).Inc()
	fields := logrus.Fields{"stream": k.id, "proxy": s.Proxy, "envoy": node.GetId(), "delta": s.Delta, "authenticated": s.Authenticated}
	if claimed.Node != "" && !t.publisher.KnowsNode(claimed.Node) {
		t.log.WithFields(fields).Error("Envoy names a node that is not in the cluster: it gets no config until that node appears")
		return nil
	}
	t.log.WithFields(fields).Info("Envoy connected")
	return nil
}

// checkNames reports (once per name and stream) requested resources that
// are not in the Envoy's config: they are never served (the snapshot is the
// authenticated proxy's), but asking is worth a log line and a metric.
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
	allowed := t.publisher.ResourceNames(proxy, typeURL)
	for _, name := range names {
		if allowed[name] || name == "*" {
			continue
		}
		t.mu.Lock()
		first := !s.refused[typeURL+"/"+name]
		s.refused[typeURL+"/"+name] = true
		t.mu.Unlock()
		if first {
			t.metrics.denied.WithLabelValues("resource_not_allowed").Inc()
			t.log.WithFields(logrus.Fields{"proxy": proxy, "type": shortType(typeURL), "resource": name, "authenticated": s.Authenticated}).
				Warn("refused: the Envoy asked for a resource that is not in its config")
		}
	}
}

func (t *Tracker) typeStatus(k streamKey, typeURL string) (*StreamStatus, *TypeStatus) {
	s, ok := t.streams[k]
	if !ok {
		return nil, nil
	}
	ts, ok := s.Types[typeURL]
	if !ok {
		ts = &TypeStatus{}
		s.Types[typeURL] = ts
	}
	return s, ts
}

// request records an ACK (a request carrying the nonce of a response and no
// error) or a NACK (error_detail set; Envoy keeps its last good config).
func (t *Tracker) request(k streamKey, typeURL, nonce, version string, errDetail *status.Status) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ts := t.typeStatus(k, typeURL)
	if s == nil || nonce == "" {
		return
	}
	if errDetail != nil {
		ts.LastNack, ts.NackedAt, ts.NackedVer = errDetail.Message(), time.Now(), ts.Sent
		t.metrics.nacks.WithLabelValues(shortType(typeURL)).Inc()
		t.log.WithFields(logrus.Fields{"proxy": s.Proxy, "envoy": s.EnvoyID, "type": shortType(typeURL), "rejected": ts.Sent, "keeps": ts.Acked}).
			Error("Envoy NACKed config: " + errDetail.Message())
		return
	}
	ts.Acked = version
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
	proxy := s.Proxy
	t.mu.Unlock()
	t.metrics.pushes.WithLabelValues(shortType(typeURL)).Inc()
	if at := t.publisher.SetAt(proxy); !at.IsZero() {
		t.metrics.pushLatency.WithLabelValues(shortType(typeURL)).Observe(time.Since(at).Seconds())
	}
}

// Callbacks returns the go-control-plane callbacks bound to this tracker.
func (t *Tracker) Callbacks() serverCallbacks { return serverCallbacks{t} }

type serverCallbacks struct{ t *Tracker }

func (c serverCallbacks) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.t.open(ctx, streamKey{id: id})
}
func (c serverCallbacks) OnStreamClosed(id int64, _ *corev3.Node) { c.t.closed(streamKey{id: id}) }
func (c serverCallbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.t.open(ctx, streamKey{delta: true, id: id})
}
func (c serverCallbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.t.closed(streamKey{delta: true, id: id})
}

func (c serverCallbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	k := streamKey{id: id}
	if err := c.t.identify(k, req.GetNode()); err != nil {
		return err
	}
	c.t.checkNames(k, req.GetTypeUrl(), req.GetResourceNames())
	nack := statusOf(req.GetErrorDetail())
	c.t.request(k, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), nack)
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

func (c serverCallbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	c.t.response(streamKey{id: id}, resp.GetTypeUrl(), resp.GetVersionInfo())
}

func (c serverCallbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	k := streamKey{delta: true, id: id}
	if err := c.t.identify(k, req.GetNode()); err != nil {
		return err
	}
	c.t.checkNames(k, req.GetTypeUrl(), req.GetResourceNamesSubscribe())
	c.t.mu.Lock()
	version := c.t.nonces[k][req.GetResponseNonce()]
	delete(c.t.nonces[k], req.GetResponseNonce())
	c.t.mu.Unlock()
	c.t.request(k, req.GetTypeUrl(), req.GetResponseNonce(), version, statusOf(req.GetErrorDetail()))
	return nil
}

func (c serverCallbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	k := streamKey{delta: true, id: id}
	c.t.mu.Lock()
	if c.t.nonces[k] == nil {
		c.t.nonces[k] = map[string]string{}
	}
	c.t.nonces[k][resp.GetNonce()] = resp.GetSystemVersionInfo()
	c.t.mu.Unlock()
	c.t.response(k, resp.GetTypeUrl(), resp.GetSystemVersionInfo())
}

func (c serverCallbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.Unimplemented, "spoke serves ADS streams only")
}
func (c serverCallbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}

func statusOf(s interface {
	GetCode() int32
	GetMessage() string
}) *status.Status {
	if s == nil || (s.GetCode() == 0 && s.GetMessage() == "") {
		return nil
	}
	return status.New(codes.Code(s.GetCode()), s.GetMessage())
}

func roleOf(key string) string {
	if key == APIServerKey {
		return "apiserver"
	}
	return "node"
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
