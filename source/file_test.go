package source

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/spokeproxy/spoke/translator/model"
)

// clusterYAML is a cluster dump of n nodes with two pods each.
func clusterYAML(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Node
metadata: {name: node-%d}
spec: {podCIDR: 10.244.%d.0/24}
status:
  addresses: [{type: InternalIP, address: 10.0.0.%d}]
  daemonEndpoints: {kubeletEndpoint: {Port: 10250}}
`, i, i, i)
		for p := 1; p <= 2; p++ {
			fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: pod-%d-%d, namespace: default}
spec: {nodeName: node-%d}
status: {phase: Running, podIP: 10.244.%d.%d}
`, i, p, i, i, p+1)
		}
	}
	return b.String()
}

type fileTest struct {
	t    *testing.T
	f    *File
	sink Sink
	log  *logtest.Hook
}

func newFileTest(t *testing.T) *fileTest {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	sink := Sink{Store: model.NewStore(model.DefaultSettings()), Changed: func() {}, Synced: func() {}}
	f := &File{Path: filepath.Join(t.TempDir(), "cluster.yaml"), Interval: time.Millisecond, Settle: 100 * time.Millisecond, Log: logger}
	return &fileTest{t: t, f: f, sink: sink, log: hook}
}

func (ft *fileTest) write(content string) {
	if err := os.WriteFile(ft.f.Path, []byte(content), 0o600); err != nil {
		ft.t.Fatal(err)
	}
}

// pollExpect polls once and checks how many nodes the store holds.
func (ft *fileTest) pollExpect(nodes int, when string) {
	ft.t.Helper()
	ft.f.poll(ft.sink)
	if got := ft.sink.Store.ObjectCounts()["Node"]; got != nodes {
		ft.t.Fatalf("%s: the store holds %d nodes, want %d", when, got, nodes)
	}
}

func (ft *fileTest) logged(fragment string) bool {
	for _, e := range ft.log.AllEntries() {
		if strings.Contains(e.Message, fragment) {
			return true
		}
	}
	return false
}

// TestHalfWrittenFileIsNotApplied: an in-place rewrite caught halfway (it
// still parses) or an empty file would strip most of the cluster; it waits
// until it has stayed unchanged, and the full file that follows is applied
// without the cluster ever shrinking. A shrink that stays is applied.
func TestHalfWrittenFileIsNotApplied(t *testing.T) {
	ft := newFileTest(t)
	full := clusterYAML(4)
	ft.write(full)
	ft.pollExpect(4, "first load")

	docs := strings.SplitAfter(full, "\n---\n")
	ft.write(strings.Join(docs[:3], "")) // node-1 and its pods: a rewrite caught early
	ft.pollExpect(4, "half-written file")
	ft.pollExpect(4, "half-written file, polled again at once")
	if !ft.logged("waiting for it to settle") {
		t.Error("the suspect reload was not logged")
	}
	ft.write(full + "\n") // the rewrite completes (new bytes, same cluster)
	ft.pollExpect(4, "completed rewrite")

	ft.write(full)
	ft.pollExpect(4, "growth") // never suspect
	ft.write(clusterYAML(1))
	ft.pollExpect(4, "a real scale-down, first seen")
	time.Sleep(ft.f.Settle + 10*time.Millisecond)
	ft.pollExpect(1, "a real scale-down that stayed")
	if !ft.logged("it stayed unchanged, so it is meant") {
		t.Error("applying a settled shrink was not logged")
	}
	ft.write(clusterYAML(2))
	ft.pollExpect(2, "adding a node")
}

// TestFileWithoutNodesIsNeverServed: a truncated file, or one that holds
// only pods and Services, is refused however long it stays: the last good
// config is served, the refusal reaches the sink once per content and ends
// when a file with nodes arrives. At start, nothing is served from it.
func TestFileWithoutNodesIsNeverServed(t *testing.T) {
	ft := newFileTest(t)
	var refusals []string
	ft.sink.Refused = func(reason string) { refusals = append(refusals, reason) }
	ft.write("")
	ft.pollExpect(0, "an empty file at start")
	ft.write(clusterYAML(3))
	ft.pollExpect(3, "first load")
	for _, content := range []string{"", "apiVersion: v1\nkind: List\nitems: []\n", podsOnly} {
		ft.write(content)
		for range 3 {
			ft.pollExpect(3, fmt.Sprintf("a file without nodes (%.20q)", content))
			time.Sleep(ft.f.Settle)
		}
	}
	ft.write(clusterYAML(3))
	ft.pollExpect(3, "the file served before, back")
	ft.write("")
	ft.pollExpect(3, "empty again")
	ft.write(clusterYAML(3) + "\n")
	ft.pollExpect(3, "a file with nodes again")
	want := []string{"holds no Node", "", "holds no Node", "holds no Node", "holds no Node", "", "holds no Node", ""}
	if len(refusals) != len(want) {
		t.Fatalf("refusals %q, want %d (one per content)", refusals, len(want))
	}
	for i, w := range want {
		if w == "" && refusals[i] != "" || !strings.Contains(refusals[i], w) {
			t.Errorf("refusal %d: %q, want %q", i, refusals[i], w)
		}
	}
	if !ft.logged("holds no Node: refused") {
		t.Error("the refusal was not logged")
	}
}

const podsOnly = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nspec: {nodeName: node-1}\nstatus: {phase: Running, podIP: 10.244.1.9}\n"

// TestSmallChangesApplyAtOnce: removing one node of four is an ordinary
// change, applied at the next poll.
func TestSmallChangesApplyAtOnce(t *testing.T) {
	ft := newFileTest(t)
	ft.write(clusterYAML(4))
	ft.pollExpect(4, "first load")
	ft.write(clusterYAML(3))
	ft.pollExpect(3, "one node removed")
	if ft.logged("settle") {
		t.Error("an ordinary change was treated as suspect")
	}
}
