package filewatch

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func parseText(contents [][]byte) (string, error) {
	if len(contents[0]) == 0 || contents[0][0] == '!' {
		return "", errors.New("not valid")
	}
	return string(contents[0]), nil
}

// TestFilesKeepLastGood: a changed file is re-read, a broken or missing one
// keeps the last good value (rotations write in several steps), a missing
// file with no good copy yet is an error.
func TestFilesKeepLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ca.crt")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	f, err := Load(parseText, path)
	if err != nil {
		t.Fatal(err)
	}
	if v, changed, err := f.Get(0); v != "first" || changed || err != nil {
		t.Errorf("unchanged file: %q changed=%v err=%v", v, changed, err)
	}
	write("!broken")
	if v, changed, err := f.Get(0); v != "first" || changed || err == nil {
		t.Errorf("broken file: want the last good value and an error, got %q changed=%v err=%v", v, changed, err)
	}
	write("second")
	if v, changed, err := f.Get(0); v != "second" || !changed || err != nil {
		t.Errorf("changed file not reloaded: %q changed=%v err=%v", v, changed, err)
	}
	os.Remove(path)
	if v, _, err := f.Get(0); v != "second" || err == nil {
		t.Errorf("missing file: want the last good value and an error, got %q, %v", v, err)
	}
	write("third")
	if v, _, _ := f.Get(1 << 62); v != "second" {
		t.Errorf("re-read before maxAge passed: %q", v)
	}
	if _, err := Load(parseText, filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing file with no good copy yet must be an error")
	}
}
