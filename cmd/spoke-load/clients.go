package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/model"
)

// out serialises the child's report lines.
type out struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *out) line(format string, args ...any) {
	o.mu.Lock()
	fmt.Fprintf(o.w, format+"\n", args...)
	o.w.Flush()
	o.mu.Unlock()
}

// runClients opens one ADS stream per node, each on its own connection like
// a real Envoy, subscribes to every type a node proxy uses, ACKs everything,
// and reports new pod IPs in route pushes (RECV) and pushes that carry no
// change for this node (EXTRA). It exits when stdin closes.
func runClients(addr string, cfg config) error {
	// The clients stand for 5,000 Envoys (C++, no garbage collector) on
	// other machines; here they share the server's cores, so their own
	// collector runs only when their heap reaches 2 GiB (none during the
	// start: ~450 MiB) to leave the CPU to the work Envoy would do too: TLS
	// handshakes and decoding.
	debug.SetGCPercent(-1)
	debug.SetMemoryLimit(2 << 30)
	o := &out{w: bufio.NewWriter(os.Stdout)}
	var signer *clientSigner
	if cfg.tlsDir != "" {
		var err error
		if signer, err = loadClientSigner(cfg.tlsDir); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ready readiness
	var synced atomic.Bool
	clients := make([]*client, cfg.nodes)
	for i := range clients {
		clients[i] = &client{node: nodeName(i), o: o, ready: &ready, total: int64(cfg.nodes), synced: &synced, creds: insecure.NewCredentials()}
		if signer != nil { // a kubelet has its certificate before its node proxy starts
			var err error
			if clients[i].creds, err = signer.credentials(clients[i].node); err != nil {
				return err
			}
		}
	}
	if cfg.clientsProfile != "" {
		f, err := os.Create(cfg.clientsProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		ready.stopProfile = pprof.StopCPUProfile
	}
	o.line("START") // the parent's clock starts here
	for i, c := range clients {
		go c.runRetrying(ctx, addr, float64(i%100) < cfg.deltaFraction*100)
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes stdin when done
	return nil
}

// readiness counts the streams that have their first routes, and stops the
// clients' CPU profile when the last one has.
type readiness struct {
	atomic.Int64
	stopProfile func()
}

type client struct {
	node     string
	o        *out
	ready    *readiness
	total    int64
	synced   *atomic.Bool
	pods     map[string]bool
	seen     map[string]bool // types received at least once
	services string          // the Service domains last received
	creds    credentials.TransportCredentials
}

// runRetrying runs the stream again after each failure, with Envoy's
// back-off as spoke's bootstrap sets it (250 ms doubling to 2 s, jittered):
// at 5,000 simultaneous TLS handshakes some exceed the server's handshake
// deadline, and a real Envoy simply reconnects.
func (c *client) runRetrying(ctx context.Context, addr string, delta bool) {
	for attempt := 0; ; attempt++ {
		err := c.run(ctx, addr, delta)
		if ctx.Err() != nil {
			return
		}
		c.o.line("RETRY %s", c.node)
		if attempt == 0 {
			fmt.Fprintf(os.Stderr, "stream %s (retrying): %v\n", c.node, err)
		}
		c.seen = nil // a new stream's first responses are never extra
		wait := min(250*time.Millisecond<<min(attempt, 3), 2*time.Second)
		time.Sleep(wait/2 + rand.N(wait/2))
	}
}

// envoyDefaultWindow is Envoy's default HTTP/2 stream and connection window.
const envoyDefaultWindow = 256 << 20

func (c *client) run(ctx context.Context, addr string, delta bool) error {
	creds := c.creds
	// A connection attempt not done in 5 s is given up and retried, as the
	// server's handshake deadline would drop it anyway (gRPC's default wait
	// is 20 s, far longer than Envoy's).
	// Small buffers: 5,000 clients in one process would otherwise hold
	// 300 MiB of them, and their garbage collection would take CPU from the
	// server under test on the same cores.
	// Fixed HTTP/2 windows of Envoy's default size (256 MiB): a real node
	// proxy sends no BDP-estimation pings, which gRPC sends when its
	// windows are left dynamic and the server would have to answer.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds), grpc.WithSharedWriteBuffer(true), grpc.WithReadBufferSize(8<<10),
		grpc.WithInitialWindowSize(envoyDefaultWindow), grpc.WithInitialConnWindowSize(envoyDefaultWindow), grpc.WithConnectParams(grpc.ConnectParams{
			MinConnectTimeout: 5 * time.Second,
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 2, Jitter: 0.2, MaxDelay: 2 * time.Second},
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	node := &corev3.Node{Id: c.node, Cluster: translator.ServiceCluster(translator.RoleNode)}
	s := model.DefaultSettings()
	names := map[string][]string{
		resourcev3.ListenerType: nil, resourcev3.ClusterType: nil,
		resourcev3.RouteType:    {translator.NodeTunnelRoute},
		resourcev3.EndpointType: {translator.APIServerProxies},
		resourcev3.SecretType:   {s.Secrets.NodeCertificate, s.Secrets.TunnelCA},
	}
	if delta {
		return c.runDelta(ctx, ads, node, names)
	}
	return c.runSotw(ctx, ads, node, names)
}

func (c *client) runSotw(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, node *corev3.Node, names map[string][]string) error {
	stream, err := ads.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	for typ, n := range names {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typ, ResourceNames: n}
		if first {
			req.Node, first = node, false
		}
		if err := stream.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		c.observe(resp.TypeUrl, resp.Resources)
		if err := stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.TypeUrl, ResourceNames: names[resp.TypeUrl], VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
	}
}

func (c *client) runDelta(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient, node *corev3.Node, names map[string][]string) error {
	stream, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	first := true
	for typ, n := range names {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: n}
		if first {
			req.Node, first = node, false
		}
		if err := stream.Send(req); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		var rs []*anypb.Any
		for _, r := range resp.Resources {
			rs = append(rs, r.Resource)
		}
		c.observe(resp.TypeUrl, rs)
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
	}
}

// observe reports what a push brought this node.
func (c *client) observe(typeURL string, resources []*anypb.Any) {
	now := time.Now().UnixNano()
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	again := c.seen[typeURL]
	c.seen[typeURL] = true
	if typeURL != resourcev3.RouteType {
		if again && c.synced.Load() { // a first response of a type is never extra
			c.o.line("EXTRA %s %s", c.node, typeURL)
		}
		return
	}
	pods, services := map[string]bool{}, ""
	for _, r := range resources {
		rc := new(routev3.RouteConfiguration)
		if r.UnmarshalTo(rc) != nil {
			continue
		}
		for _, vh := range rc.VirtualHosts {
			switch vh.Name {
			case "pods":
				for _, d := range vh.Domains {
					pods[strings.TrimSuffix(d, ":*")] = true
				}
			case "services":
				services = strings.Join(vh.Domains, ",")
			}
		}
	}
	servicesChanged := c.services != "" && services != c.services
	c.services = services
	initial := c.pods == nil
	fresh, gone := 0, 0
	for ip := range pods {
		if !initial && !c.pods[ip] {
			c.o.line("RECV %s %s %d", c.node, ip, now)
			fresh++
		}
	}
	for ip := range c.pods {
		if !pods[ip] {
			gone++ // a deletion applied before its replacement arrived: a needed push
		}
	}
	c.pods = pods
	switch {
	case initial:
		if c.ready.Add(1) == c.total {
			c.synced.Store(true)
			if c.ready.stopProfile != nil {
				c.ready.stopProfile()
			}
			c.o.line("READY")
		}
	case fresh == 0 && gone == 0 && !servicesChanged && again && c.synced.Load():
		c.o.line("EXTRA %s %s", c.node, typeURL)
	}
}
