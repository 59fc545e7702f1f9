// Command spoke-image writes container images without a Docker daemon, as
// archives that `docker load`, `ctr images import` and `kind load
// image-archive` take. `make image` builds two:
//
//   - spoke: one layer holding the static spoke binary at /spoke and nothing
//     else (no shell, no package manager), run as a non-root user;
//   - envoy: the installed Envoy binary at /usr/local/bin/envoy with exactly
//     the shared libraries it loads, for tests on machines that reach no
//     registry (users run the official envoyproxy/envoy image instead).
package main

import (
	"archive/tar"
	"bytes"
	"cmp"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NonRootUser is the images' user: no account file is needed for a
// numeric one, and Kubernetes' runAsNonRoot accepts it.
const NonRootUser = "65532:65532"

// EnvoyPath is where the envoy image holds the binary.
const EnvoyPath = "/usr/local/bin/envoy"

func main() {
	binary := flag.String("binary", "", "the static spoke binary (CGO_ENABLED=0)")
	envoyBinary := flag.String("envoy", "", "build the envoy image from this Envoy binary instead (its shared libraries found with ldd)")
	staticBinary := flag.String("static", "", "build a test image from this other static binary instead (e.g. agnhost), at --path, run with --arg")
	path := flag.String("path", "", "where --static goes in the image (default: /<its file name>)")
	var args, cmd, links, adds, dirs []string
	flag.Func("arg", "argument after --static's path in the entrypoint (repeat for more)", func(a string) error { args = append(args, a); return nil })
	flag.Func("cmd", "the --static image's default command or arguments, its CMD (repeat for more)", func(a string) error { cmd = append(cmd, a); return nil })
	noEntrypoint := flag.Bool("no-entrypoint", false, "the --static image has no entrypoint: a pod's args (or --cmd) are the whole command, as in upstream's busybox")
	flag.Func("dir", "PATH[:MODE]: an empty directory in the --static image, e.g. /tmp:1777 (repeat for more)", func(a string) error { dirs = append(dirs, a); return nil })
	flag.Func("link", "a symbolic link to --static's path, e.g. /bin/sh for a busybox, or PATH=TARGET (repeat for more)", func(a string) error { links = append(links, a); return nil })
	flag.Func("add", "SRC=DST: one more file in the --static image (repeat for more)", func(a string) error { adds = append(adds, a); return nil })
	user := flag.String("user", NonRootUser, "the --static image's user (some upstream test images run as root: 0)")
	tag := flag.String("tag", "spoke:dev", "image reference written into the archive")
	version := flag.String("version", "dev", "org.opencontainers.image.version label")
	out := flag.String("out", "dist/spoke-image.tar", "the image archive to write")
	flag.Parse()
	var err error
	switch {
	case *envoyBinary != "":
		err = runEnvoy(*envoyBinary, *tag, *version, *out)
	case *staticBinary != "":
		var img v1.Image
		st := Static{Binary: *staticBinary, Path: cmp.Or(*path, "/"+filepath.Base(*staticBinary)), Args: args, Cmd: cmd, NoEntrypoint: *noEntrypoint,
			Links: links, Adds: adds, Dirs: dirs, User: *user, Version: *version}
		if img, err = st.Build(); err == nil {
			err = write(img, *tag, *out)
		}
	default:
		err = run(*binary, *tag, *version, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "spoke-image:", err)
		os.Exit(1)
	}
}

// file is one file of an image layer.
type file struct {
	path string // absolute, in the image
	data []byte
	mode int64
	link string // a symbolic link to this path instead of data
	dir  bool   // an empty directory instead of data
}

func run(binary, tag, version, out string) error {
	if binary == "" {
		return fmt.Errorf("--binary is required: build it with CGO_ENABLED=0 (make image does)")
	}
	img, err := Build(binary, version)
	if err != nil {
		return err
	}
	return write(img, tag, out)
}

func runEnvoy(binary, tag, version, out string) error {
	img, err := BuildEnvoy(binary, version)
	if err != nil {
		return err
	}
	return write(img, tag, out)
}

func write(img v1.Image, tag, out string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("--tag %q: %w", tag, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	return tarball.WriteToFile(out, ref, img)
}

// Build assembles the spoke image from the binary file.
func Build(binary, version string) (v1.Image, error) {
	raw, err := readExecutable(binary)
	if err != nil {
		return nil, err
	}
	return image([]file{{path: "/spoke", data: raw, mode: 0o755}}, []string{"/spoke"}, nil, "spoke", version, NonRootUser)
}

// Static is a test image of one other binary (static, or with the shared
// libraries it loads) at Path, whose
// entrypoint is Path and Args: the test workloads (agnhost, agnhost pause as
// the pod sandbox image, busybox) of clusters that reach no registry. Links
// (a busybox's commands), other files (certificates a test server reads)
// and a user give what upstream's test images hold, for tests that expect
// them.
type Static struct {
	Binary, Path  string
	Args          []string // after Path in the entrypoint
	Cmd           []string // the image's CMD: default arguments (or command, with NoEntrypoint)
	NoEntrypoint  bool     // no entrypoint: the pod's command is all (upstream's busybox)
	Links         []string // absolute paths in the image, each a link to Path (or PATH=TARGET)
	Adds          []string // SRC=DST, with SRC's permissions
	Dirs          []string // PATH[:MODE] (octal), empty directories such as /tmp:1777
	User, Version string
}

// Build assembles the image.
func (st Static) Build() (v1.Image, error) {
	raw, err := readExecutable(st.Binary)
	if err != nil {
		return nil, err
	}
	// A dynamic binary (kube-apiserver built with cgo) brings the shared
	// libraries it loads, as the envoy image does.
	libs, err := libraryFiles(st.Binary, false)
	if err != nil {
		return nil, err
	}
	files := append([]file{{path: st.Path, data: raw, mode: 0o755}}, libs...)
	for _, l := range st.Links {
		name, target, explicit := strings.Cut(l, "=")
		if !explicit {
			target = st.Path
		}
		files = append(files, file{path: name, link: target, mode: 0o777})
	}
	for _, a := range st.Adds {
		src, dst, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(dst, "/") {
			return nil, fmt.Errorf("--add %q: want SRC=/absolute/destination", a)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		info, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		files = append(files, file{path: dst, data: data, mode: int64(info.Mode().Perm() | 0o444)})
	}
	for _, d := range st.Dirs {
		path, modeText, _ := strings.Cut(d, ":")
		mode, err := strconv.ParseInt(cmp.Or(modeText, "755"), 8, 64)
		if err != nil || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("--dir %q: want /absolute/path[:octal mode]", d)
		}
		files = append(files, file{path: path, mode: mode, dir: true})
	}
	entrypoint := append([]string{st.Path}, st.Args...)
	if st.NoEntrypoint {
		entrypoint = nil
	}
	return image(files, entrypoint, st.Cmd, filepath.Base(st.Path), st.Version, st.User)
}

// BuildEnvoy assembles the envoy image: the binary and the shared libraries
// ldd says it loads (the dynamic loader included), at their own paths.
func BuildEnvoy(binary, version string) (v1.Image, error) {
	raw, err := readExecutable(binary)
	if err != nil {
		return nil, err
	}
	libs, err := libraryFiles(binary, true)
	if err != nil {
		return nil, err
	}
	return image(append([]file{{path: EnvoyPath, data: raw, mode: 0o755}}, libs...), []string{EnvoyPath}, nil, "envoy", version, NonRootUser)
}

func readExecutable(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !bytes.HasPrefix(raw, []byte("\x7fELF")) {
		return nil, fmt.Errorf("%s is not a Linux executable", path)
	}
	return raw, nil
}

// libraryFiles are the shared libraries binary loads (the dynamic loader
// included), as image files at their own paths: none for a static binary
// (no program interpreter), unless required, when that is an error.
func libraryFiles(binary string, required bool) ([]file, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", binary, err)
	}
	dynamic := slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP })
	f.Close()
	if !dynamic && !required {
		return nil, nil
	}
	libs, err := sharedLibraries(binary)
	if err != nil {
		return nil, err
	}
	var files []file
	for _, lib := range libs {
		data, err := os.ReadFile(lib) // follows the symlink: the image holds a plain file
		if err != nil {
			return nil, fmt.Errorf("shared library %s: %w", lib, err)
		}
		files = append(files, file{path: lib, data: data, mode: 0o755})
	}
	return files, nil
}

// sharedLibraries parses `ldd` output ("libc.so.6 => /lib/.../libc.so.6 (0x..)"
// and the loader's "/lib64/ld-linux-x86-64.so.2 (0x..)").
func sharedLibraries(binary string) ([]string, error) {
	out, err := exec.Command("ldd", binary).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w (is it a dynamic executable, and is ldd installed?)", binary, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "/"):
			libs = append(libs, fields[2])
		case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
			libs = append(libs, fields[0])
		case len(fields) >= 2 && fields[1] == "=>" && fields[2] == "not":
			return nil, fmt.Errorf("ldd %s: %s is not found", binary, fields[0])
		}
	}
	sort.Strings(libs)
	return libs, nil
}

// image is one layer of files on an empty base, run as user.
func image(files []file, entrypoint, cmd []string, title, version, user string) (v1.Image, error) {
	// Compressed once and kept: without the cache the layer is gzipped
	// again for its digest and for the archive.
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return layerTar(files) }, tarball.WithCompressedCaching)
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
	cfg.Config.Entrypoint = entrypoint
	cfg.Config.Cmd = cmd
	cfg.Config.User = user
	cfg.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	cfg.Config.WorkingDir = "/"
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.title":   title,
		"org.opencontainers.image.version": version,
	}
	return mutate.ConfigFile(img, cfg)
}

// layerTar writes files (and their parent directories) owned by root,
// which the non-root user can run but not change, with a fixed time so that
// the same files give the same layer digest.
func layerTar(files []file) (io.ReadCloser, error) {
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	dirs := map[string]int64{} // every directory, with its mode
	for _, f := range files {
		rel := strings.TrimPrefix(f.path, "/")
		if f.dir {
			dirs[rel] = f.mode
		}
		for d := filepath.Dir(rel); d != "." && dirs[d] == 0; d = filepath.Dir(d) {
			dirs[d] = 0o755
		}
	}
	var dirList []string
	for d := range dirs {
		dirList = append(dirList, d)
	}
	sort.Strings(dirList) // parents before children
	for _, d := range dirList {
		if err := w.WriteHeader(&tar.Header{Name: d + "/", Mode: dirs[d], ModTime: time.Unix(0, 0), Typeflag: tar.TypeDir}); err != nil {
			return nil, err
		}
	}
	for _, f := range files {
		if f.dir {
			continue // written above
		}
		hdr := &tar.Header{Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, Size: int64(len(f.data)), ModTime: time.Unix(0, 0), Typeflag: tar.TypeReg}
		if f.link != "" {
			hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeSymlink, f.link, 0
		}
		if err := w.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := w.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return io.NopCloser(&buf), nil
}
