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

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

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

// ReadFiles decodes every file into one set of objects. Problems are objects
// skipped (unknown kinds); an error means a file could not be read or parsed at
// all, and the caller must not produce output from a partial cluster.
func ReadFiles(paths []string) (model.Objects, []model.Problem, error) {
	var objs model.Objects
	var problems []model.Problem
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return objs, problems, fmt.Errorf("read cluster dump: %w", err)
		}
		p, err := Decode(raw, &objs)
		problems = append(problems, p...)
		if err != nil {
			return objs, problems, fmt.Errorf("%s: %w", path, err)
		}
	}
	return objs, problems, nil
}

// Decode adds the objects in raw (YAML or JSON, one or many documents) to objs.
func Decode(raw []byte, objs *model.Objects) ([]model.Problem, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var problems []model.Problem
	for doc := 1; ; doc++ {
		var obj json.RawMessage
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return problems, nil
		}
		if err != nil {
			return problems, fmt.Errorf("document %d: not valid YAML or JSON: %w (is this `kubectl get -o yaml` output?)", doc, err)
		}
		if len(bytes.TrimSpace(obj)) == 0 || string(obj) == "null" {
			continue // empty document between "---" separators
		}
		p, err := addObject(obj, objs, 0)
		problems = append(problems, p...)
		if err != nil {
			return problems, fmt.Errorf("document %d: %w", doc, err)
		}
	}
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
	default:
		return []model.Problem{{Object: name, Message: fmt.Sprintf("skipped: kind %s/%s is not used by spoke (it reads v1 Node, Pod, Service and discovery.k8s.io/v1 EndpointSlice)", tm.APIVersion, tm.Kind)}}, nil
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
	*into = append(*into, obj)
	return nil
}
