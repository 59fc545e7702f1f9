package envoy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// WriteBootstrap writes b as JSON (Envoy reads .json bootstraps directly).
func WriteBootstrap(dir string, b *bootstrapv3.Bootstrap) (string, error) {
	raw, err := protojson.MarshalOptions{UseProtoNames: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return "", fmt.Errorf("render bootstrap: %w", err)
	}
	path := filepath.Join(dir, "bootstrap.json")
	return path, os.WriteFile(path, raw, 0o600)
}

// Validate has the real Envoy load b in validate mode (`envoy --mode
// validate`), which builds every listener, cluster and route the way a running
// Envoy would, without binding or connecting. The error carries Envoy's output.
func Validate(ctx context.Context, bin string, b *bootstrapv3.Bootstrap) error {
	dir, err := os.MkdirTemp("", "spoke-validate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path, err := WriteBootstrap(dir, b)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, "--mode", "validate", "-c", path, "--log-level", "warn")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("envoy rejected the config: %w\n%s", err, out)
	}
	return nil
}
