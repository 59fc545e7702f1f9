package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spokeproxy/spoke/kubestatus"
)

// PluginName is the file name under which spoke is a kubectl plugin
// (kubectl finds kubectl-spoke on PATH and runs it for `kubectl spoke`).
const PluginName = "kubectl-spoke"

// newKubectlPluginCommand is `kubectl spoke`: what the servers published
// into the Kubernetes API, read with the user's kubeconfig alone.
func newKubectlPluginCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "spoke",
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl spoke"},
		Short:         "spoke's status from the Kubernetes API (install: put the spoke binary on PATH as kubectl-spoke)",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newKubeStatusCommand())
	return root
}

type kubeStatusOptions struct {
	loading   *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
	namespace string
	configMap string
	output    string
	events    int
}

// kubeStatus is what kubectl spoke status shows, as -o json|yaml prints it.
type kubeStatus struct {
	Replicas []kubestatus.Report `json:"replicas"`
	Events   []corev1.Event      `json:"events"`
}

func newKubeStatusCommand() *cobra.Command {
	o := kubeStatusOptions{loading: clientcmd.NewDefaultClientConfigLoadingRules()}
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Every spoke server replica's Envoys, tunnels per node and refusals, and spoke's Events on Nodes",
		Long: `Read what every spoke server replica published into the Kubernetes API: its
connected Envoys and their sync state, the tunnels each node holds at its
apiserver proxy, each node's last refused tunnel, and spoke's Events on Nodes
(TunnelsLost, TunnelsRestored, TunnelRefused).

It needs no path to any node or server port, only the Kubernetes API: get on
ConfigMap spoke-system/spoke-status and list on Events in namespace default.
A replica whose report is older than 90 s is marked STALE: it is down, or
cannot reach the apiserver.`,
		Example: `  kubectl spoke status
  kubectl spoke status -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.output != "table" && o.output != "json" && o.output != "yaml" {
				return fmt.Errorf("--output %q: use table, json or yaml", o.output)
			}
			st, err := o.read(cmd.Context())
			if err != nil {
				return err
			}
			if o.output != "table" {
				return writeDocument(cmd.OutOrStdout(), st, o.output)
			}
			return printKubeStatus(cmd.OutOrStdout(), st, time.Now())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.loading.ExplicitPath, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, as kubectl)")
	f.StringVar(&o.overrides.CurrentContext, "context", "", "kubeconfig context")
	f.StringVar(&o.namespace, "status-namespace", kubestatus.DefaultNamespace, "namespace of the status ConfigMap (spoke serve --status-configmap)")
	f.StringVar(&o.configMap, "status-configmap", kubestatus.DefaultConfigMap, "name of the status ConfigMap")
	f.StringVarP(&o.output, "output", "o", "table", "table, json or yaml")
	f.IntVar(&o.events, "events", 20, "how many of spoke's latest Events on Nodes to show")
	return cmd
}

func (o *kubeStatusOptions) read(ctx context.Context) (kubeStatus, error) {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(o.loading, &o.overrides).ClientConfig()
	if err != nil {
		return kubeStatus{}, fmt.Errorf("kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return kubeStatus{}, err
	}
	ctx, cancel := context.WithTimeout(cmp.Or(ctx, context.Background()), 30*time.Second)
	defer cancel()
	st := kubeStatus{Events: []corev1.Event{}}
	if st.Replicas, err = kubestatus.ReadReports(ctx, client, o.namespace, o.configMap); err != nil {
		return st, err
	}
	events, err := kubestatus.ReadNodeEvents(ctx, client)
	if err != nil {
		return st, err
	}
	st.Events = events[:min(len(events), o.events)]
	return st, nil
}

func printKubeStatus(w io.Writer, st kubeStatus, now time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	stale := false
	fmt.Fprintln(tw, "REPLICA\tREPORTED\tENVOYS\tNOT SYNCED\tNODES\tWITHOUT TUNNEL\tAPISERVER PROXY")
	for _, r := range st.Replicas {
		reported := now.Sub(r.UpdatedAt).Round(time.Second).String() + " ago"
		if r.Stale(now) {
			reported += " STALE"
			stale = true
		}
		proxy := r.Tunnels.Admin
		switch {
		case r.Tunnels.Error != "" && proxy == "":
			proxy = r.Tunnels.Error // never read: why
		case r.Tunnels.Error != "":
			proxy += " (last read failed: " + r.Tunnels.Error + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", printable(r.Replica), reported, r.Counts.Envoys, r.Counts.EnvoysNotSynced,
			r.Counts.Nodes, r.Counts.NodesWithoutTunnel, printable(proxy))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if stale {
		fmt.Fprintf(w, "STALE: no report for %s: that replica is down, or cannot reach the apiserver\n", kubestatus.StaleAfter)
	}
	for _, r := range st.Replicas {
		if r.Omitted != "" {
			fmt.Fprintf(w, "%s: %s\n", printable(r.Replica), printable(r.Omitted))
		}
	}
	for _, section := range []func(io.Writer, kubeStatus, time.Time) error{printNodesWithoutTunnel, printEnvoysNotSynced, printReplicaRefusals, printReplicaProblems, printNodeEvents} {
		if err := section(w, st, now); err != nil {
			return err
		}
	}
	return nil
}

// printNodesWithoutTunnel lists each node that some replica's apiserver
// proxy holds no tunnel of, with what says why: whether its node proxy is
// connected to any server, and its last refused tunnel.
func printNodesWithoutTunnel(w io.Writer, st kubeStatus, now time.Time) error {
	missing := map[string][]string{} // node -> replicas without its tunnel
	for _, r := range st.Replicas {
		for _, n := range r.Tunnels.NodesWithoutTunnel() {
			missing[n] = append(missing[n], r.Replica)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nNODES WITHOUT TUNNEL (CONNECTs to them through those replicas fail with 502)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tNO TUNNEL AT\tNODE PROXY'S XDS\tLAST REFUSED TUNNEL")
	for _, node := range slices.Sorted(maps.Keys(missing)) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", printable(node), printable(strings.Join(missing[node], ",")),
			printable(nodeProxyXDS(st.Replicas, node)), printable(lastRefusal(st.Replicas, node, now)))
	}
	return tw.Flush()
}

// nodeProxyXDS says which replica a node's proxy is connected to, if any.
func nodeProxyXDS(replicas []kubestatus.Report, node string) string {
	unlisted := false
	for _, r := range replicas {
		if sync, ok := r.Envoys["node/"+node]; ok {
			return "connected to " + r.Replica + " (" + sync + ")"
		}
		unlisted = unlisted || strings.Contains(r.Omitted, "SYNCED Envoys")
	}
	if unlisted {
		return "not listed (large cluster: SYNCED Envoys are counted only)"
	}
	return "not connected to any server: node proxy down, or node unreachable"
}

// lastRefusal is the latest refused tunnel of node at any replica.
func lastRefusal(replicas []kubestatus.Report, node string, now time.Time) string {
	var last *kubestatus.Report
	for i, r := range replicas {
		if ref, ok := r.Tunnels.Refusals[node]; ok && (last == nil || ref.At.After(last.Tunnels.Refusals[node].At)) {
			last = &replicas[i]
		}
	}
	if last == nil {
		return "none"
	}
	ref := last.Tunnels.Refusals[node]
	return fmt.Sprintf("%s ago at %s: %s: %s", now.Sub(ref.At).Round(time.Second), last.Replica, ref.Class, ref.Reason)
}

func printEnvoysNotSynced(w io.Writer, st kubeStatus, _ time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	header := false
	for _, r := range st.Replicas {
		for _, proxy := range slices.Sorted(maps.Keys(r.Envoys)) {
			if r.Envoys[proxy] == kubestatus.Synced {
				continue
			}
			if !header {
				fmt.Fprintln(w, "\nENVOYS NOT SYNCED")
				fmt.Fprintln(tw, "REPLICA\tPROXY\tSYNC")
				header = true
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", printable(r.Replica), printable(proxy), printable(r.Envoys[proxy]))
		}
	}
	return tw.Flush()
}

func printReplicaRefusals(w io.Writer, st kubeStatus, _ time.Time) error {
	for _, r := range st.Replicas {
		if err := printRefusals(w, r.Tunnels.Refusals, "the apiserver proxy of "+r.Replica); err != nil {
			return err
		}
	}
	return nil
}

// printReplicaProblems lists what each replica's last update left out of
// the config (malformed objects, refused pod addresses, a refused source).
func printReplicaProblems(w io.Writer, st kubeStatus, _ time.Time) error {
	for _, r := range st.Replicas {
		if len(r.Problems) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nPROBLEMS at %s: %d left out of the config by the last update\n", printable(r.Replica), r.Counts.Problems)
		for i, p := range r.Problems {
			if i == maxListedRefusals {
				fmt.Fprintf(w, "... and %d more (spoke status on the control-plane host lists them)\n", r.Counts.Problems-i)
				break
			}
			fmt.Fprintln(w, printable(p.String()))
		}
	}
	return nil
}

func printNodeEvents(w io.Writer, st kubeStatus, now time.Time) error {
	if len(st.Events) == 0 {
		fmt.Fprintln(w, "\nno spoke Events on Nodes")
		return nil
	}
	fmt.Fprintln(w, "\nSPOKE EVENTS ON NODES (latest first)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LAST SEEN\tNODE\tREASON\tCOUNT\tMESSAGE")
	for _, e := range st.Events {
		fmt.Fprintf(tw, "%s ago\t%s\t%s\t%d\t%s\n", now.Sub(kubestatus.LastSeen(e)).Round(time.Second), printable(e.InvolvedObject.Name),
			printable(e.Reason), max(e.Count, 1), printable(e.Message))
	}
	return tw.Flush()
}
