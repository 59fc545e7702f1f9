package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/spokeproxy/spoke/envoy"
)

// version and commit are stamped by the linker (make build, the image):
// -ldflags "-X main.version=v0.3.0 -X main.commit=<sha>". Without them, the
// Go toolchain's build info fills in: the module version for `go install
// ...@v0.3.0`, the VCS revision for a build inside a checkout.
var version, commit string

// buildInfo is what `spoke version` prints.
type buildInfo struct {
	Version, Commit, Envoy, Go string
	Modified                   bool
}

func currentBuild() buildInfo {
	b := buildInfo{Version: version, Commit: commit, Envoy: envoy.Version, Go: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b.withDefaults()
	}
	if b.Version == "" {
		b.Version = info.Main.Version // "(devel)" for a build from a checkout
	}
	for _, s := range info.Settings {
		switch {
		case s.Key == "vcs.revision" && b.Commit == "":
			b.Commit = s.Value
		case s.Key == "vcs.modified" && commit == "":
			b.Modified = s.Value == "true"
		}
	}
	return b.withDefaults()
}

func (b buildInfo) withDefaults() buildInfo {
	if b.Version == "" {
		b.Version = "(devel)"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func (b buildInfo) print(w io.Writer) {
	modified := ""
	if b.Modified {
		modified = " (with uncommitted changes)"
	}
	fmt.Fprintf(w, "spoke %s\ncommit %s%s\nenvoy %s (the Envoy release spoke's config is made for)\ngo %s %s/%s\n",
		b.Version, b.Commit, modified, b.Envoy, b.Go, runtime.GOOS, runtime.GOARCH)
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print spoke's version and commit, and the Envoy version it targets",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			currentBuild().print(cmd.OutOrStdout())
			return nil
		},
	}
}
