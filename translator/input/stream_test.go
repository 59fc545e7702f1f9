package input

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/translator/model"
)

// syntheticList is a v1 List of nodes and pods carrying what real objects
// carry (labels, annotations with a multi-line value, containers, env) so
// that stripping matters.
func syntheticList(nodes, podsPerNode int) map[string]any {
	var items []any
	for n := 0; n < nodes; n++ {
		items = append(items, map[string]any{
			"apiVersion": "v1", "kind": "Node",
			"metadata": map[string]any{"name": fmt.Sprintf("node-%d", n), "labels": map[string]any{"zone": "z1"},
				"annotations": map[string]any{"note": "line one\nline two: with a colon\n- and a dash\n"}},
			"spec":   map[string]any{"podCIDRs": []any{fmt.Sprintf("10.%d.%d.0/24", 100+n/250, n%250)}},
			"status": map[string]any{"addresses": []any{map[string]any{"type": "InternalIP", "address": fmt.Sprintf("172.16.%d.%d", n/250, n%250+1)}}},
		})
		for p := 0; p < podsPerNode; p++ {
			items = append(items, map[string]any{
				"apiVersion": "v1", "kind": "Pod",
				"metadata": map[string]any{"name": fmt.Sprintf("web-%d-%d", n, p), "namespace": "default", "labels": map[string]any{"app": "web"}},
				"spec": map[string]any{"nodeName": fmt.Sprintf("node-%d", n), "containers": []any{map[string]any{
					"name": "web", "image": "registry.example/web:1", "args": []any{"--port=8080"},
					"env": []any{map[string]any{"name": "A", "value": strings.Repeat("x", 60)}}}}},
				"status": map[string]any{"phase": "Running", "podIP": fmt.Sprintf("10.%d.%d.%d", 100+n/250, n%250, p+2)},
			})
		}
	}
	return map[string]any{"apiVersion": "v1", "kind": "List", "metadata": map[string]any{"resourceVersion": ""}, "items": items}
}

func encodings(t testing.TB, list map[string]any) map[string][]byte {
	js, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	ys, err := yaml.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	var multi bytes.Buffer
	for _, item := range list["items"].([]any) {
		y, _ := yaml.Marshal(item)
		multi.WriteString("---\n")
		multi.Write(y)
	}
	indented := bytes.ReplaceAll(ys, []byte("\n- "), []byte("\n  - "))      // items indented under their key
	indented = bytes.ReplaceAll(indented, []byte("\n  "), []byte("\n    ")) // and their fields
	return map[string][]byte{"json": js, "yaml": ys, "yaml multi-document": multi.Bytes(), "yaml indented sequence": fixIndented(indented)}
}

// fixIndented undoes the double shift of the item lines themselves.
func fixIndented(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\n    - "), []byte("\n  - ")) }

// TestStreamingDecodesLikeWholeDocuments: the streaming paths (JSON items
// from the token stream, YAML Lists cut into items) give exactly the
// objects and model that decoding each object whole gives.
func TestStreamingDecodesLikeWholeDocuments(t *testing.T) {
	list := syntheticList(20, 5)
	var want model.Objects
	for _, item := range list["items"].([]any) {
		raw, _ := json.Marshal(item)
		if _, err := addObject(raw, &want, 1); err != nil {
			t.Fatal(err)
		}
	}
	if len(want.Nodes) != 20 || len(want.Pods) != 100 {
		t.Fatalf("reference decode: %d nodes, %d pods", len(want.Nodes), len(want.Pods))
	}
	wantModel, _ := model.Build(want, model.DefaultSettings())
	for name, raw := range encodings(t, list) {
		if strings.HasPrefix(name, "yaml") && name != "yaml multi-document" {
			if items, ok := splitYAMLList(raw); !ok || len(items) != 120 {
				t.Errorf("%s: the list was not cut into its 120 items (ok=%v, %d items)", name, ok, len(items))
			}
		}
		var got model.Objects
		problems, err := Decode(raw, &got)
		if err != nil || len(problems) > 0 {
			t.Errorf("%s: %v %v", name, err, problems)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: decoded objects differ from decoding each item whole", name)
		}
		if gotModel, _ := model.Build(got, model.DefaultSettings()); !reflect.DeepEqual(gotModel, wantModel) {
			t.Errorf("%s: model differs", name)
		}
	}
}

// TestYAMLListCutterFallsBack: what the line cutter does not recognise is
// parsed whole, with the same result.
func TestYAMLListCutterFallsBack(t *testing.T) {
	for name, doc := range map[string]string{
		"flow items":          "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Node, metadata: {name: a}}]\n",
		"comment at column 0": "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n# a comment\n  kind: Node\n  metadata: {name: a}\n",
		"not a list kind":     "apiVersion: v1\nkind: Node\nmetadata: {name: a}\nitems:\n- x\n",
	} {
		if _, ok := splitYAMLList([]byte(doc)); ok {
			t.Errorf("%s: the cutter claimed a document it should leave to the parser", name)
		}
		var objs model.Objects
		if _, err := Decode([]byte(doc), &objs); err != nil && name != "not a list kind" {
			t.Errorf("%s: %v", name, err)
		} else if name != "not a list kind" && len(objs.Nodes) != 1 {
			t.Errorf("%s: %d nodes, want 1", name, len(objs.Nodes))
		}
	}
}

// TestInputSizeLimit: a dump over the limit is refused before it is read,
// with an error that says how to proceed.
func TestInputSizeLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.json")
	if err := os.WriteFile(path, bytes.Repeat([]byte(" "), 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadFiles([]string{path}, 1<<20); err == nil || !strings.Contains(err.Error(), "--max-input-size") {
		t.Errorf("want a size error naming the flag, got %v", err)
	}
	if _, _, err := ReadFiles([]string{path}, 4<<20); err != nil {
		t.Errorf("under the limit: %v", err)
	}
}

// BenchmarkDecode reports, per MB of input, the bytes allocated while
// decoding and the heap still held afterwards (the decoded, stripped
// objects), for kubectl's JSON and YAML List forms.
func BenchmarkDecode(b *testing.B) {
	list := syntheticList(400, 30)
	for _, name := range []string{"json", "yaml"} {
		raw := encodings(b, list)[name]
		b.Run(name, func(b *testing.B) {
			mb := float64(len(raw)) / (1 << 20)
			var before, after runtime.MemStats
			var objs model.Objects
			for b.Loop() {
				objs = model.Objects{}
				runtime.GC()
				runtime.ReadMemStats(&before)
				if _, err := Decode(raw, &objs); err != nil {
					b.Fatal(err)
				}
				runtime.ReadMemStats(&after)
			}
			runtime.GC()
			var held runtime.MemStats
			runtime.ReadMemStats(&held)
			b.ReportMetric(mb, "input-MB")
			b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20)/mb, "alloc-MB/input-MB")
			b.ReportMetric(float64(int64(held.HeapInuse)-int64(before.HeapInuse))/(1<<20)/mb, "held-MB/input-MB")
			runtime.KeepAlive(objs)
		})
	}
}

// TestFilesStreamIntoABuilderAsBuildSees: every encoding of a synthetic
// List, written to a file and streamed into a model.Builder (as spoke
// translate does, never holding the dump), gives the model and problems
// Build gives on the decoded objects.
func TestFilesStreamIntoABuilderAsBuildSees(t *testing.T) {
	list := syntheticList(20, 5)
	dir := t.TempDir()
	for name, raw := range encodings(t, list) {
		var objs model.Objects
		if _, err := Decode(raw, &objs); err != nil {
			t.Fatal(err)
		}
		want, wantProblems := model.Build(objs, model.DefaultSettings())
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
		b := model.NewBuilder(model.DefaultSettings())
		if _, err := ReadFilesTo([]string{path}, DefaultMaxBytes, b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, gotProblems := b.Build()
		if b.Objects() != 120 || !reflect.DeepEqual(got, want) || fmt.Sprint(gotProblems) != fmt.Sprint(wantProblems) {
			t.Errorf("%s: streamed into a Builder (%d objects), the model or problems differ from Build's", name, b.Objects())
		}
	}
}

// TestItemsOfWhatIsNotAListAreTakenBack: a document whose items come before
// a kind that is no List (the JSON decoder hands items over as it reads
// them) keeps none of them, as before; a leading "---" still streams.
func TestItemsOfWhatIsNotAListAreTakenBack(t *testing.T) {
	for name, doc := range map[string]string{
		"json": `{"apiVersion": "v1", "items": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a"}}], "kind": "Widget", "metadata": {"name": "w"}}`,
		"yaml": "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: a}\nkind: Widget\nmetadata: {name: w}\n",
	} {
		b := model.NewBuilder(model.DefaultSettings())
		problems, err := decodeStream(func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(doc)), nil }, b)
		if err != nil || b.Objects() != 0 || len(problems) != 1 || !strings.Contains(problems[0].Message, "Widget is not used") {
			t.Errorf("%s: objects %d, problems %v, err %v; want the Widget skipped and no node", name, b.Objects(), problems, err)
		}
	}
	var objs model.Objects
	if _, err := Decode([]byte("---\napiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: a}\nkind: List\n"), &objs); err != nil || len(objs.Nodes) != 1 {
		t.Errorf("a List after a leading ---: %d nodes, %v", len(objs.Nodes), err)
	}
}

// splitYAMLList cuts a whole List document into its items' YAML (see
// listScanner); ok is false when the document is not one.
func splitYAMLList(doc []byte) (items [][]byte, ok bool) {
	s := newListScanner(func(item []byte) error {
		items = append(items, append([]byte(nil), item...))
		return nil
	})
	for _, line := range bytes.SplitAfter(doc, []byte("\n")) {
		_ = s.line(line)
	}
	ok, _ = s.end()
	return items, ok
}
