// Command coredns is CoreDNS with only the plugins of the Corefile kubeadm
// writes (cmd/kubeadm/app/phases/addons/dns/manifests.go), for the kind
// node image's coredns image. Upstream's main links all 59 plugins and
// their cloud SDKs (3.7 minutes of both cores from an empty build cache);
// built here, in the module that builds Kubernetes, it shares client-go's
// compile with the other binaries. A Corefile naming any other plugin
// fails at start with "unknown directive".
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	coremain.Run()
}
