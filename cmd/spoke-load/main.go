// Command spoke-load measures spoke serve at Kubernetes' scale limits: it runs
// the server in this process on a synthetic cluster (default 5,000 nodes,
// 150,000 pods), opens one simulated node-proxy ADS stream per node from a
// child process (half SotW, half delta), churns pods at a fixed rate and
// prints: time until every stream has its config, change-to-receipt latency
// at the owning stream, pushes to streams that did not need them, server RSS
// and goroutines. The child keeps client memory out of the server's RSS.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	var cfg config
	flag.IntVar(&cfg.nodes, "nodes", 5000, "nodes (one ADS stream each)")
	flag.IntVar(&cfg.podsPerNode, "pods-per-node", 30, "pods per node")
	flag.IntVar(&cfg.services, "services", 1000, "Services (two ports each)")
	flag.IntVar(&cfg.churn, "churn", 100, "pod changes per second")
	flag.DurationVar(&cfg.duration, "duration", 30e9, "how long to churn")
	flag.DurationVar(&cfg.holdoff, "debounce", 10e6, "server debounce holdoff (spoke serve's default)")
	flag.DurationVar(&cfg.maxDelay, "debounce-max", 50e6, "server debounce maximum delay (spoke serve's default)")
	flag.DurationVar(&cfg.serviceEvery, "service-every", 0, "change a Service this often; 0: never")
	flag.StringVar(&cfg.serviceCIDR, "service-cidr", "10.96.0.0/16", "the cluster's ServiceCIDR, which holds every Service; \"\": none, so every Service change concerns every node proxy (the baseline)")
	flag.Int64Var(&cfg.memoryLimit, "server-memory-limit", 0, "GOMEMLIMIT for the server process only, in bytes (0: Go's default)")
	flag.Float64Var(&cfg.deltaFraction, "delta-fraction", 0.5, "share of streams using delta xDS")
	flag.StringVar(&cfg.memProfile, "memprofile", "", "write the server's heap profile here at the end (go tool pprof)")
	flag.StringVar(&cfg.startProfile, "start-cpuprofile", "", "write the server's CPU profile from the clients' start until every stream is served (go tool pprof)")
	flag.StringVar(&cfg.clientsProfile, "clients-cpuprofile", "", "write the clients' CPU profile from their start until every stream is served (go tool pprof)")
	flag.BoolVar(&cfg.tls, "tls", true, "authenticated xDS as deployed (TLS 1.3, one client certificate per node); false: plaintext")
	flag.StringVar(&cfg.tlsDir, "tls-dir", "", "internal: the child's certificate directory")
	child := flag.String("child", "", "internal: run the clients against this xDS address")
	flag.Parse()
	var err error
	if *child != "" {
		err = runClients(*child, cfg)
	} else {
		err = runParent(cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "spoke-load:", err)
		os.Exit(1)
	}
}
