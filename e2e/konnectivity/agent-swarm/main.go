// agent-swarm holds many Konnectivity agents in one process, each with its
// own agent id and identifier, built from the proxy-agent's own client code
// (sigs.k8s.io/apiserver-network-proxy/pkg/agent) and dial options, so the
// benchmark can measure a proxy-server's memory per connected node without
// a process per node. It prints "READY <n>" once every agent holds a
// connection, and exits when its standard input closes.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"sigs.k8s.io/apiserver-network-proxy/pkg/agent"
	"sigs.k8s.io/apiserver-network-proxy/pkg/util"
)

func main() {
	n := flag.Int("agents", 100, "agents to run")
	server := flag.String("server", "127.0.0.1:8091", "the proxy-server's agent address")
	ca := flag.String("ca-cert", "", "CA of the proxy-server's certificate")
	cert := flag.String("agent-cert", "", "agent client certificate")
	key := flag.String("agent-key", "", "agent client key")
	flag.Parse()
	tlsConfig, err := util.GetClientTLSConfig(*ca, *cert, *key, "127.0.0.1", nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent-swarm:", err)
		os.Exit(1)
	}
	stop := make(chan struct{})
	sets := make([]*agent.ClientSet, *n)
	for i := range sets {
		sets[i] = start(i, *server, tlsConfig, stop)
	}
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		healthy := 0
		for _, cs := range sets {
			healthy += min(cs.HealthyClientsCount(), 1)
		}
		if healthy == len(sets) {
			fmt.Println("READY", healthy)
			break
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "agent-swarm: only %d of %d agents connected after 2 minutes\n", healthy, len(sets))
			os.Exit(1)
		}
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	close(stop)
}

// start runs agent i as the proxy-agent command does (its dial options,
// default intervals, a server count from the server's responses).
func start(i int, server string, tlsConfig *tls.Config, stop chan struct{}) *agent.ClientSet {
	cc := &agent.ClientSetConfig{
		Address:          server,
		AgentID:          fmt.Sprintf("swarm-%d", i),
		AgentIdentifiers: fmt.Sprintf("ipv4=10.%d.%d.1", 100+i/250, i%250),
		SyncInterval:     time.Second,
		ProbeInterval:    time.Second,
		SyncIntervalCap:  10 * time.Second,
		DialOptions: []grpc.DialOption{
			grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig.Clone())),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: time.Hour, PermitWithoutStream: true}),
		},
		XfrChannelSize:    150,
		ServerCountSource: "default",
	}
	cs := cc.NewAgentClientSet(stop, stop)
	cs.SetServerCounter(agent.NewAggregateServerCounter(nil, agent.NewResponseBasedCounter(cs), "default"))
	cs.Serve()
	return cs
}
