package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// TestServeFollowsRealAPIServer runs spoke serve's Kubernetes source against a
// real kube-apiserver and etcd: nodes and pods created through the API reach
// the node proxy's xDS stream, the apiserver's own EndpointSlice becomes the
// tunnel endpoint, and after an apiserver restart changes flow again.
func TestServeFollowsRealAPIServer(t *testing.T) {
	cp := startControlPlane(t)
	client := cp.client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	srv := startKubeServer(ctx, t, client, logrus.New().WithField("source", "kubernetes"))

	createNode(t, client, "node-a", "10.0.0.5", "10.244.1.0/24")
	createPod(t, client, "web-1", "node-a", "10.244.1.7")

	conn, err := grpc.NewClient(srv.Addr("xds"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &nodeWatch{t: t, stream: stream, node: &corev3.Node{Id: "node-a", Cluster: "spoke-node"}, subscribed: map[string]bool{}}
	w.waitFor(resourcev3.RouteType, "10.244.1.7:*")
	// The apiserver maintains default/kubernetes itself: its advertise address
	// becomes the node proxies' tunnel endpoint.
	w.waitFor(resourcev3.EndpointType, "192.0.2.10")

	cp.restart()
	createPod(t, client, "web-2", "node-a", "10.244.1.8")
	w.waitFor(resourcev3.RouteType, "10.244.1.8:*")

	if err := client.CoreV1().Pods("default").Delete(ctx, "web-1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	w.waitForAbsent(resourcev3.RouteType, "10.244.1.7:*")
}

// nodeWatch is one node proxy's ADS stream, as a minimal Envoy would use it:
// subscribe to a type on first use, ACK every response.
type nodeWatch struct {
	t          *testing.T
	stream     discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node       *corev3.Node // sent with the first request only
	subscribed map[string]bool
}

func (w *nodeWatch) waitFor(typeURL, want string) {
	w.t.Helper()
	w.waitUntil(typeURL, func(s string) bool { return strings.Contains(s, want) }, want)
}

func (w *nodeWatch) waitForAbsent(typeURL, gone string) {
	w.t.Helper()
	w.waitUntil(typeURL, func(s string) bool { return !strings.Contains(s, gone) }, "no "+gone)
}

// waitUntil ACKs responses until one of type typeURL satisfies ok.
func (w *nodeWatch) waitUntil(typeURL string, ok func(string) bool, what string) {
	t, stream := w.t, w.stream
	t.Helper()
	if !w.subscribed[typeURL] {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typeURL, ResourceNames: namesFor(typeURL)}
		if len(w.subscribed) == 0 {
			req.Node = w.node
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		w.subscribed[typeURL] = true
	}
	deadline := time.After(60 * time.Second)
	for {
		got := make(chan *discoveryv3.DiscoveryResponse, 1)
		go func() { r, _ := stream.Recv(); got <- r }()
		select {
		case r := <-got:
			if r == nil {
				t.Fatal("xDS stream ended")
			}
			_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: namesFor(r.TypeUrl)})
			if r.TypeUrl == typeURL && ok(r.String()) {
				return
			}
		case <-deadline:
			t.Fatalf("no %s update with %s within 60s", typeURL, what)
		}
	}
}

func namesFor(typeURL string) []string {
	switch typeURL {
	case resourcev3.RouteType:
		return []string{"node-tunnel"}
	case resourcev3.EndpointType:
		return []string{"apiserver-proxies"}
	}
	return nil
}

func createNode(t *testing.T, c kubernetes.Interface, name, ip, cidr string) {
	t.Helper()
	ctx := context.Background()
	n, err := c.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node: %v", err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = 10250
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("node status: %v", err)
	}
}

func createPod(t *testing.T, c kubernetes.Interface, name, node, ip string) {
	t.Helper()
	ctx := context.Background()
	var p *corev1.Pod
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for { // right after a restart the apiserver may still refuse writes
		p, err = c.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "main", Image: "registry.k8s.io/pause:3.10"}}},
		}, metav1.CreateOptions{})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("create pod: %v", err)
	}
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
	if _, err := c.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("pod status: %v", err)
	}
}

// startKubeServer runs a spoke server (plaintext xDS: these tests are about
// the Kubernetes source) fed by informers on client, logging to srcLog.
func startKubeServer(ctx context.Context, t *testing.T, client kubernetes.Interface, srcLog logrus.FieldLogger) *xds.Server {
	t.Helper()
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: model.DefaultSettings(), Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: logrus.New().WithField("test", t.Name()),
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Run(ctx) }()
	src := &source.Kubernetes{Client: client, Log: srcLog}
	go func() { _ = src.Run(ctx, srv.Sink()) }()
	return srv
}
