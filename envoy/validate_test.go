package envoy_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

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
		objs, _, err := input.ReadFiles([]string{file})
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
