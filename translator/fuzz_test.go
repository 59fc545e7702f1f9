package translator_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// FuzzTranslate feeds arbitrary bytes through the whole offline path: decode,
// build the model, translate both roles. Whatever the input, nothing may
// panic and everything generated must pass proto validation and resolve its
// references (translator.Check).
func FuzzTranslate(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/in/*")
	seeds = append(seeds, "../examples/cluster.yaml")
	for _, path := range seeds {
		raw, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	s := model.DefaultSettings()
	f.Fuzz(func(t *testing.T, raw []byte) {
		var objs model.Objects
		if _, err := input.Decode(raw, &objs); err != nil {
			return
		}
		cluster, _ := model.Build(objs, s)
		if err := translator.Check(translator.APIServerProxy(&cluster, s)); err != nil {
			t.Fatalf("apiserver proxy config invalid: %v", err)
		}
		for _, n := range cluster.Nodes {
			res, err := translator.NodeProxy(&cluster, s, n.Name)
			if err != nil {
				t.Fatalf("node %s: %v", n.Name, err)
			}
			if err := translator.Check(res); err != nil {
				t.Fatalf("node %s config invalid: %v", n.Name, err)
			}
		}
	})
}
