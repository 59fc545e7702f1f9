package envoy_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/envoy/envoytest"
	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

// TestRealEnvoyAcceptsTranslation has the real Envoy load, in validate mode,
// the apiserver proxy's config and every node proxy's config of the example.
func TestRealEnvoyAcceptsTranslation(t *testing.T) {
	bin := envoytest.Binary(t)
	for _, file := range []string{"../examples/cluster.yaml", "../translator/testdata/in/ipv6-only.yaml"} {
		objs, _, err := input.ReadFiles([]string{file}, input.DefaultMaxBytes)
		if err != nil {
			t.Fatal(err)
		}
		s := model.DefaultSettings()
		s.EgressSocketPath = filepath.Join(t.TempDir(), "egress.sock")
		cluster, _ := model.Build(objs, s)
		pki := envoytest.NewPKI(t)

		res := translator.APIServerProxy(&cluster, s)
		b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", res, pki.Secrets(t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
		if err != nil {
			t.Fatal(err)
		}
		validate(t, bin, file+" apiserver", b)
		for _, n := range cluster.Nodes {
			res, err := translator.NodeProxy(&cluster, s, n.Name)
			if err != nil {
				t.Fatal(err)
			}
			b, err := envoy.StaticBootstrap(translator.RoleNode, n.Name, res, pki.Secrets(t, s, translator.RoleNode, n.Name), 0)
			if err != nil {
				t.Fatal(err)
			}
			validate(t, bin, file+" node/"+n.Name, b)
		}
	}
}

func validate(t *testing.T, bin, what string, b *bootstrapv3.Bootstrap) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.Validate(ctx, bin, b); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// TestRealEnvoyRejectsAWrongReverseTunnelCluster: validate mode is a real
// check. The reverse-connection cluster needs lb_policy CLUSTER_PROVIDED;
// with round robin the real Envoy refuses the config.
func TestRealEnvoyRejectsAWrongReverseTunnelCluster(t *testing.T) {
	bin := envoytest.Binary(t)
	objs, _, err := input.ReadFiles([]string{"../examples/cluster.yaml"}, input.DefaultMaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	s := model.DefaultSettings()
	s.EgressSocketPath = filepath.Join(t.TempDir(), "egress.sock")
	cluster, _ := model.Build(objs, s)
	res := translator.APIServerProxy(&cluster, s)
	broken := false
	for _, c := range res.Clusters {
		if c.GetName() == translator.ServiceTunnels {
			c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
			broken = true
		}
	}
	if !broken {
		t.Fatalf("no %s cluster in the apiserver proxy's config", translator.ServiceTunnels)
	}
	pki := envoytest.NewPKI(t)
	b, err := envoy.StaticBootstrap(translator.RoleAPIServer, "apiserver", res, pki.Secrets(t, s, translator.RoleAPIServer, s.APIServerProxyName), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := envoy.Validate(ctx, bin, b); err == nil {
		t.Error("Envoy accepted a reverse-connection cluster with lb_policy ROUND_ROBIN")
	} else {
		t.Logf("refused as expected: %.300v", err)
	}
}
