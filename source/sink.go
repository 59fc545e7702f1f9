// Package source feeds the model: it watches where the cluster is described
// (a live apiserver through informers, or a cluster dump file) and writes
// each object into the model Store, then nudges the server.
//
// Sources read Kubernetes objects and the model; they never import Envoy
// protos, gRPC or the xDS server. Only this package imports client-go's
// informers.
package source

import "github.com/spokeproxy/spoke/translator/model"

// Sink is where sources put what they see: they write objects into Store
// and call Changed; Synced once their first full view is in (the server
// publishes nothing before, and reports ready after).
type Sink struct {
	Store   *model.Store
	Changed func()
	Synced  func()
	// Refused, when set, hears why the source's current input is refused
	// (the last good one stays served), and "" once an input is accepted.
	Refused func(reason string)
}

func (s Sink) refused(reason string) {
	if s.Refused != nil {
		s.Refused(reason)
	}
}
