package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/spokeproxy/spoke/status"
)

// newNodeReadyCommand is the node proxy's readiness check: a pod is ready
// when its Envoy holds a tunnel to every apiserver proxy it dials, so a
// DaemonSet roll (minReadySeconds, maxUnavailable 0) never replaces a pod
// that holds tunnels with one that does not.
func newNodeReadyCommand() *cobra.Command {
	var adminFile, logFormat string
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "node-ready --admin-address-file FILE",
		Short: "Exit 0 when the node proxy holds a tunnel to every apiserver proxy it dials (its readiness probe)",
		Long: `Read the node proxy's Envoy admin address from FILE (Envoy's
--admin-address-path: its admin port is ephemeral, two pods of a node share
its network during a roll) and its tunnels per apiserver proxy from there.
Exit 0 and say so when it holds at least one tunnel to every apiserver proxy
it dials; otherwise exit 1 with the ones it does not reach. The message is
what kubectl describe pod shows for a failed probe, with no path to the node.

--watch INTERVAL runs until stopped, logging each change: the container the
probe runs in needs a process to live.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if watch > 0 {
				if err := setupLogging(logFormat); err != nil {
					return err
				}
				return watchNodeReady(cmd.Context(), adminFile, watch)
			}
			msg, err := nodeReady(cmd.Context(), adminFile)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&adminFile, "admin-address-file", "", "file where the node proxy's Envoy writes its admin address (--admin-address-path)")
	cmd.Flags().DurationVar(&watch, "watch", 0, "check every INTERVAL until stopped, logging changes (0: check once)")
	cmd.Flags().StringVar(&logFormat, "log-format", "text", "with --watch: log format, text or json")
	_ = cmd.MarkFlagRequired("admin-address-file")
	return cmd
}

// nodeReady says why the node proxy is ready, or returns why it is not.
func nodeReady(ctx context.Context, adminFile string) (string, error) {
	raw, err := os.ReadFile(adminFile)
	if err != nil {
		return "", fmt.Errorf("not ready: Envoy has not written its admin address (starting?): %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	held, err := status.ReadNodeTunnels(ctx, strings.TrimSpace(string(raw)))
	if err != nil {
		return "", fmt.Errorf("not ready: %w", err)
	}
	if len(held) == 0 {
		return "", fmt.Errorf("not ready: it dials no apiserver proxy yet (no config from spoke serve? see the pod's other container)")
	}
	var with, without []string
	for _, host := range slices.Sorted(maps.Keys(held)) {
		if held[host] == 0 {
			without = append(without, host)
			continue
		}
		with = append(with, fmt.Sprintf("%s (%d)", host, held[host]))
	}
	if len(without) > 0 {
		return "", fmt.Errorf("not ready: no tunnel to the apiserver proxy at %s (it holds %s)", strings.Join(without, ", "), orNone(with))
	}
	return "ready: tunnels to every apiserver proxy: " + strings.Join(with, ", "), nil
}

func orNone(list []string) string {
	if len(list) == 0 {
		return "none"
	}
	return strings.Join(list, ", ")
}

// watchNodeReady checks every interval until SIGTERM, logging changes.
func watchNodeReady(ctx context.Context, adminFile string, interval time.Duration) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	last := ""
	for {
		msg, err := nodeReady(ctx, adminFile)
		if err != nil {
			msg = err.Error()
		}
		if msg != last {
			logrus.WithField("component", "node-ready").Info(msg)
			last = msg
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(interval):
		}
	}
}
