package e2e

import (
	"context"
	"os"
	"testing"

	"github.com/spokeproxy/spoke/e2e/datapath"
)

// TestSetupChurnBesideBulkFailsNothing: 3,000 short streams set up back to
// back through one node's tunnels while 8 paced bulk streams run through the
// same tunnels. Each short stream ends with the apiserver proxy resetting it
// (its client closed), and nghttp2, the node proxy's HTTP/2 server codec,
// ends a connection whose peer resets faster than its token bucket allows
// (1,000, then 33 a second, unless set): with Envoy's defaults a tunnel went
// every ~1,000 set-ups, with the bulk streams on it. Every set-up and every
// bulk stream must survive and the node proxy must end no tunnel (no HTTP/2
// protocol error, no tunnel connection ended at the apiserver proxy). The
// bulk's rate is logged, not checked: beside a cold CI run's compiles it fell
// to 173 of 200 MB/s with no tunnel ended, so a rate threshold measured the
// machine, not the fault (with nghttp2's default bucket: 1-2 tunnels ended
// in every run).
func TestSetupChurnBesideBulkFailsNothing(t *testing.T) {
	cfg := benchConfigFor(false)
	cfg.apiWorkers, cfg.nodeWorkers = manifestWorkers(t)
	cfg.settings = os.Getenv("SPOKE_BENCH_SETTINGS") // to compare tunnel settings
	env := startSpoke(t, cfg)
	const setups, pace = 3000, 200_000_000
	endedBefore := env.apiStat("cluster.node/node-a.upstream_cx_destroy")
	bulk := env.helper.Bulk(8, env.path, env.bulkTarget, pace)
	times, moved, err := datapath.SetupTimesBeside(context.Background(), env.dial, env.targets[0], setups, 0, bulk)
	tunnelsEnded := env.apiStat("cluster.node/node-a.upstream_cx_destroy") - endedBefore
	t.Logf("%d set-ups, p50 %v, p99 %v, beside %.0f MB/s of bulk (paced to %d MB/s); tunnels to node-a that ended at the apiserver proxy: %d; node proxy:\n%s",
		len(times), datapath.Percentile(times, .5), datapath.Percentile(times, .99), moved.MBps(), pace/1_000_000, tunnelsEnded,
		env.envoyStats("node_tunnel.downstream_cx_protocol_error", "http2.rx_reset", "upstream_rq_retry"))
	if err != nil {
		t.Fatal(err)
	}
	if errs := env.nodeStat("http.node_tunnel.downstream_cx_protocol_error"); errs > 0 || tunnelsEnded > 0 {
		t.Errorf("under set-up churn %d tunnels to node-a ended (the node proxy counted %d HTTP/2 protocol errors); want none", tunnelsEnded, errs)
	}
}
