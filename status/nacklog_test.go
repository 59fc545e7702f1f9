package status

import (
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/spokeproxy/spoke/metrics"
)

// TestNackLogsAreSummarised: the first NACK of a type is logged; the next
// ones within nackLogInterval only counted; the first after it logs how
// many came and the latest message (cut), and so does the stream's end.
func TestNackLogsAreSummarised(t *testing.T) {
	log, hook := logtest.NewNullLogger()
	tr := NewTracker(nil, metrics.New(), log)
	ts := &TypeStatus{}
	s := &StreamStatus{Proxy: "node/a", Types: map[string]*TypeStatus{resourcev3.ClusterType: ts}}
	nack := func(message string) {
		ts.LastNack = CutDetail(message)
		tr.logNack(s, resourcev3.ClusterType, ts)
	}
	for range 100 {
		nack("bad cluster")
	}
	if n := len(hook.AllEntries()); n != 1 {
		t.Fatalf("%d lines for 100 NACKs at once, want 1", n)
	}
	ts.nackLog.at = time.Now().Add(-nackLogInterval)
	nack(strings.Repeat("é", MaxDetail))
	last := hook.LastEntry()
	if len(hook.AllEntries()) != 2 || last.Data["nacks"] != 100 || !strings.Contains(last.Message, "100 more times") {
		t.Fatalf("want a summary of the 99 held back and this one: %d lines, last %q %v", len(hook.AllEntries()), last.Message, last.Data)
	}
	nack("again")
	tr.flushNackLogs(s)
	if last := hook.LastEntry(); len(hook.AllEntries()) != 3 || last.Data["nacks"] != 1 || !strings.Contains(last.Message, "the last: again") {
		t.Fatalf("the stream's end should log the NACK held back: %q %v", last.Message, last.Data)
	}
}

func TestCutDetailKeepsCharactersWhole(t *testing.T) {
	cut := CutDetail(strings.Repeat("é", MaxDetail))
	if !strings.HasSuffix(cut, "... (1024 more bytes cut)") || !strings.HasPrefix(cut, strings.Repeat("é", MaxDetail/2)) {
		t.Errorf("cut %q", cut[len(cut)-40:])
	}
	if short := "short"; CutDetail(short) != short {
		t.Errorf("a short message changed: %q", CutDetail(short))
	}
	if TypeLabel(resourcev3.ClusterType) != "Cluster" || TypeLabel("type.googleapis.com/x.Y") != "unknown" {
		t.Error("type labels")
	}
}
