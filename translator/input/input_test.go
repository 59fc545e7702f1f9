package input

import (
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/translator/model"
)

func TestDecodeForms(t *testing.T) {
	for name, tc := range map[string]struct {
		raw                   string
		nodes, pods, problems int
	}{
		"json list":       {`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"a"}}]}`, 1, 0, 0},
		"typed list":      {"apiVersion: v1\nkind: PodList\nitems:\n- {apiVersion: v1, kind: Pod, metadata: {name: p}}\n", 0, 1, 0},
		"multi document":  {"---\napiVersion: v1\nkind: Node\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", 1, 1, 0},
		"concatenated":    {`{"apiVersion":"v1","kind":"Node","metadata":{"name":"a"}} {"apiVersion":"v1","kind":"Node","metadata":{"name":"b"}}`, 2, 0, 0},
		"unknown kind":    {"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n", 0, 0, 1},
		"malformed field": {"apiVersion: v1\nkind: Node\nmetadata: {name: a}\nstatus: {addresses: 7}\n", 0, 0, 1},
		"empty":           {"", 0, 0, 0},
	} {
		t.Run(name, func(t *testing.T) {
			var objs model.Objects
			problems, err := Decode([]byte(tc.raw), &objs)
			if err != nil {
				t.Fatal(err)
			}
			if len(objs.Nodes) != tc.nodes || len(objs.Pods) != tc.pods || len(problems) != tc.problems {
				t.Errorf("got %d nodes, %d pods, problems %v", len(objs.Nodes), len(objs.Pods), problems)
			}
		})
	}
}

func TestDecodeFailsWholeOnBrokenDocuments(t *testing.T) {
	for _, raw := range []string{"kind: [", `{"kind":"List","items":[{"metadata":{}}]}`, `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"List","items":[]}]}`} {
		var objs model.Objects
		_, err := Decode([]byte(raw), &objs)
		if err == nil || !strings.Contains(err.Error(), "document 1") {
			t.Errorf("%q: want an error naming the document, got %v", raw, err)
		}
	}
}
