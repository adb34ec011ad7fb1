package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type rssFigure struct {
	idleKB, steadyKB, maxKB, outageEndKB, outageMaxKB int64
	achievedEPS                                       float64 // events/s the agent accepted in the load phase
	notes                                             []string
}

// child is a sightline process started by the bench, its output in a file.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startChild(bin, logPath, name string, args ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(c.done) }()
	return c, nil
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop asks for a graceful shutdown, and kills after 15s.
func (c *child) stop() {
	if c.exited() {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tail returns the end of the child's log, for error messages.
func (c *child) tail() string {
	b, _ := os.ReadFile(c.log)
	if len(b) > 1500 {
		b = b[len(b)-1500:]
	}
	return strings.TrimSpace(string(b))
}

func freeAddr(network string) (string, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// vmRSS returns a process's resident set size in KiB.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no VmRSS line")
}

// waitUntil polls cond every 50ms until it holds, ctx ends or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		if !sleepCtx(ctx, 50*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}

// buildBinary builds ./cmd/sightline of the module this bench runs in.
func buildBinary(ctx context.Context, out string) error {
	gomod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(gomod))
	if mod == "" || mod == os.DevNull {
		return errors.New("not inside the sightline module: run the bench from the repository (make bench)")
	}
	root := filepath.Dir(mod)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/sightline")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/sightline: %w\n%s", err, b)
	}
	return nil
}

// benchRSS is figure 6: the real binary as separate processes (CA, one
// bootstrapped aggregator, one agent), 10,000 events/s into the agent,
// VmRSS sampled every 250ms; then the aggregator is stopped and the same
// load continues, so the backlog builds up on the agent's disk.
func benchRSS(ctx context.Context, p *plan, dir string) (f *rssFigure, err error) {
	root := filepath.Join(dir, "rss")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "sightline")
	progress("rss: go build -o %s ./cmd/sightline", bin)
	if err := buildBinary(ctx, bin); err != nil {
		return nil, err
	}
	tlsDir := filepath.Join(root, "tls")
	if b, err := exec.CommandContext(ctx, bin, "ca", "init", "--dir", tlsDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sightline ca init: %w\n%s", err, b)
	}
	var addrs [4]string
	for i, nw := range []string{"tcp", "udp", "tcp", "tcp"} {
		if addrs[i], err = freeAddr(nw); err != nil {
			return nil, err
		}
	}
	aggHTTP, aggWire, aggRaft, agentHTTP := addrs[0], addrs[1], addrs[2], addrs[3]
	aggData := filepath.Join(root, "n1")
	agg, err := startChild(bin, filepath.Join(root, "aggregator.log"), "aggregator", "aggregator", "--node-id", "n1",
		"--data-dir", aggData, "--http", aggHTTP, "--wire", aggWire, "--raft", aggRaft, "--bootstrap", "--tls-dir", tlsDir)
	if err != nil {
		return nil, err
	}
	defer agg.stop()
	fail := func(c *child, err error) (*rssFigure, error) {
		if c != nil && c.tail() != "" {
			err = fmt.Errorf("%w\n--- end of %s log:\n%s", err, c.name, c.tail())
		}
		return nil, err
	}
	var token string
	if err := waitUntil(ctx, 30*time.Second, "the aggregator's admin token", func() bool {
		b, err := os.ReadFile(filepath.Join(aggData, "admin.token"))
		token = strings.TrimSpace(string(b))
		return err == nil && token != "" || agg.exited()
	}); err != nil || agg.exited() {
		return fail(agg, fmt.Errorf("aggregator did not come up: %v", err))
	}
	api := func(method, path, body string) (int, []byte) {
		req, _ := http.NewRequestWithContext(ctx, method, "http://"+aggHTTP+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	if err := waitUntil(ctx, 30*time.Second, "the site to be created", func() bool {
		code, _ := api("PUT", "/api/v1/sites/"+benchSite, fmt.Sprintf(`{"origins":[%q]}`, benchOrigin))
		return code/100 == 2
	}); err != nil {
		return fail(agg, err)
	}
	committed := func() int64 {
		code, body := api("GET", "/api/v1/stats?site="+benchSite, "")
		var st struct{ Events int64 }
		if code != http.StatusOK || json.Unmarshal(body, &st) != nil {
			return -1
		}
		return st.Events
	}

	ag, err := startChild(bin, filepath.Join(root, "agent.log"), "agent", "agent", "--data-dir", filepath.Join(root, "agent"),
		"--http", agentHTTP, "--aggregators", aggWire, "--tls-dir", tlsDir)
	if err != nil {
		return nil, err
	}
	defer ag.stop()
	if err := waitUntil(ctx, 30*time.Second, "the agent to be ready", func() bool { return ready(agentHTTP) || ag.exited() }); err != nil || ag.exited() {
		return fail(ag, fmt.Errorf("agent did not become ready: %v", err))
	}
	pid := ag.cmd.Process.Pid
	f = &rssFigure{}
	if !sleepCtx(ctx, 500*time.Millisecond) {
		return nil, ctx.Err()
	}
	if f.idleKB, err = vmRSS(pid); err != nil {
		return fail(ag, err)
	}

	// phase drives the agent for d while sampling its RSS.
	phase := func(d time.Duration) ([]int64, *openResult, error) {
		var res *openResult
		var wg sync.WaitGroup
		wg.Add(1)
		// Requests still queued in the generator a second after the phase
		// are skipped, so a slow agent shows as a lower achieved rate
		// rather than as a longer phase.
		lctx, cancel := context.WithTimeout(ctx, d+time.Second)
		defer cancel()
		go func() {
			defer wg.Done()
			res = runOpen(lctx, agentHTTP, p.rssRate, d, p.workers, newCollectLoad(agentHTTP, 50))
		}()
		var samples []int64
		var serr error
		tick := time.NewTicker(250 * time.Millisecond)
		end := time.Now().Add(d)
		for time.Now().Before(end) && ctx.Err() == nil {
			<-tick.C
			kb, err := vmRSS(pid)
			if err != nil {
				serr = fmt.Errorf("agent gone? %w", err)
				break
			}
			samples = append(samples, kb)
		}
		tick.Stop()
		wg.Wait()
		return samples, res, serr
	}

	progress("rss: %s req/s × 50 events into the agent process for %v, sampling VmRSS every 250ms", rate(p.rssRate), p.rssLoadDur)
	samples, res, err := phase(p.rssLoadDur)
	if err != nil {
		return fail(ag, err)
	}
	if len(samples) < 2 || res.ok() == 0 {
		return fail(ag, fmt.Errorf("no load reached the agent: %s", res.failures()))
	}
	half := slices.Clone(samples[len(samples)/2:])
	slices.Sort(half)
	f.steadyKB = half[len(half)/2]
	f.maxKB = slices.Max(samples)
	acceptedEvents := int64(res.ok()) * 50
	// Everything accepted should reach the aggregator within moments.
	_ = waitUntil(ctx, 10*time.Second, "committed events", func() bool { return committed() >= acceptedEvents })
	got := committed()
	f.achievedEPS = float64(acceptedEvents) / p.rssLoadDur.Seconds()
	f.notes = append(f.notes, fmt.Sprintf("rss: real binary, agent and aggregator as separate processes on loopback; %s events/s offered as %s req/s × 50 events for %v over up to %d connections: "+
		"%s events/s accepted (%s requests never sent because the agent fell behind), %s of %s events committed on the aggregator 10s after the phase; "+
		"request latency from schedule p50 %s, p99 %s (from send p99 %s); steady = median of the last half of %d samples",
		rate(p.rssRate*50), rate(p.rssRate), p.rssLoadDur, p.workers, rate(f.achievedEPS), commas(int64(res.skipped)), commas(got), commas(acceptedEvents),
		ms(percentile(res.intended, 0.5)), ms(percentile(res.intended, 0.99)), ms(percentile(res.service, 0.99)), len(samples)))
	if fl := res.failures(); fl != "" {
		f.notes = append(f.notes, "rss load: not accepted: "+fl)
	}

	progress("rss: aggregator stopped; same load for %v (backlog goes to the agent's disk)", p.rssOutageDur)
	agg.stop()
	samples, res, err = phase(p.rssOutageDur)
	if err != nil {
		return fail(ag, err)
	}
	if len(samples) == 0 {
		return nil, ctx.Err()
	}
	f.outageEndKB = samples[len(samples)-1]
	f.outageMaxKB = slices.Max(samples)
	backlog := agentGauge(agentHTTP, "sightline_agent_queue_events")
	f.notes = append(f.notes, fmt.Sprintf("rss outage: %s of %s requests accepted while the aggregator was down (%s never sent); %s events queued on the agent's disk at the end; RSS max during the outage %.1f MiB",
		commas(int64(res.ok())), commas(int64(res.sent)), commas(int64(res.skipped)), backlog, float64(f.outageMaxKB)/1024))
	if fl := res.failures(); fl != "" {
		f.notes = append(f.notes, "rss outage load: not accepted: "+fl)
	}
	return f, ctx.Err()
}

// agentGauge reads one unlabelled series from the agent's /metrics.
func agentGauge(addr, name string) string {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/metrics")
	if err != nil {
		return "?"
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range bytes.Lines(b) {
		if v, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte(name+" ")); ok {
			if n, err := strconv.ParseFloat(string(v), 64); err == nil {
				return commas(int64(n))
			}
		}
	}
	return "?"
}
