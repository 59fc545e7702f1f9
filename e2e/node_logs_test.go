package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// TestHealthyNodeProxyIsQuiet runs a node proxy with the manifests' logging
// flags (component log levels, a JSON log format): holding its tunnels,
// it writes no log line for seconds (it logged every tunnel re-check, about
// 86,000 lines a day, before the manifests set io:warning); when its
// apiserver proxy goes, the lost tunnels show within seconds; and every line
// is JSON with the fields spoke serve's JSON lines have, the apiserver
// proxy's too.
func TestHealthyNodeProxyIsQuiet(t *testing.T) {
	t.Parallel() // mostly waits on timers, on loopback ports of its own: runs beside others
	tp := newTopology(t)
	serve(t, "127.1.1.7", tp.port, "node-a/pod web-a")
	target, sock := fmt.Sprintf("127.1.1.7:%d", tp.port), tp.settings.EgressSocketPath
	sec := startSecureServer(t, tp, writeCluster(t, tp), time.Hour)
	api := sec.startAPIServerProxyWith(t, tp.bin, "apiserver-1", manifestLogFlags(t, "apiserver proxy")...)
	node := sec.startNodeProxyFlags(t, tp.bin, "node-a", manifestLogFlags(t, "node proxy")...)
	waitForTunnel(t, sock, target)
	time.Sleep(2 * time.Second) // the start's lines, and the first re-checks
	quietFrom := len(node.Log())
	time.Sleep(3 * envoy.TunnelMaintainInterval)
	if extra := strings.TrimSpace(node.Log()[quietFrom:]); extra != "" {
		t.Errorf("a healthy node proxy logged, over three tunnel re-checks:\n%.2000s", extra)
	}
	lostFrom := len(node.Log())
	api.Stop()
	waitFor(t, 10*time.Second, "the node proxy to log its lost tunnels", func() bool {
		return strings.Contains(node.Log()[lostFrom:], "reverse connections")
	})
	for _, proxy := range []*envoytest.Process{node, api} {
		for _, line := range strings.Split(strings.TrimSpace(proxy.Log()), "\n") {
			var fields map[string]any
			if err := json.Unmarshal([]byte(line), &fields); err != nil || fields["level"] == nil || fields["msg"] == nil || fields["time"] == nil {
				t.Errorf("%s: not a JSON line with time, level and msg: %.300s", proxy.Name, line)
				break
			}
		}
	}
}

// manifestLogFlags are the logging flags the manifests give an Envoy (the
// "node proxy" or the "apiserver proxy"): --component-log-level and
// --log-format.
func manifestLogFlags(t *testing.T, proxy string) []string {
	var args []string
	if proxy == "node proxy" {
		var ds appsv1.DaemonSet
		renderedObject(t, readRepoFile(t, "manifests/base/node-proxy.yaml"), "DaemonSet", &ds)
		args = containerArgs(t, ds.Spec.Template.Spec, "envoy")
	} else {
		var pod corev1.Pod
		renderedObject(t, readRepoFile(t, "manifests/control-plane/spoke-control-plane.yaml"), "Pod", &pod)
		args = containerArgs(t, pod.Spec, "apiserver-proxy")
	}
	var flags []string
	for _, flag := range []string{"--component-log-level", "--log-format"} {
		v := flagValue(args, flag)
		if v == "" {
			t.Fatalf("the manifests run the %s's Envoy without %s", proxy, flag)
		}
		flags = append(flags, flag, v)
	}
	return flags
}

func containerArgs(t *testing.T, spec corev1.PodSpec, container string) []string {
	for _, c := range spec.Containers {
		if c.Name == container {
			return c.Args
		}
	}
	t.Fatalf("no container %q in the manifest", container)
	return nil
}
