// Command spoke-benchplot draws the data-path curve from the JSON that
// make bench-datapath writes (SPOKE_BENCH_JSON), one file per spoke setting:
// set-up p99 beside bulk (filled: bulk at one rate for every system; hollow:
// unlimited bulk) against 16-stream throughput, one point per spoke setting,
// Konnectivity and direct TCP marked, the defaults ringed.
//
//	go run ./cmd/spoke-benchplot -o docs/datapath-curve.svg dist/curve/*.json
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The systems as the benchmark names them (e2e/datapath_bench_test.go).
const (
	spokePrefix        = "spoke"
	konnectivityPrefix = "Konnectivity"
	directPrefix       = "direct TCP"
)

// run is the part of one benchmark run's JSON the plot reads.
type run struct {
	Settings string   `json:"settings"`
	Systems  []system `json:"systems"`
}

type system struct {
	Name    string     `json:"system"`
	Failed  int        `json:"failed_rounds"`
	Paced   [3]float64 `json:"beside_paced_bulk_ms_p50_p90_p99"`
	Free    [3]float64 `json:"beside_unlimited_bulk_ms_p50_p90_p99"`
	Sixteen float64    `json:"sixteen_streams_mbps"`
}

// point is one system under one setting.
type point struct {
	label      string
	throughput float64 // MB/s, 16 streams
	paced      float64 // ms, set-up p99 beside bulk at the same rate for every system
	free       float64 // ms, set-up p99 beside unlimited bulk
}

func main() {
	out := flag.String("o", "datapath-curve.svg", "the picture to write (.svg or .png)")
	flag.Parse()
	if flag.NArg() == 0 {
		fail(fmt.Errorf("no benchmark output given: pass the JSON files of make bench-datapath (SPOKE_BENCH_JSON)"))
	}
	runs, err := readRuns(flag.Args())
	if err != nil {
		fail(err)
	}
	p, err := curve(runs)
	if err != nil {
		fail(err)
	}
	if err := p.Save(9*vg.Inch, 6*vg.Inch, *out); err != nil {
		fail(fmt.Errorf("write %s: %w", *out, err))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "spoke-benchplot:", err)
	os.Exit(1)
}

func readRuns(paths []string) ([]run, error) {
	var runs []run
	for _, path := range paths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var r run
		if err := json.Unmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("%s: not benchmark output: %w", path, err)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// points splits the runs' figures by system: spoke once per setting,
// Konnectivity and direct TCP once per run (they do not change with
// spoke's settings; every run measured them again). Failed systems have no
// figures and are left out.
func points(runs []run) (spoke, konn, direct []point, defaults *point) {
	for _, r := range runs {
		for _, s := range r.Systems {
			if s.Failed > 0 || s.Sixteen == 0 {
				continue
			}
			pt := point{label: shortSettings(r.Settings), throughput: s.Sixteen, paced: s.Paced[2], free: s.Free[2]}
			switch {
			case strings.HasPrefix(s.Name, spokePrefix):
				if r.Settings == "" {
					defaults = &pt
				}
				spoke = append(spoke, pt)
			case strings.HasPrefix(s.Name, konnectivityPrefix):
				konn = append(konn, pt)
			case strings.HasPrefix(s.Name, directPrefix):
				direct = append(direct, pt)
			}
		}
	}
	slices.SortFunc(spoke, func(a, b point) int { return int(a.throughput - b.throughput) })
	return spoke, konn, direct, defaults
}

// shortSettings labels a point: "defaults", or the tunnel buffer and unsent
// limits it sets, in KiB ("buffer 128K, unsent 64K"; 0 is Envoy's or the
// kernel's own).
func shortSettings(settings string) string {
	if settings == "" {
		return "defaults"
	}
	var parts []string
	for _, f := range []struct{ key, name string }{{"tunnelBufferLimit", "buffer"}, {"tunnelUnsentLimit", "unsent"}} {
		_, rest, ok := strings.Cut(settings, f.key+":")
		if !ok {
			continue
		}
		value := strings.Trim(strings.Fields(rest)[0], ",}")
		if n, err := strconv.Atoi(value); err == nil {
			switch {
			case n == 0:
				value = "0 (" + map[string]string{"buffer": "Envoy's 1M", "unsent": "none"}[f.name] + ")"
			case n%1024 == 0:
				value = strconv.Itoa(n/1024) + "K"
			}
		}
		parts = append(parts, f.name+" "+value)
	}
	if len(parts) == 0 {
		return settings
	}
	return strings.Join(parts, ", ")
}

// The two bulk loads a set-up is measured beside.
const (
	pacedName = "beside bulk at one rate for all"
	freeName  = "beside unlimited bulk"
)

func curve(runs []run) (*plot.Plot, error) {
	spoke, konn, direct, defaults := points(runs)
	if len(spoke) == 0 {
		return nil, fmt.Errorf("no spoke figures in the given runs (every spoke round failed?)")
	}
	p := plot.New()
	p.Title.Text = "spoke's tunnel settings: set-up p99 beside bulk against 16-stream throughput"
	p.X.Label.Text = "16-stream throughput (MB/s, log scale)"
	p.Y.Label.Text = "set-up p99 (ms, log scale)"
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	p.Add(plotter.NewGrid())
	blue, red, green := color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}
	for _, series := range []struct {
		name  string
		pts   []point
		color color.Color
		shape draw.GlyphDrawer
	}{
		{"spoke, one point per setting", spoke, blue, draw.CircleGlyph{}},
		{"Konnectivity v0.34.0, each run", konn, red, draw.BoxGlyph{}},
		{"direct TCP, each run", direct, green, draw.PyramidGlyph{}},
	} {
		if len(series.pts) == 0 {
			continue
		}
		for _, load := range []struct {
			name   string
			y      func(point) float64
			filled bool
		}{{pacedName, func(pt point) float64 { return pt.paced }, true}, {freeName, func(pt point) float64 { return pt.free }, false}} {
			sc, err := plotter.NewScatter(xys(series.pts, load.y))
			if err != nil {
				return nil, err
			}
			shape := series.shape
			if !load.filled {
				shape = hollow(series.shape)
			}
			sc.GlyphStyle = draw.GlyphStyle{Color: series.color, Radius: vg.Points(3.5), Shape: shape}
			p.Add(sc)
			p.Legend.Add(series.name+", "+load.name, sc)
		}
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys(spoke, func(pt point) float64 { return pt.free }), Labels: labelsOf(spoke)})
	if err != nil {
		return nil, err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(7)
		labels.TextStyle[i].XAlign = draw.XLeft
	}
	labels.Offset = vg.Point{X: vg.Points(6)}
	p.Add(labels)
	if defaults != nil {
		ring, err := plotter.NewScatter(plotter.XYs{{X: defaults.throughput, Y: defaults.paced}, {X: defaults.throughput, Y: defaults.free}})
		if err != nil {
			return nil, err
		}
		ring.GlyphStyle = draw.GlyphStyle{Color: color.Black, Radius: vg.Points(9), Shape: draw.RingGlyph{}}
		p.Add(ring)
		p.Legend.Add("spoke's defaults", ring)
	}
	p.Legend.Top, p.Legend.Left = false, true // the corner no point reaches
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	return p, nil
}

// hollow is the outline of a filled glyph.
func hollow(g draw.GlyphDrawer) draw.GlyphDrawer {
	switch g.(type) {
	case draw.CircleGlyph:
		return draw.RingGlyph{}
	case draw.BoxGlyph:
		return draw.SquareGlyph{}
	case draw.PyramidGlyph:
		return draw.TriangleGlyph{}
	}
	return g
}

func xys(pts []point, y func(point) float64) plotter.XYs {
	out := make(plotter.XYs, len(pts))
	for i, pt := range pts {
		out[i] = plotter.XY{X: pt.throughput, Y: y(pt)}
	}
	return out
}

func labelsOf(pts []point) []string {
	out := make([]string, len(pts))
	for i, pt := range pts {
		out[i] = pt.label
	}
	return out
}
