// Package input decodes cluster dumps: what `kubectl get ... -o yaml|json`
// prints (a v1 List), multi-document YAML, or single objects, in YAML or JSON.
// It imports the model and the Kubernetes API types only.
package input

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	sigsyaml "sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/translator/model"
)

// typeMeta is the part of every object that says what it is.
type typeMeta struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

// DefaultMaxBytes bounds one cluster dump. Decoding keeps only the fields
// the model reads, so memory is a small multiple of the input (see
// BenchmarkDecode), but a dump far larger than any real cluster's is more
// likely a mistake than a cluster.
const DefaultMaxBytes = 512 << 20

// ReadFiles decodes every file into one set of objects. Problems are objects
// skipped (unknown kinds); an error means a file could not be read or parsed
// at all, or is larger than maxBytes, and the caller must not produce output
// from a partial cluster.
func ReadFiles(paths []string, maxBytes int64) (model.Objects, []model.Problem, error) {
	var objs model.Objects
	var problems []model.Problem
	for _, path := range paths {
		raw, err := ReadFile(path, maxBytes)
		if err != nil {
			return objs, problems, err
		}
		p, err := Decode(raw, &objs)
		problems = append(problems, p...)
		if err != nil {
			return objs, problems, fmt.Errorf("%s: %w", path, err)
		}
	}
	return objs, problems, nil
}

// ReadFile reads a cluster dump, refusing one larger than maxBytes before
// reading it.
func ReadFile(path string, maxBytes int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read cluster dump: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read cluster dump %s: %w", path, err)
	}
	if int64(len(raw)) > maxBytes {
		return nil, fmt.Errorf("cluster dump %s is larger than %d MiB: split it, or raise the limit (--max-input-size) if it really is one cluster", path, maxBytes>>20)
	}
	return raw, nil
}

// Decode adds the objects in raw (YAML or JSON, one or many documents) to
// objs, one object at a time: the items of a List are decoded and stripped
// (model.Strip) one by one, so a dump never exists in memory as a whole
// tree of objects.
func Decode(raw []byte, objs *model.Objects) ([]model.Problem, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		return decodeJSON(raw, objs)
	}
	return decodeYAML(raw, objs)
}

// decodeYAML reads YAML documents; a List document printed in kubectl's
// block style is split into its items first (see splitYAMLList).
func decodeYAML(raw []byte, objs *model.Objects) ([]model.Problem, error) {
	docs, err := yamlDocuments(raw)
	if err != nil {
		return nil, err
	}
	var problems []model.Problem
	for doc, text := range docs {
		if items, ok := splitYAMLList(text); ok {
			for i, item := range items {
				obj, err := sigsyaml.YAMLToJSON(item)
				if err != nil {
					return problems, fmt.Errorf("document %d: item %d: not valid YAML: %w", doc+1, i, err)
				}
				p, err := addObject(obj, objs, 1)
				problems = append(problems, p...)
				if err != nil {
					return problems, fmt.Errorf("document %d: item %d: %w", doc+1, i, err)
				}
			}
			continue
		}
		obj, err := sigsyaml.YAMLToJSON(text)
		if err != nil {
			return problems, fmt.Errorf("document %d: not valid YAML or JSON: %w (is this `kubectl get -o yaml` output?)", doc+1, err)
		}
		if len(bytes.TrimSpace(obj)) == 0 || string(obj) == "null" {
			continue // empty document between "---" separators
		}
		p, err := addObject(obj, objs, 0)
		problems = append(problems, p...)
		if err != nil {
			return problems, fmt.Errorf("document %d: %w", doc+1, err)
		}
	}
	return problems, nil
}

// decodeJSON reads concatenated JSON values; a List's items are decoded
// from the token stream one at a time.
func decodeJSON(raw []byte, objs *model.Objects) ([]model.Problem, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	var problems []model.Problem
	for doc := 1; ; doc++ {
		p, err := decodeJSONValue(dec, objs)
		problems = append(problems, p...)
		if errors.Is(err, io.EOF) {
			return problems, nil
		}
		if err != nil {
			return problems, fmt.Errorf("document %d: %w", doc, err)
		}
	}
}

// decodeJSONValue reads one top-level JSON object, streaming its "items".
func decodeJSONValue(dec *json.Decoder, objs *model.Objects) ([]model.Problem, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("not valid JSON: want an object, got %v (is this `kubectl get -o json` output?)", tok)
	}
	fields := map[string]json.RawMessage{}
	// kubectl sorts keys: "items" comes before "kind", so items are decoded
	// aside and kept only if the object turns out to be a List.
	var listed *model.Objects
	var listProblems []model.Problem
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not valid JSON: %w", err)
		}
		if key == "items" {
			listed = &model.Objects{}
			if listProblems, err = decodeJSONItems(dec, listed); err != nil {
				return listProblems, err
			}
			continue
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("not valid JSON: %w", err)
		}
		fields[fmt.Sprint(key)] = v
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	if listed != nil && isListObject(fields) {
		objs.Nodes = append(objs.Nodes, listed.Nodes...)
		objs.Pods = append(objs.Pods, listed.Pods...)
		objs.Services = append(objs.Services, listed.Services...)
		objs.EndpointSlices = append(objs.EndpointSlices, listed.EndpointSlices...)
		objs.ServiceCIDRs = append(objs.ServiceCIDRs, listed.ServiceCIDRs...)
		return listProblems, nil
	}
	obj, err := json.Marshal(fields) // one object: small
	if err != nil {
		return nil, err
	}
	return addObject(obj, objs, 0)
}

func isListObject(fields map[string]json.RawMessage) bool {
	var kind string
	return json.Unmarshal(fields["kind"], &kind) == nil && (kind == "List" || isListKind(kind))
}

func decodeJSONItems(dec *json.Decoder, objs *model.Objects) ([]model.Problem, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, fmt.Errorf("not valid JSON: items is not an array")
	}
	var problems []model.Problem
	for i := 0; dec.More(); i++ {
		var item json.RawMessage
		if err := dec.Decode(&item); err != nil {
			return problems, fmt.Errorf("item %d: not valid JSON: %w", i, err)
		}
		p, err := addObject(item, objs, 1)
		problems = append(problems, p...)
		if err != nil {
			return problems, fmt.Errorf("item %d: %w", i, err)
		}
	}
	_, err := dec.Token() // the closing bracket
	return problems, err
}

func addObject(raw json.RawMessage, objs *model.Objects, depth int) ([]model.Problem, error) {
	var tm typeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return nil, fmt.Errorf("not a Kubernetes object: %w", err)
	}
	name := tm.Kind + " " + tm.Metadata.Name
	if tm.Metadata.Namespace != "" {
		name = tm.Kind + " " + tm.Metadata.Namespace + "/" + tm.Metadata.Name
	}
	switch {
	case tm.Kind == "List" || (tm.Kind != "" && len(tm.Items) > 0 && depth == 0 && isListKind(tm.Kind)):
		if depth > 0 {
			return nil, fmt.Errorf("a List inside a List is not supported")
		}
		var problems []model.Problem
		for i, item := range tm.Items {
			p, err := addObject(item, objs, depth+1)
			problems = append(problems, p...)
			if err != nil {
				return problems, fmt.Errorf("item %d: %w", i, err)
			}
		}
		return problems, nil
	case tm.Kind == "" || tm.APIVersion == "":
		return nil, fmt.Errorf("object without apiVersion or kind (name %q): every item needs both", tm.Metadata.Name)
	case tm.APIVersion == "v1" && tm.Kind == "Node":
		return decodeInto(raw, name, &objs.Nodes), nil
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		return decodeInto(raw, name, &objs.Pods), nil
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		return decodeInto(raw, name, &objs.Services), nil
	case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
		return decodeInto(raw, name, &objs.EndpointSlices), nil
	case tm.APIVersion == "networking.k8s.io/v1" && tm.Kind == "ServiceCIDR":
		return decodeInto(raw, name, &objs.ServiceCIDRs), nil
	default:
		return []model.Problem{{Object: name, Message: fmt.Sprintf("skipped: kind %s/%s is not used by spoke (it reads v1 Node, Pod, Service, discovery.k8s.io/v1 EndpointSlice and networking.k8s.io/v1 ServiceCIDR)", tm.APIVersion, tm.Kind)}}, nil
	}
}

// isListKind accepts typed lists such as NodeList that some tools print.
func isListKind(kind string) bool {
	return len(kind) > 4 && kind[len(kind)-4:] == "List"
}

// decodeInto appends the typed object; a malformed one is skipped and reported
// so that one broken object never hides the rest of the cluster.
func decodeInto[T any](raw json.RawMessage, name string, into *[]*T) []model.Problem {
	obj := new(T)
	if err := json.Unmarshal(raw, obj); err != nil {
		return []model.Problem{{Object: name, Message: fmt.Sprintf("skipped: malformed: %v", err)}}
	}
	*into = append(*into, model.Strip(obj).(*T))
	return nil
}
