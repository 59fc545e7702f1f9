package e2e

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// overloadFactor is the run-queue length per core above which a latency
// bound is not judged: make test's two lanes run this 2-core machine at a
// load of 40-60, where an Envoy waits seconds for a core and the bounds
// below measure the machine, not spoke's mechanism.
const overloadFactor = 4

// checkWithin fails the test when got exceeds limit, unless the machine was
// overloaded (the 1-minute load average above overloadFactor per core):
// then it logs that the bound was not judged, with the load, so that the
// run says so. Run alone (make e2e), every bound is judged.
func checkWithin(t *testing.T, what string, got, limit time.Duration) {
	t.Helper()
	if got <= limit {
		return
	}
	if load, ok := loadAverage(); ok && load > overloadFactor*float64(runtime.NumCPU()) {
		t.Logf("%s took %v, over its bound of %v, not judged: load %.0f on %d cores", what, got, limit, load, runtime.NumCPU())
		return
	}
	t.Errorf("%s took %v, want within %v", what, got, limit)
}

// loadAverage is the 1-minute load average (Linux /proc/loadavg).
func loadAverage() (float64, bool) {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(raw))
	if len(fields) == 0 {
		return 0, false
	}
	load, err := strconv.ParseFloat(fields[0], 64)
	return load, err == nil
}
