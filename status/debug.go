package status

import (
	"cmp"
	"encoding/json"
	"net/http"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/translator"
)

// Sync states of one resource type on one Envoy.
const (
	StateSynced = "SYNCED" // ACKed the version the server holds now
	StateStale  = "STALE"  // not yet ACKed the current version (in flight or never sent)
	StateNacked = "NACKED" // rejected the current version; runs its last good one
)

// DebugAPIHeader marks every answer of spoke's debug API, so the CLI can
// tell it from another server at the address it was given.
const DebugAPIHeader = "Spoke-Debug-Api"

// state is SYNCED, NACKED or STALE for the version the server holds now
// (ts nil: never asked for).
func (ts *TypeStatus) state(current string) string {
	switch {
	case ts != nil && ts.Acked == current:
		return StateSynced
	case ts != nil && ts.NackedVer == current && ts.LastNack != "":
		return StateNacked
	}
	return StateStale
}

// ProxyStatus is one row of `spoke status`.
type ProxyStatus struct {
	StreamStatus
	States map[string]string `json:"states"` // type -> SYNCED | STALE | NACKED
	Server map[string]string `json:"serverVersions"`
}

// Statuses joins what each Envoy ACKed with what the server holds for it.
func (t *Tracker) Statuses() []ProxyStatus {
	var out []ProxyStatus
	for _, st := range t.Status() {
		current, counts := t.published.Versions(st.Proxy)
		ps := ProxyStatus{StreamStatus: st, States: map[string]string{}, Server: map[string]string{}}
		for typeURL, v := range current {
			short := shortType(typeURL)
			ps.Server[short] = v
			ts := st.Types[typeURL]
			if ts != nil || counts[typeURL] > 0 { // else: nothing of this type, never asked: not applicable
				ps.States[short] = ts.state(v)
			}
		}
		out = append(out, ps)
	}
	return out
}

// DebugHandler serves /debug/status (the rows of `spoke status`),
// /debug/config?proxy=KEY[&type=T][&name=N] (what the server serves one
// Envoy, as an Envoy ConfigDump with secrets by name only; type secrets
// describes their certificates instead) and /debug/diff?proxy=KEY (served
// against ACKed, resource by resource, for each Envoy of that proxy).
func (t *Tracker) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(t.Statuses())
	})
	mux.HandleFunc("/debug/diff", func(w http.ResponseWriter, r *http.Request) {
		proxy, err := auth.ParseProxy(r.URL.Query().Get("proxy"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		diffs := t.Diff(proxy.Key())
		if diffs == nil {
			diffs = []EnvoyDiff{} // no Envoy of that proxy connected: [] for scripts
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(diffs)
	})
	mux.HandleFunc("/debug/proxies", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(t.published.Proxies())
	})
	mux.HandleFunc("/debug/config", func(w http.ResponseWriter, r *http.Request) {
		proxy, err := auth.ParseProxy(r.URL.Query().Get("proxy"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, versions, ok := t.published.Served(proxy)
		if !ok {
			http.Error(w, "no config for "+proxy.Key()+": not in the cluster, or the server has not synced yet", http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		format := cmp.Or(q.Get("output"), "yaml")
		switch q.Get("type") {
		case "secrets":
			writeSecrets(w, t.published.ServedSecrets(proxy), q.Get("name"), format)
			return
		case "bootstrap":
			t.writeBootstrap(w, proxy.Key(), format)
			return
		}
		res, err = Select(res, q.Get("type"), q.Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		// Secrets appear by name only: ConfigDump never carries key material.
		out, err := translator.Marshal(translator.ConfigDump(res, dumpVersions(versions)), format)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = w.Write(out)
	})
	return mux
}

// writeBootstrap answers --type bootstrap: the part of each connected
// Envoy's bootstrap the server sees, its node (id, cluster, metadata, Envoy
// build), in the shape of the bootstrap section of Envoy's /config_dump.
func (t *Tracker) writeBootstrap(w http.ResponseWriter, proxy, format string) {
	dump := &adminv3.ConfigDump{}
	for _, st := range t.Status() {
		if st.Proxy != proxy || st.node == nil {
			continue
		}
		section, err := anypb.New(&adminv3.BootstrapConfigDump{Bootstrap: &bootstrapv3.Bootstrap{Node: st.node}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		dump.Configs = append(dump.Configs, section)
	}
	if len(dump.Configs) == 0 {
		http.Error(w, "no Envoy of "+proxy+" is connected: the server sees a bootstrap only as the node its Envoy sends", http.StatusNotFound)
		return
	}
	out, err := translator.Marshal(dump, format)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, _ = w.Write(out)
}

// writeSecrets answers --type secrets: each secret's certificate described,
// never its key material.
func writeSecrets(w http.ResponseWriter, secrets []*tlsv3.Secret, name, format string) {
	infos := []SecretInfo{}
	for _, s := range secrets {
		if name == "" || s.GetName() == name {
			infos = append(infos, DescribeSecret(s))
		}
	}
	out, err := Document(infos, format)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write(out)
}

// Document renders v for a reader: indented JSON, or YAML (format "yaml").
func Document(v any, format string) ([]byte, error) {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil || format != "yaml" {
		return append(out, '\n'), err
	}
	return yaml.JSONToYAML(out)
}

func dumpVersions(v map[string]string) translator.DumpVersions {
	return translator.DumpVersions{
		Listeners: v[resourcev3.ListenerType], Clusters: v[resourcev3.ClusterType],
		Endpoints: v[resourcev3.EndpointType], Routes: v[resourcev3.RouteType], Secrets: v[resourcev3.SecretType],
	}
}
