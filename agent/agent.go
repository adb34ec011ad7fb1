package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sightline/sightline/agent/queue"
	"github.com/sightline/sightline/wire"
)

// ErrAgentIDChanged means the configured agent_id differs from the one the
// data directory was created with.
var ErrAgentIDChanged = errors.New("agent: agent_id differs from the one stored in data_dir")

// Sender delivers one batch to the aggregator cluster and returns its ack.
// Implementations follow leader hints themselves; the agent retries on any
// error or on AckUnavailable / AckNotLeader.
type Sender interface {
	SendBatch(ctx context.Context, b *wire.Batch) (*wire.Ack, error)
}

// ConfigSource long-polls the aggregator cluster for the agent config.
type ConfigSource interface {
	FetchConfig(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error)
}

// metaAgentID is the queue meta key holding the agent id.
const metaAgentID = "agent.id"

// shutdownTimeout bounds how long Run waits for HTTP requests in flight.
const shutdownTimeout = 10 * time.Second

// Agent is the edge agent: HTTP ingestion into the durable queue and the
// forwarder that drains it to the aggregators.
type Agent struct {
	cfg      Config
	log      *slog.Logger
	sender   Sender
	source   ConfigSource
	q        *queue.Queue
	id       string
	m        *metrics
	gatherer prometheus.Gatherer
	handler  http.Handler
	now      func() time.Time // tests move the clock
	link     linkState

	sites     atomic.Pointer[siteSet]
	addr      atomic.Pointer[string]
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// New opens the queue in cfg.DataDir and builds the agent. reg receives the
// agent's metrics; /metrics serves reg when it is also a
// prometheus.Gatherer (a *prometheus.Registry is both) and answers 501
// otherwise. A nil reg means a private registry. A nil logger means
// slog.Default().
func New(cfg Config, sender Sender, source ConfigSource, reg prometheus.Registerer, logger *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: invalid config:\n%w", err)
	}
	if sender == nil || source == nil {
		return nil, errors.New("agent: New needs a Sender and a ConfigSource")
	}
	if logger == nil {
		logger = slog.Default()
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	q, err := queue.Open(queue.Options{Dir: filepath.Join(cfg.DataDir, "queue"), Budget: cfg.DiskBudget, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: logger, sender: sender, source: source, q: q, now: time.Now}
	a.gatherer, _ = reg.(prometheus.Gatherer)
	if err := a.init(reg); err != nil {
		_ = q.Close()
		return nil, err
	}
	a.handler = a.routes()
	return a, nil
}

func (a *Agent) init(reg prometheus.Registerer) error {
	id, err := a.resolveID()
	if err != nil {
		return err
	}
	a.id = id
	if err := a.loadConfig(); err != nil {
		return fmt.Errorf("agent: loading stored site config: %w", err)
	}
	if a.m, err = newMetrics(reg, a.q); err != nil {
		return fmt.Errorf("agent: registering metrics: %w", err)
	}
	return nil
}

// resolveID returns the agent id: the one stored in the queue, else the
// configured one, else a new random one; the result is stored. An id must
// never change under queued batches, since the aggregator dedupes by
// (agent, seq): a renamed agent would have its batches applied again.
func (a *Agent) resolveID() (string, error) {
	stored, err := a.q.Meta(metaAgentID)
	if err != nil {
		return "", fmt.Errorf("agent: reading agent id: %w", err)
	}
	if stored != nil {
		name, _, _ := strings.Cut(string(stored), "~")
		if a.cfg.AgentID != "" && name != a.cfg.AgentID {
			return "", fmt.Errorf("%w: agent_id: %q, but data_dir %s belongs to %q; remove agent_id or use a new data_dir",
				ErrAgentIDChanged, a.cfg.AgentID, a.cfg.DataDir, name)
		}
		return string(stored), nil
	}
	// A new queue starts its sequences at 1 again. The aggregator dedupes by
	// (agent id, seq) and forgets sequences below the agent's low-water
	// mark, so a configured name alone would make a new queue's batches look
	// like old ones (a pod that kept agent_id but lost its volume): every
	// queue gets an incarnation of its own.
	var b [8]byte
	_, _ = rand.Read(b[:])
	name := a.cfg.AgentID
	if name == "" {
		name = "agent"
	}
	id := name + "~" + hex.EncodeToString(b[:])
	if err := a.q.SetMeta(metaAgentID, []byte(id)); err != nil {
		return "", fmt.Errorf("agent: storing agent id: %w", err)
	}
	return id, nil
}

// ID returns the agent id.
func (a *Agent) ID() string { return a.id }

// Handler returns the agent's HTTP API.
func (a *Agent) Handler() http.Handler { return a.handler }

// Addr returns the HTTP listen address once Run listens, else "".
func (a *Agent) Addr() string {
	if p := a.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// Run listens on cfg.HTTP and runs until ctx ends; see Serve.
func (a *Agent) Run(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.HTTP)
	if err != nil {
		_ = a.Close()
		return fmt.Errorf("agent: http: %w", err)
	}
	return a.Serve(ctx, ln)
}

// Serve serves HTTP on ln and runs the sealer, the send workers and the
// config poller until ctx ends or the server fails. It then shuts down in
// order: stop taking HTTP traffic (bounded wait for requests in flight),
// stop the forwarder (sends in flight are abandoned; their batches stay
// pending and are resent), close the queue.
func (a *Agent) Serve(ctx context.Context, ln net.Listener) error {
	addr := ln.Addr().String()
	a.addr.Store(&addr)
	a.log.Info("agent: started", "addr", addr, "data_dir", a.cfg.DataDir, "agent_id", a.id,
		"queued_events", a.q.Events(), "pending_batches", a.q.PendingCount())

	srv := &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	bg, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	f := newForwarder(a.q)
	wg.Go(func() { a.sealLoop(bg, f) })
	for range a.cfg.MaxInFlight {
		wg.Go(func() { a.sendLoop(bg, f) })
	}
	wg.Go(func() { a.pollConfig(bg) })

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-served:
		runErr = fmt.Errorf("agent: http: %w", err)
		served <- nil
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	if err := srv.Shutdown(sctx); err != nil {
		a.log.Warn("agent: http shutdown incomplete, closing connections", "error", err)
		_ = srv.Close()
	}
	cancel()
	<-served
	stop()
	wg.Wait()
	if err := a.Close(); err != nil && runErr == nil {
		runErr = err
	}
	a.log.Info("agent: stopped", "queued_events", a.q.Events())
	return runErr
}

// Close closes the queue and unregisters the agent's metrics, so that a new
// agent may use the same registry. Run does it on the way out; Close is for
// agents used through Handler alone. It is safe to call more than once.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.closed.Store(true)
		a.closeErr = a.q.Close()
		a.m.unregister()
	})
	return a.closeErr
}
