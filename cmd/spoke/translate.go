package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/spokeproxy/spoke/translator"
	"github.com/spokeproxy/spoke/translator/input"
	"github.com/spokeproxy/spoke/translator/model"
)

const translateLong = `Translate a cluster dump into the Envoy config spoke serves one proxy.

Input (-f, repeatable): what these commands print, in YAML or JSON:
  kubectl get nodes,pods,services,servicecidrs -A -o yaml
  kubectl get endpointslices -n default -o yaml
A v1 List, typed lists, single objects and multi-document YAML are accepted.
Kinds read (every one translation uses; others are skipped with a warning):
  v1 Node                         node addresses, pod CIDRs, kubelet port
  v1 Pod                          pod addresses and the node that owns them
  v1 Service                      ClusterIP:port targets
  networking.k8s.io/v1 ServiceCIDR  Service ranges node proxies accept
  discovery.k8s.io/v1 EndpointSlice the apiserver proxies: the endpoints of
                                  default/kubernetes, unless the settings
                                  list them
Without the ServiceCIDRs, node configs miss the Service ranges the server
gives them.

--proxy picks the Envoy:
  apiserver     the apiserver proxy (sidecar of kube-apiserver)
  node/NAME     the node proxy of node NAME

Output is an Envoy admin ConfigDump (the shape of an Envoy's /config_dump):
listeners, clusters, endpoints, route configs and secrets (names only), as
dynamic resources, sorted, so the same input always gives the same bytes.
Each type carries the version spoke serve stamps on it for the same input,
so a translation compares with "spoke config dump" (secrets excepted: the
served version hashes their key material).

Objects that cannot be routed safely (bad addresses, IPs claimed twice, names
the rc:// grammar forbids, pods on unknown nodes) are skipped and reported on
stderr. The command fails (exit 1) on unreadable input, invalid settings, an
unknown --proxy node, or, with --strict, on any warning.`

type translateOptions struct {
	files        []string
	proxy        string
	output       string
	settingsFile string
	strict       bool
	maxInputMiB  int
}

func newTranslateCommand() *cobra.Command {
	var o translateOptions
	cmd := &cobra.Command{
		Use:     "translate -f FILE [-f FILE...] --proxy apiserver|node/NAME",
		Short:   "Print the Envoy config for one proxy, offline, from a cluster dump",
		Long:    translateLong,
		Example: "  spoke translate -f examples/cluster.yaml --proxy node/worker-1 -o json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, err := o.run()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, "cluster dump file (YAML or JSON); repeat for several")
	f.StringVar(&o.proxy, "proxy", "", "which Envoy: apiserver or node/NAME")
	f.StringVarP(&o.output, "output", "o", "yaml", "output format: yaml or json")
	f.StringVar(&o.settingsFile, "config", "", "settings file (YAML); defaults are documented in README.md")
	f.BoolVar(&o.strict, "strict", false, "fail when any object had to be skipped")
	f.IntVar(&o.maxInputMiB, "max-input-size", input.DefaultMaxBytes>>20, "largest cluster dump file to read, in MiB")
	_ = cmd.MarkFlagRequired("filename")
	_ = cmd.MarkFlagRequired("proxy")
	return cmd
}

func (o *translateOptions) run() ([]byte, error) {
	if o.output != "yaml" && o.output != "json" {
		return nil, fmt.Errorf("--output %q: use yaml or json", o.output)
	}
	role, nodeName, err := parseProxy(o.proxy)
	if err != nil {
		return nil, err
	}
	settings, err := model.LoadSettings(o.settingsFile)
	if err != nil {
		return nil, err
	}
	// Objects are converted as they are decoded: a dump is never held whole.
	builder := model.NewBuilder(settings)
	problems, err := input.ReadFilesTo(o.files, int64(o.maxInputMiB)<<20, builder)
	if err != nil {
		return nil, err
	}
	cluster, more := builder.Build()
	problems = append(problems, more...)
	if builder.Objects() == 0 {
		problems = append(problems, model.Problem{Object: strings.Join(o.files, ","),
			Message: "the input holds no Node, Pod, Service or EndpointSlice: the config routes nothing (an empty or half-written dump?)"})
	}
	for _, p := range problems {
		logrus.WithField("object", p.Object).Warn(p.Message)
	}
	if o.strict && len(problems) > 0 {
		return nil, fmt.Errorf("%d object(s) skipped and --strict is set", len(problems))
	}
	var res translator.Resources
	if role == translator.RoleAPIServer {
		res = translator.APIServerProxy(&cluster, settings)
	} else if res, err = translator.NodeProxy(&cluster, settings, nodeName); err != nil {
		return nil, err
	}
	if err := translator.Check(res); err != nil {
		return nil, fmt.Errorf("generated config is invalid (a spoke bug, please report it with the input): %w", err)
	}
	return translator.Marshal(translator.ConfigDump(res, translator.TypeVersions(res)), o.output)
}

func parseProxy(proxy string) (translator.Role, string, error) {
	if proxy == string(translator.RoleAPIServer) {
		return translator.RoleAPIServer, "", nil
	}
	if name, ok := strings.CutPrefix(proxy, "node/"); ok && name != "" {
		return translator.RoleNode, name, nil
	}
	return "", "", errors.New(`--proxy must be "apiserver" or "node/NAME"`)
}
