// Command spoke-benchplot draws the data-path curve from the JSON that
// make bench-datapath writes (SPOKE_BENCH_JSON), one file per spoke setting:
// set-up p99 beside paced bulk against 16-stream throughput, one point per
// spoke setting, Konnectivity and direct TCP marked, the defaults circled.
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
	Sixteen float64    `json:"sixteen_streams_mbps"`
}

// point is one system under one setting.
type point struct {
	label      string
	throughput float64 // MB/s, 16 streams
	p99        float64 // ms, set-up beside paced bulk
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
	if err := p.Save(8*vg.Inch, 5*vg.Inch, *out); err != nil {
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
			pt := point{label: r.Settings, throughput: s.Sixteen, p99: s.Paced[2]}
			switch {
			case strings.HasPrefix(s.Name, spokePrefix):
				if pt.label == "" {
					pt.label = "defaults"
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

func curve(runs []run) (*plot.Plot, error) {
	spoke, konn, direct, defaults := points(runs)
	if len(spoke) == 0 {
		return nil, fmt.Errorf("no spoke figures in the given runs (every spoke round failed?)")
	}
	p := plot.New()
	p.Title.Text = "spoke's tunnel settings: set-up beside bulk against throughput"
	p.X.Label.Text = "16-stream throughput (MB/s)"
	p.Y.Label.Text = "set-up p99 beside paced bulk (ms)"
	p.Add(plotter.NewGrid())
	for _, series := range []struct {
		name  string
		pts   []point
		color color.Color
		shape draw.GlyphDrawer
	}{
		{"spoke (one point per setting)", spoke, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, draw.CircleGlyph{}},
		{"Konnectivity v0.34.0", konn, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, draw.SquareGlyph{}},
		{"direct TCP", direct, color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff}, draw.TriangleGlyph{}},
	} {
		if len(series.pts) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(xys(series.pts))
		if err != nil {
			return nil, err
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: series.color, Radius: vg.Points(3.5), Shape: series.shape}
		p.Add(sc)
		p.Legend.Add(series.name, sc)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys(spoke), Labels: labelsOf(spoke)})
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
		ring, err := plotter.NewScatter(xys([]point{*defaults}))
		if err != nil {
			return nil, err
		}
		ring.GlyphStyle = draw.GlyphStyle{Color: color.Black, Radius: vg.Points(9), Shape: draw.RingGlyph{}}
		p.Add(ring)
		p.Legend.Add("spoke's defaults", ring)
	}
	p.Legend.Top = true
	return p, nil
}

func xys(pts []point) plotter.XYs {
	out := make(plotter.XYs, len(pts))
	for i, pt := range pts {
		out[i] = plotter.XY{X: pt.throughput, Y: pt.p99}
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
