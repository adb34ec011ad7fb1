package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sightline/sightline/agent"
	"github.com/sightline/sightline/wire"
)

// ackSender stands in for the aggregator cluster: it acks every batch at
// once, so the agent figures measure the agent's own path (HTTP, validation,
// durable group-committed append, sealing) and nothing behind it.
type ackSender struct {
	batches, events atomic.Int64
}

func (s *ackSender) SendBatch(_ context.Context, b *wire.Batch) (*wire.Ack, error) {
	s.batches.Add(1)
	s.events.Add(int64(b.Count))
	return &wire.Ack{Seq: b.Seq, Status: wire.AckOK}, nil
}

// oneSite is a ConfigSource serving the bench site; an agent that already
// has it is kept waiting, as the aggregator's long poll does.
type oneSite struct{}

func (oneSite) FetchConfig(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
	cfg := &wire.Config{Version: 1, Sites: []wire.Site{{ID: benchSite, Origins: []string{benchOrigin}}}}
	if req.Version == cfg.Version {
		if !sleepCtx(ctx, time.Duration(req.WaitMillis)*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	return cfg, nil
}

// inprocAgent is an agent running in this process on 127.0.0.1:0.
type inprocAgent struct {
	addr   string
	sender *ackSender
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	log    *os.File
}

func startInprocAgent(ctx context.Context, dir string) (*inprocAgent, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		return nil, err
	}
	cfg := agent.DefaultConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.HTTP = "127.0.0.1:0"
	cfg.Aggregators = []string{"127.0.0.1:9"} // unused: the Sender is in-process
	cfg.TLSDir = dir                          // unused for the same reason
	ia := &inprocAgent{sender: &ackSender{}, reg: prometheus.NewRegistry(), done: make(chan error, 1), log: logf}
	logger := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a, err := agent.New(cfg, ia.sender, oneSite{}, ia.reg, logger)
	if err != nil {
		logf.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	ia.cancel = cancel
	go func() { ia.done <- a.Run(runCtx) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if ia.addr = a.Addr(); ia.addr != "" && ready(ia.addr) {
			return ia, nil
		}
		select {
		case err := <-ia.done:
			logf.Close()
			return nil, fmt.Errorf("agent stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) || !sleepCtx(ctx, 20*time.Millisecond) {
			ia.stop()
			return nil, errors.New("agent not ready after 15s")
		}
	}
}

// ready reports whether GET /readyz on addr answers 200.
func ready(addr string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (ia *inprocAgent) stop() error {
	ia.cancel()
	err := <-ia.done
	ia.log.Close()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// metric returns the sum of the agent's series called name.
func (ia *inprocAgent) metric(name string) float64 {
	mfs, err := ia.reg.Gather()
	if err != nil {
		return 0
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				v += m.Counter.GetValue()
			case m.Gauge != nil:
				v += m.Gauge.GetValue()
			}
		}
	}
	return v
}

// drained waits up to timeout for the fake aggregator to have acked every
// accepted event and reports whether it had.
func (ia *inprocAgent) drained(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		if ia.sender.events.Load() >= int64(ia.metric("sightline_agent_events_accepted_total")) {
			return true
		}
		if time.Now().After(deadline) || !sleepCtx(ctx, 20*time.Millisecond) {
			return false
		}
	}
}

type agentFigures struct {
	singleRPS, batchEPS, batchRPS float64
	notes                         []string
}

// benchAgent is figure 2: closed-loop single-event and 50-event requests
// against a fresh in-process agent each.
func benchAgent(ctx context.Context, p *plan, dir string) (*agentFigures, error) {
	f := &agentFigures{}
	f.notes = append(f.notes, "agent figures: in-process agent, its Sender acks every batch at once and its ConfigSource serves one site, "+
		"so they measure the agent's own path (HTTP, JSON validation, durable group-committed Pebble append, sealing); "+
		fmt.Sprintf("load: %d keep-alive connections, closed loop, raw HTTP/1.1 generator in the same process (it shares the CPUs)", p.workers))
	for _, ph := range []struct {
		name   string
		perReq int
	}{{"single", 1}, {"batch50", 50}} {
		var note string
		var r *closedResult
		var err error
		pprof.Do(ctx, pprof.Labels("phase", ph.name), func(ctx context.Context) {
			r, note, err = agentPhase(ctx, p, filepath.Join(dir, "agent-"+ph.name), ph.perReq)
		})
		if err != nil {
			return nil, fmt.Errorf("agent (%s): %w", ph.name, err)
		}
		f.notes = append(f.notes, note)
		if fl := r.failures(); fl != "" {
			f.notes = append(f.notes, fmt.Sprintf("agent %d-event requests: not accepted: %s (only 202s are counted)", ph.perReq, fl))
		}
		switch ph.perReq {
		case 1:
			f.singleRPS = r.perSecond()
		default:
			f.batchRPS = r.perSecond()
			f.batchEPS = f.batchRPS * float64(ph.perReq)
		}
	}
	return f, ctx.Err()
}

// agentPhase runs one closed-loop phase against a fresh in-process agent.
func agentPhase(ctx context.Context, p *plan, dir string, perReq int) (*closedResult, string, error) {
	ia, err := startInprocAgent(ctx, dir)
	if err != nil {
		return nil, "", err
	}
	progress("agent: %d-event requests, %d connections, %v (+%v warm-up)", perReq, p.workers, p.closedDur, p.warmup)
	r := runClosed(ctx, ia.addr, p.workers, p.warmup, p.closedDur, newCollectLoad(ia.addr, perReq))
	drained := ia.drained(ctx, 5*time.Second)
	fsyncs := ia.metric("sightline_agent_fsyncs_total")
	accepted := ia.metric("sightline_agent_events_accepted_total")
	sealed := ia.metric("sightline_agent_batches_sealed_total")
	reqs := accepted / float64(perReq)
	if err := ia.stop(); err != nil {
		return nil, "", err
	}
	if r.ok() == 0 {
		why := r.failures()
		if why == "" {
			why = fmt.Sprintf("no answer at all within the %v window (agent stalled, or the machine did)", p.closedDur)
		}
		return nil, "", fmt.Errorf("no request accepted: %s", why)
	}
	note := fmt.Sprintf("agent %d-event requests: %.1f requests per queue fsync (group commit), %.0f events per sealed batch",
		perReq, reqs/max(fsyncs, 1), accepted/max(sealed, 1))
	if !drained {
		note += "; the forwarder had NOT acked every accepted event 5s after the load stopped"
	}
	return r, note, nil
}

type latencyFigure struct {
	p50, p99 time.Duration
	notes    []string
}

// benchLatency is figure 3: single-event requests at a fixed open-loop rate
// against a fresh in-process agent, latency from the client's view.
func benchLatency(ctx context.Context, p *plan, dir string) (*latencyFigure, error) {
	ia, err := startInprocAgent(ctx, filepath.Join(dir, "agent-latency"))
	if err != nil {
		return nil, err
	}
	progress("latency: warm-up %v at %s req/s", p.warmup, rate(p.latRate))
	runOpen(ctx, ia.addr, p.latRate, p.warmup, p.workers, newCollectLoad(ia.addr, 1))
	progress("latency: open loop at %s single-event req/s for %v", rate(p.latRate), p.latDur)
	o := runOpen(ctx, ia.addr, p.latRate, p.latDur, p.workers, newCollectLoad(ia.addr, 1))
	if err := ia.stop(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if len(o.intended) == 0 {
		return nil, fmt.Errorf("no request answered: %s", o.failures())
	}
	f := &latencyFigure{p50: percentile(o.intended, 0.50), p99: percentile(o.intended, 0.99)}
	f.notes = append(f.notes, fmt.Sprintf("latency: %s requests over %v, measured from each request's scheduled send time to its 202 (open loop, so stalls are not hidden); "+
		"from the actual send: p50 %s, p99 %s, p99.9 %s, max %s; worst send lag behind schedule %s",
		commas(int64(len(o.intended))), p.latDur, ms(percentile(o.service, 0.5)), ms(percentile(o.service, 0.99)),
		ms(percentile(o.service, 0.999)), ms(o.service[len(o.service)-1]), ms(o.maxBehind)))
	if fl := o.failures(); fl != "" {
		f.notes = append(f.notes, "latency: not accepted: "+fl)
	}
	return f, ctx.Err()
}
