package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
)

// TestOverloadedApiserverProxyShedsLoad: the overload manager is live. An
// apiserver proxy whose heap limit (1 MiB) is far below what it uses refuses
// new CONNECTs instead of growing; the same proxy with the default limit
// carries them (TestConnectThroughReverseTunnels).
func TestOverloadedApiserverProxyShedsLoad(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	s := tp.settings
	b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", translator.APIServerProxy(&tp.cluster, s),
		tp.pki.Secrets(t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
	if err != nil {
		t.Fatal(err)
	}
	b.OverloadManager = envoy.OverloadManager(0, 1<<20)
	tp.apiProxy = envoytest.Start(t, tp.bin, "overloaded-apiserver-proxy", b)
	tp.startNodeProxy("node-a", "node-a")
	waitFor(t, 10*time.Second, "the overload manager to see the heap pressure", func() bool {
		return tp.apiProxy.Stat("overload.envoy.overload_actions.stop_accepting_requests.active") == 1
	})
	target := fmt.Sprintf("127.1.1.7:%d", tp.port)
	for i := 0; i < 5; i++ {
		if _, status := roundTrip(t, s.EgressSocketPath, target); status == http.StatusOK {
			t.Fatalf("an overloaded apiserver proxy accepted CONNECT %s", target)
		}
	}
	rejected := tp.apiProxy.StatSum(".downstream_cx_overload_reject") + tp.apiProxy.StatSum(".downstream_rq_overload_close")
	t.Logf("heap pressure %d%%; connections or requests refused for overload: %d", tp.apiProxy.Stat("overload.envoy.resource_monitors.fixed_heap.pressure"), rejected)
	if rejected == 0 {
		t.Errorf("the CONNECTs were refused, but not by the overload manager:\n%s", tp.apiProxy.Stats("egress"))
	}
}
