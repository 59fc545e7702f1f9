package model

import (
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string, ips ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, ip := range ips {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
	}
	return n
}

func pod(name, nodeName, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.PodSpec{NodeName: nodeName},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func TestSharedNodeAddressGoesToNeither(t *testing.T) {
	c, problems := Build(Objects{Nodes: []*corev1.Node{node("a", "10.0.0.1", "10.0.0.9"), node("b", "10.0.0.2", "10.0.0.9")}}, DefaultSettings())
	for _, n := range c.Nodes {
		for _, ip := range n.IPs {
			if ip.Addr.String() == "10.0.0.9" {
				t.Errorf("node %s kept the shared address 10.0.0.9", n.Name)
			}
		}
		if len(n.IPs) != 1 {
			t.Errorf("node %s: want its own address kept, got %v", n.Name, n.IPs)
		}
	}
	if len(problems) != 2 {
		t.Errorf("want one problem per node, got %v", problems)
	}
}

func TestPodIPConflicts(t *testing.T) {
	objs := Objects{
		Nodes: []*corev1.Node{node("a", "10.0.0.1"), node("b", "10.0.0.2")},
		Pods: []*corev1.Pod{
			pod("ok", "a", "10.244.0.5"),
			pod("dup-a", "a", "10.244.9.9"), pod("dup-b", "b", "10.244.9.9"),
			pod("same-node-1", "a", "10.244.0.7"), pod("same-node-2", "a", "10.244.0.7"),
			pod("node-ip", "b", "10.0.0.1"),
		},
	}
	c, problems := Build(objs, DefaultSettings())
	var names []string
	for _, p := range c.Pods {
		names = append(names, p.Name)
	}
	if got := strings.Join(names, ","); got != "ok,same-node-1,same-node-2" {
		t.Errorf("pods kept: %s", got)
	}
	if len(problems) != 3 {
		t.Errorf("want 3 problems (dup-a, dup-b, node-ip), got %v", problems)
	}
}

func TestPodLifecycle(t *testing.T) {
	hostNet := pod("host", "a", "10.0.0.1")
	hostNet.Spec.HostNetwork = true
	done := pod("done", "a", "10.244.0.6")
	done.Status.Phase = corev1.PodSucceeded
	terminating := pod("terminating", "a", "10.244.0.7")
	terminating.DeletionTimestamp = &metav1.Time{}
	dualStack := pod("dual", "a", "")
	dualStack.Status.PodIPs = []corev1.PodIP{{IP: "10.244.0.8"}, {IP: "fd00::8"}}
	c, problems := Build(Objects{Nodes: []*corev1.Node{node("a", "10.0.0.1")}, Pods: []*corev1.Pod{hostNet, done, terminating, dualStack}}, DefaultSettings())
	if len(problems) != 0 {
		t.Errorf("no problems expected, got %v", problems)
	}
	if len(c.Pods) != 2 || c.Pods[0].Name != "dual" || len(c.Pods[0].IPs) != 2 || !c.Pods[1].Terminating {
		t.Errorf("want dual (2 IPs) and terminating, got %+v", c.Pods)
	}
}

func TestAPIServerEndpoints(t *testing.T) {
	ready, notReady := true, false
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"172.16.0.2"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}},
			{Addresses: []string{"172.16.0.1"}},
			{Addresses: []string{"172.16.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: &notReady}},
		},
	}
	other := slice.DeepCopy()
	other.Labels[discoveryv1.LabelServiceName] = "web"
	other.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{"10.9.9.9"}}}
	s := DefaultSettings()
	c, _ := Build(Objects{EndpointSlices: []*discoveryv1.EndpointSlice{slice, other}}, s)
	if len(c.APIServerEndpoints) != 2 || c.APIServerEndpoints[0].Addr.String() != "172.16.0.1" || c.APIServerEndpoints[0].Port != s.TunnelPort {
		t.Errorf("want 172.16.0.1 and .2 on the tunnel port, got %+v", c.APIServerEndpoints)
	}
	s.APIServerEndpoints = []string{"192.0.2.1:9000"}
	c, _ = Build(Objects{EndpointSlices: []*discoveryv1.EndpointSlice{slice}}, s)
	if len(c.APIServerEndpoints) != 1 || c.APIServerEndpoints[0].Port != 9000 {
		t.Errorf("settings must replace the slices, got %+v", c.APIServerEndpoints)
	}
}

func TestSettings(t *testing.T) {
	s := DefaultSettings()
	if err := s.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	for name, mutate := range map[string]func(*Settings){
		"16 MiB connection window":     func(s *Settings) { s.TunnelConnectionWindow = 16 << 20 },
		"4 MiB window, 256 KiB buffer": func(s *Settings) { s.TunnelBufferLimit, s.TunnelConnectionWindow = 256<<10, 4<<20 },
		"socket mode 0400":             func(s *Settings) { s.EgressSocketMode = 0o400 },
	} {
		good := DefaultSettings()
		mutate(&good)
		if err := good.Validate(); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}
	for name, mutate := range map[string]func(*Settings){
		"cluster id with colon":       func(s *Settings) { s.ClusterID = "a:b" },
		"empty tenant":                func(s *Settings) { s.TenantID = "" },
		"relative socket":             func(s *Settings) { s.EgressSocketPath = "egress.sock" },
		"bad routing":                 func(s *Settings) { s.PodRouting = "prefix" },
		"zero count":                  func(s *Settings) { s.TunnelsPerEndpoint = 0 },
		"bad endpoint":                func(s *Settings) { s.APIServerEndpoints = []string{"apiserver:443"} },
		"stream window < 64 KiB":      func(s *Settings) { s.TunnelStreamWindow = 1000 },
		"connection window > 2^31-1":  func(s *Settings) { s.TunnelConnectionWindow = 1 << 31 },
		"connection window 2 MiB":     func(s *Settings) { s.TunnelConnectionWindow = 2 << 20 },
		"socket mode 0666":            func(s *Settings) { s.EgressSocketMode = 0o666 },
		"socket mode 0660":            func(s *Settings) { s.EgressSocketMode = 0o660 },
		"socket mode 0601":            func(s *Settings) { s.EgressSocketMode = 0o601 },
		"Services take every stream":  func(s *Settings) { s.ServiceMaxStreams = uint32(s.EgressMaxConnections) },
		"no Service streams":          func(s *Settings) { s.ServiceMaxStreams = 0 },
		"one node takes every stream": func(s *Settings) { s.NodeMaxStreams = uint32(s.EgressMaxConnections) },
		"no node streams":             func(s *Settings) { s.NodeMaxStreams = 0 },
		"pod range not a CIDR":        func(s *Settings) { s.AllowPodAddresses = []string{"127.0.0.1"} },
		"connection window < 16 buffers": func(s *Settings) {
			s.TunnelBufferLimit, s.TunnelConnectionWindow = 256<<10, 4<<20-1
		},
	} {
		bad := DefaultSettings()
		mutate(&bad)
		if bad.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestLoadSettingsRejectsUnknownFields(t *testing.T) {
	path := t.TempDir() + "/s.yaml"
	if err := writeFile(path, "clusterName: typo\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSettings(path); err == nil || !strings.Contains(err.Error(), "clusterName") {
		t.Errorf("want an error naming the unknown field, got %v", err)
	}
	if err := writeFile(path, "connectTimeout: 750ms\ntunnelPort: 9443\n"); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSettings(path)
	if err != nil || s.TunnelPort != 9443 || s.ConnectTimeout.String() != "750ms" || s.ClusterID != "spoke-nodes" {
		t.Errorf("got %+v, %v", s, err)
	}
}

// TestSettingsExampleIsTheDefaults keeps examples/settings.yaml (the
// documentation of every setting) equal to DefaultSettings.
func TestSettingsExampleIsTheDefaults(t *testing.T) {
	s, err := LoadSettings("../../examples/settings.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, DefaultSettings()) {
		t.Errorf("examples/settings.yaml differs from DefaultSettings:\n%+v\n%+v", s, DefaultSettings())
	}
}
