package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// figureNames are the measurements -only selects from, in run order.
var figureNames = []string{"pebble", "http", "wire", "agent", "latency", "aggregator", "rss"}

// needs names the baselines each figure is compared with; they run too.
var needs = map[string][]string{
	"agent":      {"pebble", "http"},
	"latency":    {"pebble", "http"},
	"aggregator": {"pebble"},
}

// plan holds the durations and sizes of one run.
type plan struct {
	quick        bool
	pebbleDur    time.Duration // each raw Pebble throughput phase
	pebbleLatDur time.Duration
	warmup       time.Duration // closed-loop warm-up, not counted
	closedDur    time.Duration // each closed-loop throughput phase
	workers      int           // closed-loop connections
	latRate      float64       // open-loop single-event requests/s
	latDur       time.Duration
	aggDur       time.Duration // aggregator sending phase, at most
	aggBatches   int           // pre-encoded batches for the aggregator, at most
	aggSenders   int           // concurrent batch senders
	rssRate      float64       // requests/s of 50 events in the RSS figure
	rssLoadDur   time.Duration
	rssOutageDur time.Duration
}

func newPlan(quick bool) *plan {
	p := &plan{
		pebbleDur: 4 * time.Second, pebbleLatDur: 2 * time.Second,
		warmup: time.Second, closedDur: 8 * time.Second, workers: 64,
		latRate: 2000, latDur: 5 * time.Second,
		aggDur: 10 * time.Second, aggBatches: 2000, aggSenders: 8,
		rssRate: 200, rssLoadDur: 20 * time.Second, rssOutageDur: 10 * time.Second,
	}
	if quick {
		p.quick = true
		p.pebbleDur, p.pebbleLatDur = time.Second, 300*time.Millisecond
		p.warmup, p.closedDur = 300*time.Millisecond, 1500*time.Millisecond
		p.latDur = 1500 * time.Millisecond
		p.aggDur, p.aggBatches = 3*time.Second, 200
		p.rssLoadDur, p.rssOutageDur = 4*time.Second, 3*time.Second
	}
	return p
}

// exitCode is set by main's body; the exit happens after deferred calls
// (the CPU profile) have run.
var exitCode int

func main() {
	defer func() { os.Exit(exitCode) }()
	mainBody()
}

func mainBody() {
	quick := flag.Bool("quick", false, "short durations, for a smoke run")
	only := flag.String("only", "", "comma-separated `names` to measure (with the baselines they need): "+strings.Join(figureNames, ", "))
	keep := flag.Bool("keep", false, "keep the temporary directory (data, logs) for inspection")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of this process (load generator and in-process servers) to `file`")
	flag.Parse()
	selected, err := selectFigures(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sightline-bench:", err)
		exitCode = 2
		return
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "sightline-bench: -cpuprofile:", err)
			exitCode = 2
			return
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, newPlan(*quick), selected, *keep, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sightline-bench:", err)
		exitCode = 1
	}
}

// selectFigures turns -only into the set to run, adding needed baselines.
func selectFigures(only string) (map[string]bool, error) {
	sel := map[string]bool{}
	if strings.TrimSpace(only) == "" {
		for _, n := range figureNames {
			sel[n] = true
		}
		return sel, nil
	}
	for _, n := range strings.Split(only, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(figureNames, n) {
			return nil, fmt.Errorf("-only: unknown name %q; known: %s", n, strings.Join(figureNames, ", "))
		}
		sel[n] = true
		for _, d := range needs[n] {
			sel[d] = true
		}
	}
	if len(sel) == 0 {
		return nil, errors.New("-only: no names given")
	}
	return sel, nil
}

var (
	startTime = time.Now()
	progMu    sync.Mutex
)

// progress prints a line on stderr with the time since start.
func progress(format string, args ...any) {
	progMu.Lock()
	defer progMu.Unlock()
	fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(startTime).Seconds(), fmt.Sprintf(format, args...))
}

func run(ctx context.Context, p *plan, sel map[string]bool, keep bool, out io.Writer) error {
	dir, err := os.MkdirTemp("", "sightline-bench-")
	if err != nil {
		return err
	}
	if keep {
		progress("keeping %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	rep := &report{}
	mode := "full"
	if p.quick {
		mode = "quick (-quick: short durations, figures are rough)"
	}
	rep.header = append(rep.header,
		fmt.Sprintf("sightline-bench  %s  GOMAXPROCS=%d  NumCPU=%d  %s/%s", runtime.Version(), runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
		"cpu: "+cpuModel(),
		"temp dir: "+dir+" (fsync figures depend on its device)",
		"mode: "+mode,
		"load average at start: "+loadAvg()+" (other work on this machine lowers every figure, baselines included)",
	)
	fmt.Fprintln(out, strings.Join(rep.header, "\n"))
	fmt.Fprintln(out)

	var b baselines
	runStart := readCPU()
	// step runs one measurement under a pprof label, so a -cpuprofile can be
	// split by figure (go tool pprof -tagfocus figure=agent).
	step := func(name string, fn func(ctx context.Context) error) {
		if !sel[name] || ctx.Err() != nil {
			return
		}
		t, c := time.Now(), readCPU()
		progress("== %s", name)
		var err error
		pprof.Do(ctx, pprof.Labels("figure", name), func(ctx context.Context) { err = fn(ctx) })
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("interrupted: %w", err)
			}
			progress("!! %s failed: %v", name, err)
			rep.failed = append(rep.failed, fmt.Sprintf("%s: %v", name, err))
			return
		}
		share := machineShare(c, readCPU())
		progress("== %s done in %.1fs (%s)", name, time.Since(t).Seconds(), share)
		rep.shares = append(rep.shares, name+": "+share)
	}
	step("pebble", func(ctx context.Context) error { return benchPebble(ctx, p, dir, &b) })
	step("http", func(ctx context.Context) error { return benchHTTP(ctx, p, &b) })
	var wb *wireBytes
	step("wire", func(context.Context) (err error) { wb, err = benchWireBytes(); return err })
	var ag *agentFigures
	step("agent", func(ctx context.Context) (err error) { ag, err = benchAgent(ctx, p, dir); return err })
	var lat *latencyFigure
	step("latency", func(ctx context.Context) (err error) { lat, err = benchLatency(ctx, p, dir); return err })
	var agg *aggFigure
	step("aggregator", func(ctx context.Context) (err error) { agg, err = benchAggregator(ctx, p, dir); return err })
	var rss *rssFigure
	step("rss", func(ctx context.Context) (err error) { rss, err = benchRSS(ctx, p, dir); return err })

	rep.note("CPU shares of the whole machine during the run (bench = this program and its child processes, others = everything else, steal = taken by the hypervisor): %s; load average at the end: %s. Per figure: %s",
		machineShare(runStart, readCPU()), loadAvg(), strings.Join(rep.shares, "; "))
	rep.build(p, &b, wb, ag, lat, agg, rss)
	fmt.Fprintln(out)
	rep.print(out)
	if len(rep.failed) > 0 {
		return fmt.Errorf("%d measurement(s) failed", len(rep.failed))
	}
	return ctx.Err()
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuModel reads the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
