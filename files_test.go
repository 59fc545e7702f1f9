package spoke

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// maxTrackedBytes bounds a tracked file; build outputs, downloads and data
// dumps belong in git-ignored folders, made by make targets.
const maxTrackedBytes = 1 << 20

// largeFileReasons lists the tracked files allowed over maxTrackedBytes,
// each with why it must live in git. Add one only with a reason a reviewer
// would accept (a golden file that cannot be generated smaller, say).
var largeFileReasons = map[string]string{}

// magic numbers of executables and archives, at offset 0.
var magics = []struct {
	kind   string
	prefix []byte
}{
	{"ELF executable", []byte("\x7fELF")},
	{"Mach-O executable", []byte{0xcf, 0xfa, 0xed, 0xfe}},
	{"Mach-O executable", []byte{0xce, 0xfa, 0xed, 0xfe}},
	{"Mach-O universal binary", []byte{0xca, 0xfe, 0xba, 0xbe}},
	{"Windows executable", []byte("MZ")},
	{"zip archive (wheel, jar)", []byte("PK\x03\x04")},
	{"gzip archive", []byte{0x1f, 0x8b}},
	{"xz archive", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}},
	{"zstd archive", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"bzip2 archive", []byte("BZh")},
	{"7z archive", []byte{'7', 'z', 0xbc, 0xaf, 0x27, 0x1c}},
	{"ar archive (.a, .deb)", []byte("!<arch>\n")},
}

var archiveNames = regexp.MustCompile(`\.(whl|jar|zip|tar|tgz|gz|xz|zst|bz2|7z|deb|rpm|so|a|dylib|dll|exe|oci)$`)

// trackedFileProblem says why a tracked file does not belong in git, or "".
// head is the file's first bytes; mode its git mode ("100755": executable).
func trackedFileProblem(path, mode string, head []byte, size int64) string {
	for _, m := range magics {
		if bytes.HasPrefix(head, m.prefix) {
			return m.kind
		}
	}
	if len(head) > 262 && bytes.Equal(head[257:262], []byte("ustar")) {
		return "tar archive"
	}
	if archiveNames.MatchString(path) {
		return "archive or binary by its name"
	}
	if mode == "100755" && !bytes.HasPrefix(head, []byte("#!")) {
		return "executable that is not a script"
	}
	if size > maxTrackedBytes {
		if _, ok := largeFileReasons[path]; !ok {
			return fmt.Sprintf("%d bytes, over %d without a reason in largeFileReasons", size, maxTrackedBytes)
		}
	}
	return ""
}

// TestNoBinariesOrArchivesTracked: git holds source, never what is built or
// downloaded.
func TestNoBinariesOrArchivesTracked(t *testing.T) {
	out, err := exec.Command("git", "ls-files", "-s", "-z").Output()
	if err != nil {
		t.Skipf("not a git checkout, or git is missing (%v): nothing to check", err)
	}
	checked := 0
	for _, entry := range strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00") {
		meta, path, ok := strings.Cut(entry, "\t")
		if !ok {
			continue
		}
		mode := strings.Fields(meta)[0]
		f, err := os.Open(path)
		if err != nil {
			continue // deleted in the work tree, not yet committed
		}
		head := make([]byte, 512)
		n, _ := io.ReadFull(f, head)
		info, err := f.Stat()
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if problem := trackedFileProblem(path, mode, head[:n], info.Size()); problem != "" {
			t.Errorf("%s is tracked (%s): remove it with git rm --cached and make it with a make target", path, problem)
		}
		checked++
	}
	if checked < 50 {
		t.Errorf("checked only %d tracked files; is the test running in the repository root?", checked)
	}
}

// TestTrackedFileCheckBites: what was once committed by mistake is caught.
func TestTrackedFileCheckBites(t *testing.T) {
	tar := make([]byte, 512)
	copy(tar[257:], "ustar")
	cases := []struct {
		path, mode string
		head       []byte
		size       int64
		bad        bool
	}{
		{"spoke-load", "100755", []byte("\x7fELF\x02\x01\x01"), 70 << 20, true},
		{"pyyaml-6.0.4-cp311-manylinux.whl", "100644", []byte("PK\x03\x04"), 800 << 10, true},
		{"image.tar", "100644", tar, 4096, true},
		{"tool", "100755", []byte("\x00\x01binary"), 100, true},
		{"big.json", "100644", []byte("{"), 2 << 20, true},
		{".ci/run", "100755", []byte("#!/usr/bin/env bash\n"), 300, false},
		{"xds/server.go", "100644", []byte("package xds"), 10 << 10, false},
		{"testdata/pods.yaml", "100644", []byte("apiVersion: v1"), maxTrackedBytes, false},
	}
	for _, c := range cases {
		if got := trackedFileProblem(c.path, c.mode, c.head, c.size); (got != "") != c.bad {
			t.Errorf("%s: problem %q, want bad=%v", c.path, got, c.bad)
		}
	}
}

var markdownLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestDocsStayInTheRepository: README and docs/ link only to files that
// exist in the repository (no web links, nothing beside the clone), so a
// reader of any clone can follow every link.
func TestDocsStayInTheRepository(t *testing.T) {
	docs, _ := filepath.Glob("docs/*.md")
	tests := testsByDir(t, ".")
	if len(docs) < 5 {
		t.Fatalf("want the docs/ pages (architecture, envoy, trust, operations, testing), found %v", docs)
	}
	for _, doc := range append(docs, "README.md") {
		raw, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		if problem := linkProblems(doc, string(raw)); problem != "" {
			t.Error(problem)
		}
		for _, missing := range missingTests(string(raw), tests) {
			t.Errorf("%s cites %s, which does not exist", doc, missing)
		}
	}
}

// TestTestIndexSkipsWhatGoSkips: test files where the go tool finds no
// package (.tools, testdata) are not tests docs may cite, and their trees
// are not read (a kind rootfs under .tools can hold a mounted /proc).
func TestTestIndexSkipsWhatGoSkips(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"e2e/a_test.go", ".tools/x/b_test.go", "e2e/testdata/c_test.go", "_old/d_test.go"} {
		path := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte("package x\n\nfunc TestIt(t *testing.T) {}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got := testsByDir(t, root)
	if len(got) != 1 || !got["e2e"]["TestIt"] {
		t.Errorf("indexed %v, want only e2e's TestIt", got)
	}
}

// testCitation is how docs name a test: `TestName`, or `dir/TestName`.
var testCitation = regexp.MustCompile(`\b((?:[a-z0-9_.-]+/)*)((?:Test|Fuzz)[A-Z][A-Za-z0-9_]*)`)

var testFunc = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz)[A-Z][A-Za-z0-9_]*)\(`)

// goSkipsDir: the go tool finds no packages (so runs no tests) in .tools,
// .git, _anything or testdata. Walking .tools also read a kind node image's
// rootfs while debootstrap had /proc mounted in it ("permission denied").
func goSkipsDir(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata"
}

// testsByDir finds every test function under root, by directory.
func testsByDir(t *testing.T, root string) map[string]map[string]bool {
	t.Helper()
	tests := map[string]map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && path != root && goSkipsDir(d.Name()) {
			return filepath.SkipDir
		}
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		for _, m := range testFunc.FindAllStringSubmatch(string(raw), -1) {
			if tests[dir] == nil {
				tests[dir] = map[string]bool{}
			}
			tests[dir][m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tests
}

// missingTests lists the tests text cites that do not exist (in the cited
// directory, or anywhere when it names none).
func missingTests(text string, tests map[string]map[string]bool) []string {
	var missing []string
	for _, m := range testCitation.FindAllStringSubmatch(text, -1) {
		dir, name := strings.TrimSuffix(m[1], "/"), m[2]
		found := false
		for d, names := range tests {
			if names[name] && (dir == "" || d == dir || strings.HasSuffix(d, "/"+dir)) {
				found = true
			}
		}
		if !found {
			missing = append(missing, m[0])
		}
	}
	return missing
}

// linkProblems checks the links of one markdown file at path (relative to
// the repository root).
func linkProblems(path, text string) string {
	var problems []string
	if strings.Contains(text, "../shared") {
		problems = append(problems, "mentions ../shared, which no clone has")
	}
	for _, m := range markdownLink.FindAllStringSubmatch(text, -1) {
		target, _, _ := strings.Cut(m[1], "#")
		switch {
		case target == "":
			continue // an anchor in the same page
		case strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:"):
			problems = append(problems, "links outside the repository: "+m[1])
			continue
		}
		resolved := filepath.Clean(filepath.Join(filepath.Dir(path), target))
		if resolved == ".." || strings.HasPrefix(resolved, "../") || filepath.IsAbs(resolved) {
			problems = append(problems, "links outside the repository: "+m[1])
		} else if _, err := os.Stat(resolved); err != nil {
			problems = append(problems, "links to a missing file: "+m[1])
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return path + ": " + strings.Join(problems, "; ")
}

func TestLinkCheckBites(t *testing.T) {
	for _, bad := range []string{"see [design](../shared/DESIGN.md)", "[envoy](https://envoyproxy.io)", "[gone](docs/nope.md)", "[up](../../etc/passwd)"} {
		if linkProblems("README.md", bad) == "" {
			t.Errorf("%q passed the link check", bad)
		}
	}
	if p := linkProblems("docs/trust.md", "[readme](../README.md#trust) [make](../Makefile) [here](#top)"); p != "" {
		t.Errorf("good links refused: %s", p)
	}
	tests := map[string]map[string]bool{"xds": {"TestClientCARotation": true}, "e2e": {"TestRotationKeepsTunnelsWorking": true}}
	got := missingTests("`xds/TestClientCARotation`, `TestRotationKeepsTunnelsWorking`, `pki/TestClientCARotation`, `TestGone`", tests)
	if strings.Join(got, ",") != "pki/TestClientCARotation,TestGone" {
		t.Errorf("missing tests: got %q, want the one in the wrong package and the one that does not exist", got)
	}
}
