package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spokeproxy/spoke/e2e/datapath"
	"github.com/spokeproxy/spoke/source"
	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

type config struct {
	nodes, podsPerNode, services, churn int
	duration, holdoff, maxDelay         time.Duration
	deltaFraction                       float64
	memProfile                          string
	startProfile                        string
	clientsProfile                      string
	memoryLimit                         int64
	serviceEvery                        time.Duration
	serviceCIDR                         string
	tls                                 bool
	tlsDir                              string
}

// synthetic builds the cluster: node i has pod CIDR 10.(100+i/250).(i%250).0/24.
func synthetic(cfg config) model.Objects {
	var objs model.Objects
	for i := 0; i < cfg.nodes; i++ {
		name := nodeName(i)
		objs.Nodes = append(objs.Nodes, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       corev1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/250, i%250)}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.%d.%d.10", 16+i/250, i%250)}}},
		})
		for p := 0; p < cfg.podsPerNode; p++ {
			objs.Pods = append(objs.Pods, pod(i, p, p+2))
		}
	}
	for s := 0; s < cfg.services; s++ {
		objs.Services = append(objs.Services, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("svc-%04d", s)},
			Spec: corev1.ServiceSpec{ClusterIPs: []string{fmt.Sprintf("10.96.%d.%d", s/250, s%250)},
				Ports: []corev1.ServicePort{{Port: 443}, {Port: 8080}}},
		})
	}
	if cfg.serviceCIDR != "" {
		objs.ServiceCIDRs = []*networkingv1.ServiceCIDR{{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes"},
			Spec: networkingv1.ServiceCIDRSpec{CIDRs: []string{cfg.serviceCIDR}}}}
	}
	objs.EndpointSlices = []*discoveryv1.EndpointSlice{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes", Labels: map[string]string{discoveryv1.LabelServiceName: "kubernetes"}},
		Endpoints:  []discoveryv1.Endpoint{{Addresses: []string{"172.31.0.10"}}, {Addresses: []string{"172.31.0.11"}}, {Addresses: []string{"172.31.0.12"}}},
	}}
	return objs
}

func nodeName(i int) string { return fmt.Sprintf("node-%05d", i) }

func pod(node, slot, host int) *corev1.Pod {
	ip := fmt.Sprintf("10.%d.%d.%d", 100+node/250, node%250, host)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("pod-%05d-%03d", node, slot)},
		Spec:       corev1.PodSpec{NodeName: nodeName(node)},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func runParent(cfg config) error {
	if cfg.memoryLimit > 0 {
		debug.SetMemoryLimit(cfg.memoryLimit) // as GOMEMLIMIT on spoke serve; the child keeps Go's default
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	s := model.DefaultSettings()
	// The default pod routing would send octet-aligned pod IPs as one prefix
	// route; node proxies list pod IPs one by one either way, which is what
	// the clients watch.
	opts := xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: !cfg.tls, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: s, Holdoff: cfg.holdoff, MaxDelay: cfg.maxDelay,
		CertValidity: 24 * time.Hour, ShutdownGrace: time.Second, Log: log,
		// Every simulated node connects from 127.0.0.1.
		Limits: xds.ConnectionLimits{PerSource: cfg.nodes + 100, Total: cfg.nodes + 100},
	}
	if cfg.tls {
		dir, err := os.MkdirTemp("", "spoke-load")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if opts.TLS, opts.Issuer, err = parentTLS(dir); err != nil {
			return err
		}
		cfg.tlsDir = dir
	}
	srv, err := xds.NewServer(opts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Run(ctx) }()
	sink := srv.Sink()
	sink.Store.Replace(synthetic(cfg), nil) // the generated objects are garbage after this
	sink.Synced()
	for !srv.Publisher().Synced() {
		time.Sleep(10 * time.Millisecond)
	}

	self, _ := os.Executable()
	child := exec.Command(self, "-child", srv.Addr("xds"), "-nodes", strconv.Itoa(cfg.nodes),
		"-delta-fraction", strconv.FormatFloat(cfg.deltaFraction, 'f', -1, 64), "-tls-dir", cfg.tlsDir, "-clients-cpuprofile", cfg.clientsProfile)
	child.Stderr = os.Stderr
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	if cfg.startProfile != "" {
		f, err := os.Create(cfg.startProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	if err := child.Start(); err != nil {
		return err
	}
	events := make(chan string, 4096)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			events <- sc.Text()
		}
		close(events)
	}()
	for line := range events { // the child has its clients' certificates
		if strings.HasPrefix(line, "START") {
			break
		}
	}
	clientsBefore, _ := datapath.ProcessCPU(child.Process.Pid)
	start, cpuBefore := time.Now(), cpuTime()
	var r results
	for line := range events {
		if strings.HasPrefix(line, "RETRY") {
			r.retries++
		}
		if strings.HasPrefix(line, "READY") {
			break
		}
	}
	allServed := time.Since(start)
	r.startCPU = cpuTime() - cpuBefore
	clientsAfter, _ := datapath.ProcessCPU(child.Process.Pid)
	r.clientsCPU = clientsAfter - clientsBefore
	if cfg.startProfile != "" {
		pprof.StopCPUProfile()
	}
	fmt.Printf("all %d streams served their config in %v\n", cfg.nodes, allServed.Round(time.Millisecond))

	changes := churn(sink, cfg)
	time.Sleep(2 * time.Second) // let the last changes land
	rssBytes, _ := datapath.ProcessRSS(os.Getpid())
	rss, goroutines := float64(rssBytes)/(1<<20), runtime.NumGoroutine()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	heap := memUse{heap: float64(mem.HeapInuse) / (1 << 20), stacks: float64(mem.StackInuse) / (1 << 20)}
	if cfg.memProfile != "" {
		if err := writeHeapProfile(cfg.memProfile); err != nil {
			return err
		}
	}
	stdin.Close()
	total := len(changes)
	r.served, r.changes, r.rss, r.heap, r.goroutines = allServed, total, rss, heap, goroutines
	collect(events, changes, &r)
	_ = child.Wait()
	report(cfg, r)
	return nil
}

type change struct {
	node string
	at   time.Time
}

// churn replaces one pod (new name, new IP) on a random node, cfg.churn
// times per second, the way informer events arrive (delete + add); each
// change is keyed by the new IP.
func churn(sink source.Sink, cfg config) map[string]change {
	changes := map[string]change{}
	rng := rand.New(rand.NewPCG(7, 11))
	next := map[int]int{}        // node -> next host byte to use
	names := map[[2]int]string{} // node, slot -> current pod name if replaced
	tick := time.NewTicker(time.Second / time.Duration(cfg.churn))
	defer tick.Stop()
	if cfg.serviceEvery > 0 {
		stop := make(chan struct{})
		defer close(stop)
		go churnServices(sink, cfg, stop)
	}
	end := time.Now().Add(cfg.duration)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		n, slot := rng.IntN(cfg.nodes), rng.IntN(cfg.podsPerNode)
		host := next[n]
		if host == 0 {
			host = cfg.podsPerNode + 2
		}
		if host > 254 {
			continue
		}
		next[n] = host + 1
		p := pod(n, slot, host)
		old, ok := names[[2]int{n, slot}]
		if !ok {
			old = p.Name
		}
		p.Name = fmt.Sprintf("%s-r%d", p.Name, i)
		names[[2]int{n, slot}] = p.Name
		changes[p.Status.PodIP] = change{node: nodeName(n), at: time.Now()}
		sink.Store.DeletePod(p.Namespace, old)
		sink.Store.SetPod(p)
		sink.Changed()
	}
	return changes
}

// churnServices changes one Service's port every cfg.serviceEvery. Inside
// the Service range only the apiserver proxy changes; without a range
// (-service-cidr "") every node proxy's routes change, a rollout the server
// spreads over several updates while pod changes keep flowing.
func churnServices(sink source.Sink, cfg config, stop <-chan struct{}) {
	tick := time.NewTicker(cfg.serviceEvery)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		sink.Store.SetService(&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "svc-0000"},
			Spec:       corev1.ServiceSpec{ClusterIPs: []string{"10.96.0.0"}, Ports: []corev1.ServicePort{{Port: int32(9000 + i%2)}, {Port: 8080}}},
		})
		sink.Changed()
	}
}

// results are what report prints.
type results struct {
	served                            time.Duration
	startCPU                          time.Duration   // the server's CPU time while serving the start
	clientsCPU                        time.Duration   // the clients' CPU time in the same span
	lat                               []time.Duration // change -> owning stream
	unneeded, wrong, changes, retries int
	rss                               float64
	heap                              memUse
	goroutines                        int
}

// collect reads the child's "RECV node ip unixnano", "EXTRA node" and
// "RETRY node" lines.
func collect(events <-chan string, changes map[string]change, r *results) {
	for line := range events {
		f := strings.Fields(line)
		switch {
		case len(f) == 2 && f[0] == "RETRY":
			r.retries++
		case len(f) == 4 && f[0] == "RECV":
			c, ok := changes[f[2]]
			if !ok {
				continue
			}
			if c.node != f[1] {
				r.wrong++
				continue
			}
			ns, _ := strconv.ParseInt(f[3], 10, 64)
			r.lat = append(r.lat, time.Unix(0, ns).Sub(c.at))
			delete(changes, f[2])
		case len(f) == 3 && f[0] == "EXTRA":
			r.unneeded++
			fmt.Fprintln(os.Stderr, "unneeded push:", f[1], f[2])
		}
	}
}

func report(cfg config, r results) {
	lat := r.lat
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[int(p*float64(len(lat)-1))]
	}
	fmt.Printf("\n| measure | value |\n|---|---|\n")
	security := "TLS 1.3, a client certificate per node"
	if !cfg.tls {
		security = "plaintext (-tls=false)"
	}
	fmt.Printf("| cluster | %d nodes, %d pods, %d Services, %d%% delta streams, xDS %s |\n", cfg.nodes, cfg.nodes*cfg.podsPerNode, cfg.services, int(cfg.deltaFraction*100), security)
	fmt.Printf("| time to serve all %d streams at start | %v |\n", cfg.nodes, r.served.Round(time.Millisecond))
	fmt.Printf("| of which server CPU time (the clients' handshakes share this machine's cores) | %v |\n", r.startCPU.Round(time.Millisecond))
	fmt.Printf("| and the clients' CPU time in the same span (TLS handshakes as Envoy's, decoding) | %v |\n", r.clientsCPU.Round(time.Millisecond))
	fmt.Printf("| streams that failed and were retried, as Envoy would (250 ms .. 2 s back-off) | %d |\n", r.retries)
	fmt.Printf("| pod changes | %d at %d/s |\n", r.changes, cfg.churn)
	if cfg.serviceEvery > 0 {
		what := fmt.Sprintf("inside ServiceCIDR %s: the apiserver proxy only", cfg.serviceCIDR)
		if cfg.serviceCIDR == "" {
			what = fmt.Sprintf("no ServiceCIDR: each re-translates all %d node proxies", cfg.nodes)
		}
		fmt.Printf("| Service changes (%s) | one every %v |\n", what, cfg.serviceEvery)
	}
	fmt.Printf("| changes received by the owning stream | %d |\n", len(lat))
	fmt.Printf("| change -> owning stream p50 | %v |\n", pct(0.50).Round(time.Millisecond))
	fmt.Printf("| change -> owning stream p99 | %v |\n", pct(0.99).Round(time.Millisecond))
	fmt.Printf("| pushes to streams that did not need them | %d |\n", r.unneeded)
	fmt.Printf("| changes seen by a non-owning stream | %d |\n", r.wrong)
	limit := "none"
	if cfg.memoryLimit > 0 {
		limit = fmt.Sprintf("%d MiB", cfg.memoryLimit>>20)
	}
	fmt.Printf("| server RSS (GOMEMLIMIT %s) | %.0f MiB |\n", limit, r.rss)
	fmt.Printf("| of which Go heap in use / goroutine stacks | %.0f MiB / %.0f MiB |\n", r.heap.heap, r.heap.stacks)
	fmt.Printf("| server goroutines | %d |\n", r.goroutines)
}

type memUse struct{ heap, stacks float64 }

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.WriteHeapProfile(f)
}

// cpuTime is the user and system CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
