package e2e

import (
	"fmt"
	"testing"
	"time"
)

// TestEnvoysConnectWithoutCacheWarnings: real Envoys (SotW and delta) that
// sync their whole config leave no warning in the server log. Before, every
// SotW node proxy's first secret request named one of its two secrets, and
// go-control-plane's ADS mode answered nothing but a warning ("not listed")
// until the Envoy asked for both.
func TestEnvoysConnectWithoutCacheWarnings(t *testing.T) {
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	serve(t, "127.1.2.7", tp.port, "node-b/pod web-b")
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	sec.startAPIServerProxy(t, tp.bin, "apiserver-1")
	sec.startNodeProxy(t, tp.bin, "node-a", false)
	sec.startNodeProxy(t, tp.bin, "node-b", true)
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.1.7:%d", tp.port))
	waitForTunnel(t, tp.settings.EgressSocketPath, fmt.Sprintf("127.1.2.7:%d", tp.port))
	if warnings := grepLines(sec.logs.String(), "level=warning"); warnings != "" {
		t.Errorf("the server warned while healthy Envoys connected:\n%s", warnings)
	}
}
