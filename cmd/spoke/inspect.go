package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spokeproxy/spoke/auth"
	"github.com/spokeproxy/spoke/status"
	"github.com/spokeproxy/spoke/translator/model"
)

const defaultDebugServer = "http://127.0.0.1:18002"

// maxDebugAnswer bounds what the CLI reads of one debug API answer (a
// config dump of 5,000 nodes' apiserver proxy is a few MB).
const maxDebugAnswer = 256 << 20

func newStatusCommand() *cobra.Command {
	var server, output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List connected Envoys and whether each type is SYNCED, STALE or NACKED",
		Long: `List the Envoys connected to this server replica and the sync state of each
resource type, the problems the server refused (sources, pod addresses), and
the tunnels each node holds at the apiserver proxy beside the server.

-o json or -o yaml prints the same as one document (proxies, problems,
tunnels) for scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" && output != "yaml" {
				return fmt.Errorf("--output %q: use table, json or yaml", output)
			}
			report, err := readStatus(cmd.Context(), server)
			if err != nil {
				return err
			}
			if output != "table" {
				return writeDocument(cmd.OutOrStdout(), report, output)
			}
			return printReport(cmd.OutOrStdout(), report)
		},
	}
	cmd.Flags().StringVar(&server, "server", defaultDebugServer, "spoke server debug address")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	return cmd
}

// statusReport is everything spoke status shows, as -o json|yaml prints it.
type statusReport struct {
	Proxies  []status.ProxyStatus `json:"proxies"`
	Problems []model.Problem      `json:"problems"`
	// Tunnels is nil when the server could not say (TunnelsError).
	Tunnels      *status.Tunnels `json:"tunnels,omitempty"`
	TunnelsError string          `json:"tunnelsError,omitempty"`
}

func readStatus(ctx context.Context, server string) (statusReport, error) {
	var r statusReport
	if err := debugJSON(ctx, server, "/debug/status", &r.Proxies); err != nil {
		return r, err
	}
	if err := debugJSON(ctx, server, "/debug/problems", &r.Problems); err != nil {
		return r, err
	}
	// Empty lists print as [] for scripts, not null.
	if r.Proxies == nil {
		r.Proxies = []status.ProxyStatus{}
	}
	if r.Problems == nil {
		r.Problems = []model.Problem{}
	}
	var t status.Tunnels
	if err := debugJSON(ctx, server, "/debug/tunnels", &t); err != nil {
		r.TunnelsError = err.Error() // the Envoys' status is still worth printing
	} else {
		r.Tunnels = &t
	}
	return r, nil
}

// debugJSON reads one debug API answer into v.
func debugJSON(ctx context.Context, server, path string, v any) error {
	body, err := debugGet(ctx, server, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("unexpected answer from %s%s: %w", server, path, err)
	}
	return nil
}

// writeDocument prints v as JSON (indented) or YAML.
func writeDocument(w io.Writer, v any, format string) error {
	out, err := status.Document(v, format)
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}

func printReport(w io.Writer, r statusReport) error {
	if err := printStatus(w, r.Proxies); err != nil {
		return err
	}
	printProblems(w, r.Problems)
	if r.Tunnels == nil {
		fmt.Fprintf(w, "\ntunnels: %s\n", printable(r.TunnelsError))
		return nil
	}
	return printTunnels(w, *r.Tunnels)
}

func printStatus(w io.Writer, rows []status.ProxyStatus) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	types := []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment", "Secret"}
	fmt.Fprintln(tw, "PROXY\tENVOY\tXDS\tCONNECTED\tLDS\tRDS\tCDS\tEDS\tSDS\tAUTHENTICATED")
	var nacks []string
	for _, r := range rows {
		mode := "sotw"
		if r.Delta {
			mode = "delta"
		}
		fields := []string{printable(r.Proxy), printable(r.EnvoyID), mode, time.Since(r.Connected).Round(time.Second).String()}
		for _, t := range types {
			state := r.States[t]
			if state == "" {
				state = "-"
			}
			fields = append(fields, state)
		}
		fields = append(fields, printable(r.Authenticated))
		fmt.Fprintln(tw, strings.Join(fields, "\t"))
		for typeURL, ts := range r.Types {
			if ts.LastNack != "" {
				nacks = append(nacks, printable(fmt.Sprintf("%s %s: NACK of %s at %s: %s", r.Proxy, typeURL, ts.NackedVer, ts.NackedAt.Format(time.RFC3339), ts.LastNack)))
			}
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sort.Strings(nacks)
	for _, n := range nacks {
		fmt.Fprintln(w, n)
	}
	return nil
}

func newConfigCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Inspect the config the server serves"}
	var server, proxy, output, typ, name string
	dump := &cobra.Command{
		Use:   "dump --proxy apiserver|node/NAME [--type TYPE] [--name NAME]",
		Short: "Print what the server serves one Envoy, as an Envoy ConfigDump (secrets by name only)",
		Long: `Print what the server serves one Envoy, in the shape of Envoy's own
/config_dump (secrets by name only), so the two can be compared.

--type keeps one type: listeners, routes, clusters, endpoints, secrets
(each secret's certificate described: subject, DNS names, issuer, serial,
validity; never key material), or bootstrap (the part of each connected
Envoy's bootstrap the server sees: its node, with id, cluster, metadata and
Envoy's build version). --name keeps the resources of that name; for
routes also a virtual host of that name (node/NAME, services), alone in its
route configuration.`,
		Example: `  spoke config dump --proxy apiserver --type routes --name node/worker-1
  spoke config dump --proxy node/worker-1 --type secrets
  spoke config dump --proxy node/worker-1 --type bootstrap`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := auth.ParseProxy(proxy); err != nil {
				return err
			}
			if typ != "" && !slices.Contains(status.DumpTypes, typ) {
				return fmt.Errorf("--type %q: use one of %s", typ, strings.Join(status.DumpTypes, ", "))
			}
			q := url.Values{"proxy": {proxy}, "output": {output}, "type": {typ}, "name": {name}}
			body, err := debugGet(cmd.Context(), server, "/debug/config?"+q.Encode())
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(body)
			return err
		},
	}
	dump.Flags().StringVar(&server, "server", defaultDebugServer, "spoke server debug address")
	dump.Flags().StringVar(&proxy, "proxy", "", "apiserver or node/NAME")
	dump.Flags().StringVarP(&output, "output", "o", "yaml", "yaml or json")
	dump.Flags().StringVar(&typ, "type", "", "only this type: "+strings.Join(status.DumpTypes, ", "))
	dump.Flags().StringVar(&name, "name", "", "only resources (or route virtual hosts) of this name")
	_ = dump.MarkFlagRequired("proxy")
	_ = dump.RegisterFlagCompletionFunc("proxy", completeProxies(&server))
	_ = dump.RegisterFlagCompletionFunc("type", cobra.FixedCompletions(status.DumpTypes, cobra.ShellCompDirectiveNoFileComp))
	cmd.AddCommand(dump, newConfigDiffCommand())
	return cmd
}

// completeProxies completes --proxy with the proxies the server serves.
func completeProxies(server *string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, _ string) ([]string, cobra.ShellCompDirective) {
		var proxies []string
		if err := debugJSON(cmd.Context(), *server, "/debug/proxies", &proxies); err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		return proxies, cobra.ShellCompDirectiveNoFileComp
	}
}

func newConfigDiffCommand() *cobra.Command {
	var server, proxy, output string
	cmd := &cobra.Command{
		Use:   "diff --proxy apiserver|node/NAME",
		Short: "Served against held: the resources that differ between what the server serves one proxy and what its Envoy ACKed",
		Long: `For each connected Envoy of one proxy, compare, type by type, what the server
serves it now with what that Envoy ACKed, resource by resource, without
reaching the Envoy's admin: "changed" (the Envoy holds an older one), "not
held" (served and asked for, not at the Envoy), "not served" (the Envoy still
holds what the server removed), and Envoy's message when it NACKed the version
served now (it runs its last good one). The server knows what each response
carried and which ones the Envoy ACKed; an Envoy that has not ACKed a type on
its current stream shows it as unknown.`,
		Example: `  spoke config diff --proxy node/worker-1
  spoke config diff --proxy apiserver -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" && output != "yaml" {
				return fmt.Errorf("--output %q: use table, json or yaml", output)
			}
			if _, err := auth.ParseProxy(proxy); err != nil {
				return err
			}
			var diffs []status.EnvoyDiff
			if err := debugJSON(cmd.Context(), server, "/debug/diff?"+url.Values{"proxy": {proxy}}.Encode(), &diffs); err != nil {
				return err
			}
			if output != "table" {
				return writeDocument(cmd.OutOrStdout(), diffs, output)
			}
			if len(diffs) == 0 {
				return fmt.Errorf("no Envoy of %s is connected to this server (spoke status lists those that are)", proxy)
			}
			return printDiffs(cmd.OutOrStdout(), diffs)
		},
	}
	cmd.Flags().StringVar(&server, "server", defaultDebugServer, "spoke server debug address")
	cmd.Flags().StringVar(&proxy, "proxy", "", "apiserver or node/NAME")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, json or yaml")
	_ = cmd.MarkFlagRequired("proxy")
	_ = cmd.RegisterFlagCompletionFunc("proxy", completeProxies(&server))
	return cmd
}

func printDiffs(w io.Writer, diffs []status.EnvoyDiff) error {
	for i, d := range diffs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		mode := "sotw"
		if d.Delta {
			mode = "delta"
		}
		fmt.Fprintf(w, "%s  envoy %s  stream %d (%s)\n", printable(d.Proxy), printable(d.EnvoyID), d.Stream, mode)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TYPE\tSTATE\tSERVED\tACKED\tRESOURCES SERVED/HELD\tDIFFER")
		for _, td := range d.Types {
			differ := strconv.Itoa(td.Differs)
			if td.Unknown != "" {
				differ = "unknown: " + td.Unknown
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", td.Type, td.State, td.ServedVersion, cmp.Or(td.AckedVersion, "-"), td.Served, td.Held, printable(differ))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, td := range d.Types {
			for _, r := range td.Differ {
				fmt.Fprintf(w, "  %s %s: %s\n", td.Type, printable(r.Name), r.Change)
			}
			if more := td.Differs - len(td.Differ); more > 0 {
				fmt.Fprintf(w, "  %s: and %d more (-o json lists the first %d)\n", td.Type, more, len(td.Differ))
			}
			if td.Nack != "" {
				fmt.Fprintf(w, "  %s NACKED by the Envoy: %s\n", td.Type, printable(td.Nack))
			}
		}
	}
	return nil
}

func debugGet(ctx context.Context, server, path string) ([]byte, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !strings.Contains(server, "://") { // host:port, as the other address flags take it
		server = "http://" + server
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(server, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the spoke server's debug API at %s: %w (is spoke serve running? --server sets the address)", server, err)
	}
	defer resp.Body.Close()
	if resp.Header.Get(status.DebugAPIHeader) == "" {
		return nil, fmt.Errorf("%s is not a spoke debug API (it answered %s without spoke's marks: the metrics port, an Envoy admin?); --server takes spoke serve's --debug-address, default 127.0.0.1:18002", server, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDebugAnswer))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, printable(strings.TrimSpace(string(body))))
	}
	return body, nil
}

// maxListedRefusals bounds the refused pod addresses printed: thousands
// would bury the rest of the status.
const maxListedRefusals = 20

// printProblems prints the problems an operator watches for: a refused
// source input (the last good config is served) and the pod addresses the
// server refused because their node may not own them (a node claiming
// others' addresses, or a misconfigured CNI).
func printProblems(w io.Writer, problems []model.Problem) {
	var refused []model.Problem
	for _, p := range problems {
		switch p.Kind {
		case model.KindPodAddress:
			refused = append(refused, p)
		case model.KindSource:
			fmt.Fprintf(w, "\nSOURCE REFUSED: %s\n", printable(p.Message))
		}
	}
	if len(refused) == 0 {
		return
	}
	fmt.Fprintf(w, "\nREFUSED POD ADDRESSES: %d (a pod's node may not own them; not routed)\n", len(refused))
	for i, p := range refused {
		if i == maxListedRefusals {
			fmt.Fprintf(w, "... and %d more (the server log has each)\n", len(refused)-i)
			break
		}
		fmt.Fprintln(w, printable(p.String()))
	}
}

// printRefusals lists each node's last refused tunnel at one apiserver
// proxy (where: which), latest first.
func printRefusals(w io.Writer, refusals map[string]status.Refusal, where string) error {
	if len(refusals) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\nREFUSED TUNNELS at %s (each node's last; ?address: a source no node owns)\n", printable(where))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tWHEN\tFROM\tREASON")
	for _, key := range status.SortedRefusalKeys(refusals) {
		r := refusals[key]
		fmt.Fprintf(tw, "%s\t%s ago\t%s\t%s\n", printable(key), time.Since(r.At).Round(time.Second), printable(r.From), printable(r.Reason))
	}
	return tw.Flush()
}

// printTunnels lists the tunnels each node holds at the apiserver proxy
// beside the server, nodes without one first.
func printTunnels(w io.Writer, t status.Tunnels) error {
	if err := printRefusals(w, t.Refusals, "the apiserver proxy beside the server"); err != nil {
		return err
	}
	if t.Admin == "" {
		fmt.Fprintf(w, "\ntunnels: %s\n", printable(t.Error))
		return nil
	}
	fmt.Fprintf(w, "\nTUNNELS at the apiserver proxy %s (read %s ago)\n", t.Admin, time.Since(t.ReadAt).Round(time.Second))
	if t.Error != "" {
		fmt.Fprintf(w, "last read failed: %s\n", printable(t.Error))
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tTUNNELS")
	missing := t.NodesWithoutTunnel()
	for _, n := range missing {
		fmt.Fprintf(tw, "%s\t0  NO TUNNEL: CONNECTs to it fail with 502\n", printable(n))
	}
	for _, n := range slices.Sorted(maps.Keys(t.Nodes)) {
		if t.Nodes[n] > 0 {
			fmt.Fprintf(tw, "%s\t%d\n", printable(n), t.Nodes[n])
		}
	}
	return tw.Flush()
}
