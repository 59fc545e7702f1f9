package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCurveFromBenchmarkOutput draws the fixture runs: one spoke point per
// setting (labelled, the defaults ringed), Konnectivity and direct TCP
// marked, a failed system left out.
func TestCurveFromBenchmarkOutput(t *testing.T) {
	runs, err := readRuns([]string{"testdata/defaults.json", "testdata/buffer-256k.json"})
	if err != nil {
		t.Fatal(err)
	}
	spoke, konn, direct, defaults := points(runs)
	if len(spoke) != 2 || len(konn) != 1 || len(direct) != 1 {
		t.Fatalf("points: %d spoke, %d Konnectivity, %d direct; want 2, 1 (the failed run left out), 1", len(spoke), len(konn), len(direct))
	}
	if defaults == nil || defaults.throughput != 500 || defaults.paced != 5 || defaults.free != 20 {
		t.Fatalf("defaults: %+v, want the run without settings (500 MB/s, 5 ms, 20 ms)", defaults)
	}
	p, err := curve(runs)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "curve.svg")
	if err := p.Save(400, 250, out); err != nil {
		t.Fatal(err)
	}
	svg, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "spoke&#39;s defaults", "Konnectivity v0.34.0", "direct TCP", "buffer 256K, unsent 32K", "16-stream throughput", "beside unlimited bulk"} {
		if !strings.Contains(string(svg), want) {
			t.Errorf("the picture lacks %q", want)
		}
	}
}

func TestNoSpokeFiguresIsAnError(t *testing.T) {
	if _, err := curve([]run{{Systems: []system{{Name: "Konnectivity v0.34.0", Sixteen: 150}}}}); err == nil {
		t.Fatal("a picture without spoke was drawn")
	}
}

func TestShortSettings(t *testing.T) {
	for in, want := range map[string]string{
		"": "defaults",
		"{tunnelBufferLimit: 131072, tunnelUnsentLimit: 65536}": "buffer 128K, unsent 64K",
		"{tunnelBufferLimit: 0, tunnelUnsentLimit: 0}":          "buffer 0 (Envoy's 1M), unsent 0 (none)",
		"{tunnelStreamWindow: 65536}":                           "{tunnelStreamWindow: 65536}",
	} {
		if got := shortSettings(in); got != want {
			t.Errorf("shortSettings(%q) = %q, want %q", in, got, want)
		}
	}
}
