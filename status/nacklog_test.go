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
	s := &StreamStatus{Proxy: "node/a", nackLogs: map[string]*nackLog{}, Types: map[string]*TypeStatus{}}
	for range 100 {
		tr.logNack(s, "Cluster", nil, "bad cluster")
	}
	if n := len(hook.AllEntries()); n != 1 {
		t.Fatalf("%d lines for 100 NACKs at once, want 1", n)
	}
	s.nackLogs["Cluster"].at = time.Now().Add(-nackLogInterval)
	tr.logNack(s, "Cluster", nil, strings.Repeat("é", MaxDetail))
	last := hook.LastEntry()
	if len(hook.AllEntries()) != 2 || last.Data["nacks"] != 100 || !strings.Contains(last.Message, "100 more times") {
		t.Fatalf("want a summary of the 99 held back and this one: %d lines, last %q %v", len(hook.AllEntries()), last.Message, last.Data)
	}
	tr.logNack(s, "Cluster", nil, "again")
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
