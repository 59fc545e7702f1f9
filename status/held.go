package status

import (
	"maps"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
)

// What each Envoy holds, resource by resource: the tracker remembers, per
// response it sends, which resources of the served snapshot that response
// carried (the snapshot's own protos, shared, not copied), and moves them to
// the type's held set when the Envoy ACKs that response's nonce. A NACKed
// response is dropped: Envoy keeps its last good resources. Diff compares
// the held set with what the server serves now.

// maxPending bounds the responses awaiting an ACK kept per type: Envoy
// answers every response in order, so more than a few means it is gone.
const maxPending = 8

// pendingResponse is what one response carried.
type pendingResponse struct {
	nonce string
	// resources are the resources sent (SotW: the whole set the Envoy asked
	// for; delta: the ones added or changed). nil: unknown, the snapshot
	// moved on before the response could be matched to it.
	resources map[string]proto.Message
	removed   []string // delta: names the response removed
	delta     bool
}

// heldState is what one Envoy holds of one type.
type heldState struct {
	// resources is what the Envoy ACKed; nil until an ACK on this stream
	// (or a delta resume) says.
	resources map[string]proto.Message
	pending   []pendingResponse
	// asked is what the Envoy subscribed to; nil: every resource (a
	// wildcard subscription, LDS and CDS).
	asked      map[string]bool
	subscribed bool // a delta request has set asked
}

// sentSet returns the resources of snapshot that a response asking for
// names carries (all of them for a wildcard request).
func sentSet(snapshot map[string]proto.Message, names []string) map[string]proto.Message {
	if isWildcard(names) {
		return snapshot
	}
	out := make(map[string]proto.Message, len(names))
	for _, n := range names {
		if r, ok := snapshot[n]; ok {
			out[n] = r
		}
	}
	return out
}

func isWildcard(names []string) bool { return len(names) == 0 || slices.Contains(names, "*") }

// sent records a response awaiting its ACK.
func (h *heldState) sent(p pendingResponse) {
	if len(h.pending) == maxPending {
		h.pending = h.pending[1:]
	}
	h.pending = append(h.pending, p)
}

// answered applies the ACK (or drops the NACKed response) of nonce.
func (h *heldState) answered(nonce string, ack bool) {
	i := slices.IndexFunc(h.pending, func(p pendingResponse) bool { return p.nonce == nonce })
	if i < 0 {
		return
	}
	p := h.pending[i]
	h.pending = slices.Delete(h.pending, i, i+1)
	if !ack {
		return
	}
	switch {
	case p.resources == nil:
		h.resources = nil // it holds something the server can no longer name
	case !p.delta:
		h.resources = p.resources
	case len(h.resources) == 0 && h.resources != nil:
		h.resources = p.resources // the response's own map, held by nothing else
	case h.resources != nil:
		// Copied, not changed in place: a copy of the status may share it.
		next := maps.Clone(h.resources)
		maps.Copy(next, p.resources)
		for _, n := range p.removed {
			delete(next, n)
		}
		h.resources = next
	}
}

// subscribe records the names a delta request adds and drops; the
// type's first request subscribes to every resource when it names none.
func (h *heldState) subscribe(add, drop []string) {
	first := !h.subscribed
	h.subscribed = true
	if first && isWildcard(add) {
		h.asked = nil
		return
	}
	if h.asked == nil && !first {
		return // wildcard stays wildcard
	}
	next := maps.Clone(h.asked)
	if next == nil {
		next = map[string]bool{}
	}
	for _, n := range add {
		next[n] = true
	}
	for _, n := range drop {
		delete(next, n)
	}
	h.asked = next
}

// askedFor sets a SotW request's names (each request names the full set).
func (h *heldState) askedFor(names []string) {
	if isWildcard(names) {
		h.asked = nil
		return
	}
	asked := make(map[string]bool, len(names))
	for _, n := range names {
		asked[n] = true
	}
	h.asked = asked
}

// heldRequest records a SotW request: the names it asks for, and the ACK or
// NACK of a response. A first request without a version comes from an
// Envoy that holds nothing of the type; one that names the version the
// server holds now, from an Envoy that already runs it (it moved from
// another server): it holds the current resources. Another version: not
// known until it ACKs.
func (t *Tracker) heldRequest(k streamKey, req *discoveryv3.DiscoveryRequest) {
	var current map[string]proto.Message
	if req.GetResponseNonce() == "" && req.GetVersionInfo() != "" {
		if proxy := t.proxyOf(k); proxy != "" {
			if v, snapshot := t.published.SnapshotResources(proxy, req.GetTypeUrl()); v == req.GetVersionInfo() {
				current = sentSet(snapshot, req.GetResourceNames())
			}
		}
	}
	t.withHeld(k, req.GetTypeUrl(), func(h *heldState) {
		h.askedFor(req.GetResourceNames())
		switch {
		case req.GetResponseNonce() != "":
			h.answered(req.GetResponseNonce(), req.GetErrorDetail() == nil)
		case current != nil:
			h.resources = current
		case req.GetVersionInfo() == "" && h.resources == nil:
			h.resources = map[string]proto.Message{} // no version: it holds nothing yet
		}
	})
}

// heldDeltaRequest records a delta request: its subscriptions, and the ACK
// or NACK of a response.
func (t *Tracker) heldDeltaRequest(k streamKey, req *discoveryv3.DeltaDiscoveryRequest) {
	t.withHeld(k, req.GetTypeUrl(), func(h *heldState) {
		if !h.subscribed && len(req.GetInitialResourceVersions()) == 0 {
			h.resources = map[string]proto.Message{} // a fresh Envoy holds nothing yet
		}
		h.subscribe(req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe())
		if req.GetResponseNonce() != "" {
			h.answered(req.GetResponseNonce(), req.GetErrorDetail() == nil)
		}
	})
}

// heldResponse records what a response of version carries, read from the
// served snapshot when it is still that version (else: unknown).
func (t *Tracker) heldResponse(k streamKey, typeURL, version string, carried func(snapshot map[string]proto.Message) pendingResponse) {
	proxy := t.proxyOf(k)
	if proxy == "" {
		return
	}
	v, snapshot := t.published.SnapshotResources(proxy, typeURL)
	p := carried(snapshot)
	if v != version {
		p.resources = nil
	}
	t.withHeld(k, typeURL, func(h *heldState) { h.sent(p) })
}

// withHeld runs f on the held state of one stream's type, under t.mu.
func (t *Tracker) withHeld(k streamKey, typeURL string, f func(*heldState)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ts := t.typeStatus(k, typeURL); ts != nil {
		f(&ts.held)
	}
}

func (t *Tracker) proxyOf(k streamKey) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[k]; ok {
		return s.Proxy
	}
	return ""
}
