// Command spoke configures Envoy to carry kube-apiserver's egress traffic to
// nodes through reverse tunnels. main only wires subcommands together.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func main() {
	root, name := newRootCommand(), "spoke"
	if filepath.Base(os.Args[0]) == PluginName { // kubectl spoke ...
		root, name = newKubectlPluginCommand(), "kubectl spoke"
	}
	if err := root.Execute(); err != nil {
		// A plain line, not a log record: what the user ran failed, and
		// how is what they read (a record quoted and escaped its newlines).
		fmt.Fprintln(os.Stderr, name+": "+err.Error())
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var logLevel string
	root := &cobra.Command{
		Use:           "spoke",
		Short:         "Envoy reverse tunnels from the Kubernetes control plane to its nodes",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			level, err := logrus.ParseLevel(logLevel)
			if err != nil {
				return err
			}
			logrus.SetLevel(level)
			logrus.SetOutput(cmd.ErrOrStderr())
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(newTranslateCommand(), newServeCommand(), newBootstrapCommand(), newStatusCommand(), newConfigCommand(), newConnectCommand(), newNodeReadyCommand(), newVersionCommand())
	return root
}
