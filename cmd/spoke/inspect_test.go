package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/spokeproxy/spoke/translator/model"
	"github.com/spokeproxy/spoke/xds"
)

// TestStatusAndConfigDump runs the inspection commands against a live server.
func TestStatusAndConfigDump(t *testing.T) {
	srv, err := xds.NewServer(xds.Options{
		XDSAddress: "127.0.0.1:0", Insecure: true, HTTPAddress: "127.0.0.1:0", DebugAddress: "127.0.0.1:0",
		Settings: model.DefaultSettings(), Holdoff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		CertValidity: time.Hour, ShutdownGrace: time.Second, Log: logrus.New(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Run(ctx) }()
	src := &xds.FileSource{Path: "../../examples/cluster.yaml", Interval: time.Second, Log: logrus.New()}
	go src.Run(ctx, srv.Sink())
	for !srv.Publisher().Synced() {
		time.Sleep(10 * time.Millisecond)
	}
	server := "http://" + srv.Addr("debug")

	out, _, err := runSpoke("config", "dump", "--server", server, "--proxy", "node/worker-1")
	if err != nil || !strings.Contains(out, "node-tunnel") || strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("config dump: err %v, output:\n%.300s", err, out)
	}
	if _, _, err := runSpoke("config", "dump", "--server", server, "--proxy", "node/ghost"); err == nil || !strings.Contains(err.Error(), "no config") {
		t.Errorf("unknown node: want an error, got %v", err)
	}
	out, _, err = runSpoke("status", "--server", server)
	if err != nil || !strings.HasPrefix(out, "PROXY") {
		t.Errorf("status: err %v, output %q", err, out)
	}
	if _, _, err := runSpoke("status", "--server", "http://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "spoke serve running") {
		t.Errorf("unreachable server: want a helpful error, got %v", err)
	}
}

func TestBootstrapCommand(t *testing.T) {
	out, _, err := runSpoke("bootstrap", "--role", "node", "--node-name", "worker-1", "--delta")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"downstream_socket_interface", "DELTA_GRPC", "id: worker-1", "cluster: spoke-node", "address: 127.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("bootstrap lacks %q", want)
		}
	}
	if _, _, err := runSpoke("bootstrap", "--role", "node"); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("node role without a name: want an error, got %v", err)
	}
}
