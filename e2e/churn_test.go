package e2e

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/spokeproxy/spoke/e2e/datapath"
)

// TestSetupChurnBesideBulkFailsNothing: 3,000 short streams set up back to
// back through one node's tunnels while 8 paced bulk streams run through the
// same tunnels. Under this load the node proxy's Envoy now and then ends a
// tunnel with GOAWAY (INTERNAL_ERROR, "The user callback function failed",
// right after the reset of a short stream; with Envoy's own buffers too):
// 5 of 9 benchmark rounds of 1,000 set-ups got a 503 "remote refused stream
// reset" before the apiserver proxy retried refused streams. Every set-up
// must now succeed. The streams the ended tunnel carried end with it: a
// bulk stream cut that way is reported, not failed, as spoke cannot keep it
// (docs/envoy.md).
func TestSetupChurnBesideBulkFailsNothing(t *testing.T) {
	cfg := benchConfigFor(false)
	cfg.apiWorkers, cfg.nodeWorkers = manifestWorkers(t)
	cfg.settings = os.Getenv("SPOKE_BENCH_SETTINGS") // to compare tunnel settings
	env := startSpoke(t, cfg)
	const setups = 3000
	bulk := env.helper.Bulk(8, env.path, env.bulkTarget, 200_000_000)
	times, moved, err := datapath.SetupTimesBeside(context.Background(), env.dial, env.targets[0], setups, 0, bulk)
	t.Logf("%d set-ups, p50 %v, p99 %v, beside %.0f MB/s of bulk; tunnels ended and CONNECTs retried:\n%s", len(times),
		datapath.Percentile(times, .5), datapath.Percentile(times, .99), moved.MBps(),
		env.envoyStats("upstream_rq_retry", "node-a.upstream_cx_destroy_remote"))
	switch {
	case err == nil:
	case len(times) == setups && strings.Contains(err.Error(), "bulk stream"):
		t.Logf("every set-up worked; a tunnel the node proxy ended cut a bulk stream (Envoy, docs/envoy.md): %v", err)
	default:
		t.Fatal(err)
	}
}
