package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"github.com/spokeproxy/spoke/envoy"
	"github.com/spokeproxy/spoke/translator"
)

func newBootstrapCommand() *cobra.Command {
	var (
		role, nodeName, output string
		o                      envoy.BootstrapOptions
	)
	cmd := &cobra.Command{
		Use:   "bootstrap --role node|apiserver",
		Short: "Print the static Envoy bootstrap of a role",
		Long: `Print the static bootstrap an Envoy of this role starts with: its node
identity, ADS to the spoke server, the role's reverse-tunnel bootstrap extension
(it cannot arrive over xDS), admin on 127.0.0.1 only, and a connection cap.
Everything else (listeners, routes, clusters, endpoints, secrets) comes over ADS.

For node proxies --node-name is the Kubernetes node name (in a DaemonSet, from
the downward API: spec.nodeName).`,
		Example: "  spoke bootstrap --role node --node-name worker-1 --xds-address spoke.kube-system.svc:18000 > envoy.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch role {
			case "node":
				o.Role, o.NodeID = translator.RoleNode, nodeName
			case "apiserver":
				o.Role = translator.RoleAPIServer
				if o.NodeID = nodeName; o.NodeID == "" {
					host, _ := os.Hostname()
					o.NodeID = "apiserver-" + host
				}
			default:
				return fmt.Errorf("--role %q: use node or apiserver", role)
			}
			b, err := envoy.Bootstrap(o)
			if err != nil {
				return err
			}
			raw, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(b)
			if err != nil {
				return err
			}
			if output == "yaml" {
				if raw, err = yaml.JSONToYAML(raw); err != nil {
					return err
				}
			}
			_, err = cmd.OutOrStdout().Write(raw)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&role, "role", "", "node or apiserver")
	f.StringVar(&nodeName, "node-name", "", "node name (node role); Envoy id (apiserver role, default apiserver-<hostname>)")
	f.StringVar(&o.XDSAddress, "xds-address", "127.0.0.1:18000", "spoke server gRPC address, host:port")
	f.Uint32Var(&o.AdminPort, "admin-port", 9901, "Envoy admin port (listens on 127.0.0.1)")
	f.BoolVar(&o.Delta, "delta", false, "use incremental (delta) xDS")
	f.Uint64Var(&o.MaxDownstreamConnections, "max-connections", 50000, "cap on accepted downstream connections")
	f.StringVarP(&output, "output", "o", "yaml", "yaml or json")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}
