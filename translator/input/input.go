// Package input decodes cluster dumps: what `kubectl get ... -o yaml|json`
// prints (a v1 List), multi-document YAML, or single objects, in YAML or JSON.
// It imports the model and the Kubernetes API types only.
package input

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"unicode"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"

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

// DefaultMaxBytes bounds one cluster dump. Decoding streams and keeps only
// the fields the model reads (see BenchmarkDecode), but a dump far larger
// than any real cluster's is more likely a mistake than a cluster.
const DefaultMaxBytes = 512 << 20

// ReadFiles decodes every file into one set of objects. Problems are objects
// skipped (unknown kinds); an error means a file could not be read or parsed
// at all, or is larger than maxBytes, and the caller must not produce output
// from a partial cluster.
func ReadFiles(paths []string, maxBytes int64) (model.Objects, []model.Problem, error) {
	var objs model.Objects
	problems, err := ReadFilesTo(paths, maxBytes, &objs)
	return objs, problems, err
}

// ReadFilesTo is ReadFiles into any sink, reading each file as a stream:
// with a model.Builder, a dump is never held whole, neither as bytes nor as
// Kubernetes objects (a YAML file is read twice: once to see its shape).
func ReadFilesTo(paths []string, maxBytes int64, sink model.Sink) ([]model.Problem, error) {
	var problems []model.Problem
	for _, path := range paths {
		if err := checkSize(path, maxBytes); err != nil {
			return problems, err
		}
		open := func() (io.ReadCloser, error) {
			f, err := os.Open(path)
			if err != nil {
				return nil, fmt.Errorf("read cluster dump: %w", err)
			}
			return readCloser{io.LimitReader(f, maxBytes), f}, nil
		}
		p, err := decodeStream(open, sink)
		problems = append(problems, p...)
		if err != nil {
			return problems, fmt.Errorf("%s: %w", path, err)
		}
	}
	return problems, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// checkSize refuses a dump larger than maxBytes before reading it.
func checkSize(path string, maxBytes int64) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read cluster dump: %w", err)
	}
	if info.Size() > maxBytes {
		return fmt.Errorf("cluster dump %s is larger than %d MiB: split it, or raise the limit (--max-input-size) if it really is one cluster", path, maxBytes>>20)
	}
	return nil
}

// ReadFile reads a cluster dump, refusing one larger than maxBytes before
// reading it.
func ReadFile(path string, maxBytes int64) ([]byte, error) {
	if err := checkSize(path, maxBytes); err != nil {
		return nil, err
	}
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
	return decodeStream(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil }, objs)
}

// decodeStream decodes the dump open returns into sink: JSON in one pass,
// YAML in two (see decodeYAML).
func decodeStream(open func() (io.ReadCloser, error), sink model.Sink) ([]model.Problem, error) {
	r, err := open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	if first, err := firstByte(br); err == nil && (first == '{' || first == '[') {
		return decodeJSON(br, sink)
	}
	return decodeYAML(open, sink)
}

// firstByte peeks at the first byte that is not white space.
func firstByte(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.Peek(1)
		if err != nil {
			return 0, err
		}
		if !unicode.IsSpace(rune(b[0])) {
			return b[0], nil
		}
		if _, err := br.ReadByte(); err != nil {
			return 0, err
		}
	}
}

// decodeYAML reads YAML documents in two passes: the first finds which are
// Lists in kubectl's block style (see listScanner), without keeping them;
// the second hands each item of those to the sink as soon as it is read,
// and parses the other documents whole, as they come.
func decodeYAML(open func() (io.ReadCloser, error), sink model.Sink) ([]model.Problem, error) {
	lists, err := yamlListDocuments(open)
	if err != nil {
		return nil, err
	}
	r, err := open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	var problems []model.Problem
	var scanner *listScanner
	var whole []byte
	doc, item := 0, 0
	onItem := func(text []byte) error {
		defer func() { item++ }()
		obj, err := sigsyaml.YAMLToJSON(text)
		if err != nil {
			return fmt.Errorf("document %d: item %d: not valid YAML: %w", doc, item, err)
		}
		p, err := addObject(obj, sink, 1)
		problems = append(problems, p...)
		if err != nil {
			return fmt.Errorf("document %d: item %d: %w", doc, item, err)
		}
		return nil
	}
	begin := func(n int) {
		doc, item, whole, scanner = n, 0, whole[:0], nil
		if lists[n] {
			scanner = newListScanner(onItem)
		}
	}
	line := func(l []byte) error {
		if scanner != nil {
			return scanner.line(l)
		}
		whole = append(whole, l...)
		return nil
	}
	end := func() error {
		if scanner != nil {
			_, err := scanner.end()
			return err
		}
		p, err := decodeYAMLDocument(whole, doc, sink)
		problems = append(problems, p...)
		return err
	}
	return problems, eachYAMLDocument(r, begin, line, end)
}

// yamlListDocuments is the first pass of decodeYAML: the documents (by
// number) that are Lists in kubectl's block style.
func yamlListDocuments(open func() (io.ReadCloser, error)) (map[int]bool, error) {
	r, err := open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	lists := map[int]bool{}
	var scanner *listScanner
	doc := 0
	err = eachYAMLDocument(r,
		func(n int) { doc, scanner = n, newListScanner(nil) },
		func(l []byte) error { return scanner.line(l) },
		func() error { lists[doc], _ = scanner.end(); return nil })
	return lists, err
}

// decodeYAMLDocument parses one document whole.
func decodeYAMLDocument(text []byte, doc int, sink model.Sink) ([]model.Problem, error) {
	obj, err := sigsyaml.YAMLToJSON(text)
	if err != nil {
		return nil, fmt.Errorf("document %d: not valid YAML or JSON: %w (is this `kubectl get -o yaml` output?)", doc, err)
	}
	if len(bytes.TrimSpace(obj)) == 0 || string(obj) == "null" {
		return nil, nil // empty document between "---" separators
	}
	p, err := addObject(obj, sink, 0)
	if err != nil {
		return p, fmt.Errorf("document %d: %w", doc, err)
	}
	return p, nil
}

// decodeJSON reads concatenated JSON values; a List's items are decoded
// from the token stream one at a time.
func decodeJSON(r io.Reader, sink model.Sink) ([]model.Problem, error) {
	dec := json.NewDecoder(r)
	var problems []model.Problem
	for doc := 1; ; doc++ {
		p, err := decodeJSONValue(dec, sink)
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
func decodeJSONValue(dec *json.Decoder, sink model.Sink) ([]model.Problem, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, fmt.Errorf("not valid JSON: want an object, got %v (is this `kubectl get -o json` output?)", tok)
	}
	fields := map[string]json.RawMessage{}
	// kubectl sorts keys: "items" comes before "kind", so items go to the
	// sink at once and are taken back if the object is not a List.
	mark, listed := sink.Mark(), false
	var listProblems []model.Problem
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not valid JSON: %w", err)
		}
		if key == "items" {
			listed = true
			if listProblems, err = decodeJSONItems(dec, sink); err != nil {
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
	if listed && isListObject(fields) {
		return listProblems, nil
	}
	sink.Rollback(mark)
	obj, err := json.Marshal(fields) // one object: small
	if err != nil {
		return nil, err
	}
	return addObject(obj, sink, 0)
}

func isListObject(fields map[string]json.RawMessage) bool {
	var kind string
	return json.Unmarshal(fields["kind"], &kind) == nil && (kind == "List" || isListKind(kind))
}

func decodeJSONItems(dec *json.Decoder, sink model.Sink) ([]model.Problem, error) {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return nil, fmt.Errorf("not valid JSON: items is not an array")
	}
	var problems []model.Problem
	for i := 0; dec.More(); i++ {
		var item json.RawMessage
		if err := dec.Decode(&item); err != nil {
			return problems, fmt.Errorf("item %d: not valid JSON: %w", i, err)
		}
		p, err := addObject(item, sink, 1)
		problems = append(problems, p...)
		if err != nil {
			return problems, fmt.Errorf("item %d: %w", i, err)
		}
	}
	_, err := dec.Token() // the closing bracket
	return problems, err
}

func addObject(raw json.RawMessage, sink model.Sink, depth int) ([]model.Problem, error) {
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
			p, err := addObject(item, sink, depth+1)
			problems = append(problems, p...)
			if err != nil {
				return problems, fmt.Errorf("item %d: %w", i, err)
			}
		}
		return problems, nil
	case tm.Kind == "" || tm.APIVersion == "":
		return nil, fmt.Errorf("object without apiVersion or kind (name %q): every item needs both", tm.Metadata.Name)
	case tm.APIVersion == "v1" && tm.Kind == "Node":
		return decodeInto[corev1.Node](raw, name, sink), nil
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		return decodeInto[corev1.Pod](raw, name, sink), nil
	case tm.APIVersion == "v1" && tm.Kind == "Service":
		return decodeInto[corev1.Service](raw, name, sink), nil
	case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
		return decodeInto[discoveryv1.EndpointSlice](raw, name, sink), nil
	case tm.APIVersion == "networking.k8s.io/v1" && tm.Kind == "ServiceCIDR":
		return decodeInto[networkingv1.ServiceCIDR](raw, name, sink), nil
	default:
		return []model.Problem{{Object: name, Message: fmt.Sprintf("skipped: kind %s/%s is not used by spoke (it reads v1 Node, Pod, Service, discovery.k8s.io/v1 EndpointSlice and networking.k8s.io/v1 ServiceCIDR)", tm.APIVersion, tm.Kind)}}, nil
	}
}

// isListKind accepts typed lists such as NodeList that some tools print.
func isListKind(kind string) bool {
	return len(kind) > 4 && kind[len(kind)-4:] == "List"
}

// decodeInto hands the typed object, stripped, to the sink; a malformed one
// is skipped and reported so that one broken object never hides the rest of
// the cluster.
func decodeInto[T any](raw json.RawMessage, name string, sink model.Sink) []model.Problem {
	obj := new(T)
	if err := json.Unmarshal(raw, obj); err != nil {
		return []model.Problem{{Object: name, Message: fmt.Sprintf("skipped: malformed: %v", err)}}
	}
	sink.Add(model.Strip(obj))
	return nil
}
