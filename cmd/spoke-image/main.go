// Command spoke-image writes the spoke container image without a Docker
// daemon: one layer holding the static spoke binary at /spoke, nothing else
// (no shell, no package manager), run as a non-root user. The output is an
// image archive that `docker load`, `ctr images import` and
// `kind load image-archive` take. `make image` builds the binary and runs it.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NonRootUser is the image's user: no account file is needed for a
// numeric one, and Kubernetes' runAsNonRoot accepts it.
const NonRootUser = "65532:65532"

func main() {
	binary := flag.String("binary", "", "the static spoke binary (CGO_ENABLED=0)")
	tag := flag.String("tag", "spoke:dev", "image reference written into the archive")
	version := flag.String("version", "dev", "org.opencontainers.image.version label")
	out := flag.String("out", "dist/spoke-image.tar", "the image archive to write")
	flag.Parse()
	if err := run(*binary, *tag, *version, *out); err != nil {
		fmt.Fprintln(os.Stderr, "spoke-image:", err)
		os.Exit(1)
	}
}

func run(binary, tag, version, out string) error {
	if binary == "" {
		return fmt.Errorf("--binary is required: build it with CGO_ENABLED=0 (make image does)")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", tag, err)
	}
	img, err := Build(binary, version)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return tarball.WriteToFile(out, ref, img)
}

// Build assembles the image from the binary file.
func Build(binary, version string) (v1.Image, error) {
	raw, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("read the spoke binary: %w", err)
	}
	if !bytes.HasPrefix(raw, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not a Linux executable", binary)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return binaryTar(raw) })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Entrypoint = []string{"/spoke"}
	cfg.Config.User = NonRootUser
	cfg.Config.WorkingDir = "/"
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   "spoke",
		"org.opencontainers.image.version": version,
	}
	return mutate.ConfigFile(img, cfg)
}

// binaryTar is the layer: /spoke, executable, owned by root (the non-root
// user runs it but cannot change it), with a fixed time so that the same
// binary gives the same layer digest.
func binaryTar(raw []byte) (io.ReadCloser, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: "spoke", Mode: 0o755, Size: int64(len(raw)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
	if err := w.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := w.Write(raw); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}
