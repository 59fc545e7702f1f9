package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestConnectThroughServedConfig is the tunnel test with everything delivered
// by spoke serve over authenticated ADS instead of static files: node
// proxies connect over TLS with kubelet-like client certificates (one file
// holding cert and key, read through file-based SDS as from
// /var/lib/kubelet/pki), the apiserver proxy over the server's Unix socket;
// the rc:// listener arrives over LDS, the apiserver proxies over EDS,
// tunnel certificates over SDS, issued by the server's tunnel CA. Envoys
// start from Bootstrap output only. Healthy Envoys syncing leave no warning
// in the server log (before, every SotW node proxy's first secret request
// named one of its two secrets, and go-control-plane's ADS mode answered it
// with nothing but a warning, "not listed").
func TestConnectThroughServedConfig(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	serve(t, "127.0.1.1", tp.port, "node-a/kubelet")
	file := writeCluster(t, tp)
	sec := startSecureServer(t, tp, file, time.Hour)
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	sec.startNodeProxy(t, tp.bin, "node-b", true)
	sock := tp.settings.EgressSocketPath
	waitForTunnel(t, sock, fmt.Sprintf("127.1.1.7:%d", tp.port))
	waitForTunnel(t, sock, fmt.Sprintf("127.1.2.7:%d", tp.port))
	for _, tc := range []struct{ target, want string }{
		{fmt.Sprintf("127.1.1.7:%d", tp.port), "node-a/pod web-a"},
		{fmt.Sprintf("127.1.2.7:%d", tp.port), "node-b/pod web-b"},
		{fmt.Sprintf("node-a:%d", tp.port), "node-a/kubelet"},
	} {
		if got, status := roundTrip(t, sock, tc.target); status != http.StatusOK || got != tc.want {
			t.Errorf("CONNECT %s: status %d, answer %q; want %q", tc.target, status, got, tc.want)
		}
	}
	if _, status := roundTrip(t, sock, "10.99.99.99:80"); status == http.StatusOK {
		t.Error("CONNECT to an unknown target succeeded")
	}
	want := map[string]string{"apiserver": "local xDS socket", "node/node-a": "CN=system:node:node-a,O=system:nodes", "node/node-b": "CN=system:node:node-b,O=system:nodes"}
	for _, st := range sec.srv.Tracker().Status() {
		if w, ok := want[st.Proxy]; ok && st.Authenticated == w {
			delete(want, st.Proxy)
		}
	}
	if len(want) > 0 {
		t.Errorf("streams not authenticated as expected: %v missing in %+v", want, sec.srv.Tracker().Status())
	}
	if warnings := grepLines(sec.logs.String(), "level=warning"); warnings != "" {
		t.Errorf("the server warned while healthy Envoys connected:\n%s", warnings)
	}
}
