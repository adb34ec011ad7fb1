package aggregator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sightline/sightline/cluster"
	"github.com/sightline/sightline/wire"
)

// Node is one aggregator: the Raft member with its state, the wire server
// agents send to, and the admin HTTP API.
type Node struct {
	cfg     Config
	logger  *slog.Logger
	store   *Store
	fsm     *FSM
	raft    *cluster.Node
	wire    *wire.Server
	httpLn  net.Listener
	http    *http.Server
	reg     *prometheus.Registry
	metrics *metrics
	fatal   chan error
}

// New opens the state, starts Raft and binds the wire and HTTP listeners.
// Nothing is served until Run.
func New(cfg Config, logger *slog.Logger) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	baseLogger := logger
	logger = logger.With("node", cfg.NodeID)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	serverTLS, err := wire.ServerTLS(cfg.TLSDir)
	if err != nil {
		return nil, fmt.Errorf("tls_dir: %w", err)
	}
	n := &Node{cfg: cfg, logger: logger, reg: prometheus.NewRegistry(), fatal: make(chan error, 1)}
	n.metrics = newMetrics(n.reg)
	if n.store, err = OpenStore(filepath.Join(cfg.DataDir, "state"), logger); err != nil {
		return nil, err
	}
	n.fsm = NewFSM(n.store, cfg.DataDir, logger, n.onFatal)

	rc := cluster.DefaultConfig()
	rc.NodeID = cfg.NodeID
	rc.RaftAddr = cfg.Raft
	rc.DataDir = cfg.DataDir
	rc.Bootstrap = cfg.Bootstrap
	rc.Logger = baseLogger // cluster adds the node attribute itself
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	if n.raft, err = cluster.Start(rc, n.fsm); err != nil {
		n.store.Close()
		return nil, err
	}
	if n.wire, err = wire.NewServer(cfg.Wire, serverTLS, n, logger); err != nil {
		n.closeCore()
		return nil, fmt.Errorf("wire: %w", err)
	}
	if n.httpLn, err = net.Listen("tcp", cfg.HTTP); err != nil {
		n.wire.Close()
		n.closeCore()
		return nil, fmt.Errorf("http: %w", err)
	}
	n.http = &http.Server{Handler: n.routes(), ReadHeaderTimeout: 10 * time.Second}
	return n, nil
}

func (n *Node) onFatal(err error) {
	select {
	case n.fatal <- err:
	default:
	}
}

// HTTPAddr is the bound admin API address.
func (n *Node) HTTPAddr() string { return n.httpLn.Addr().String() }

// WireAddr is the bound QUIC address.
func (n *Node) WireAddr() string { return n.wire.Addr().String() }

// Store gives read access to the node's state.
func (n *Node) Store() *Store { return n.store }

// Run serves until ctx is done or the state machine fails, then shuts down
// in order: stop taking traffic (HTTP, wire), then Raft, then the state.
func (n *Node) Run(ctx context.Context) error {
	n.logger.Info("aggregator starting", "http", n.HTTPAddr(), "wire", n.WireAddr(), "raft", n.cfg.Raft, "data_dir", n.cfg.DataDir)
	errc := make(chan error, 2)
	go func() {
		if err := n.http.Serve(n.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("http: %w", err)
		}
	}()
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	go func() {
		if err := n.wire.Serve(serveCtx); err != nil && serveCtx.Err() == nil {
			errc <- fmt.Errorf("wire: %w", err)
		}
	}()
	if n.cfg.Join != "" {
		go n.joinLoop(ctx)
	}
	if n.cfg.Bootstrap {
		go func() {
			if err := n.ensureAdminToken(ctx); err != nil && ctx.Err() == nil {
				n.logger.Error("creating the first admin token", "error", err)
			}
		}()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-n.fatal:
	case runErr = <-errc:
	}
	n.logger.Info("aggregator stopping")
	if runErr != nil {
		// The state machine failed or a listener died: leave the cluster
		// before anything else, so no further entry is acknowledged here.
		if err := n.raft.Shutdown(); err != nil {
			n.logger.Warn("raft shutdown", "error", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer cancel()
	_ = n.http.Shutdown(sctx)
	stopServe()
	_ = n.wire.Close()
	n.closeCore()
	n.logger.Info("aggregator stopped")
	return runErr
}

func (n *Node) closeCore() {
	if err := n.raft.Shutdown(); err != nil {
		n.logger.Warn("raft shutdown", "error", err)
	}
	if err := n.store.Close(); err != nil {
		n.logger.Warn("closing state", "error", err)
	}
}

// joinLoop asks a member to add this node as a voter until one agrees. A
// restarted member asks again, which the leader treats as a no-op.
func (n *Node) joinLoop(ctx context.Context) {
	body, _ := json.Marshal(map[string]string{"id": n.cfg.NodeID, "raft_addr": n.cfg.Raft})
	for attempt := 1; ; attempt++ {
		err := n.askJoin(ctx, body)
		if err == nil {
			n.logger.Info("joined the cluster", "through", n.cfg.Join)
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			n.logger.Warn("joining the cluster; will retry", "through", n.cfg.Join, "attempt", attempt, "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (n *Node) askJoin(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.cfg.Join+"/api/v1/cluster/join", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+n.cfg.JoinToken)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// AdminTokenFile is where a bootstrapping node leaves the first admin token.
const AdminTokenFile = "admin.token"

// ensureAdminToken makes sure the cluster has an admin token once this
// bootstrapping node leads. The secret is written to disk before it is
// proposed, so a crash in between leaves a file that is proposed again on
// the next start rather than a token nobody knows.
func (n *Node) ensureAdminToken(ctx context.Context) error {
	if err := n.raft.WaitForLeader(ctx); err != nil {
		return err
	}
	path := filepath.Join(n.cfg.DataDir, AdminTokenFile)
	secret, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		count, err := n.store.TokenCount()
		if err != nil || count > 0 {
			return err
		}
		secret = []byte(NewTokenSecret())
		if err := writeFileSync(path, secret, 0o600); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	hash := HashToken(strings.TrimSpace(string(secret)))
	if _, err := n.store.TokenByHash(hash); err == nil {
		return nil
	}
	for {
		if !n.raft.IsLeader() {
			return nil // only the leader proposes; a bootstrapping node normally is
		}
		cmd, err := EncodeCommand(CmdCreateToken, &Token{Hash: hash, Name: "bootstrap", Role: RoleAdmin, Created: time.Now().UnixMilli()})
		if err != nil {
			return err
		}
		if _, err = n.raft.Apply(ctx, cmd); err == nil {
			n.logger.Info("first admin token written", "file", path)
			return nil
		}
		n.logger.Warn("proposing the first admin token", "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// NewTokenSecret returns a new random API token.
func NewTokenSecret() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "sl_" + hex.EncodeToString(b[:])
}

// HashToken is how tokens are stored and looked up.
func HashToken(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

func writeFileSync(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	syncDir(filepath.Dir(path))
	return nil
}

// HandleBatch implements wire.Handler: the ack goes out only after the
// batch is committed by Raft and applied.
func (n *Node) HandleBatch(ctx context.Context, b *wire.Batch) *wire.Ack {
	ack := &wire.Ack{Seq: b.Seq}
	if !n.raft.IsLeader() {
		ack.Status = wire.AckNotLeader
		ack.Message = "this node is not the leader"
		return ack
	}
	cmd, err := EncodeCommand(CmdIngest, &IngestCmd{
		AgentID: b.AgentID, Seq: b.Seq, Low: b.Low, Count: b.Count, Codec: b.Codec, Payload: b.Payload,
	})
	if err != nil {
		ack.Status, ack.Message = wire.AckRejected, err.Error()
		return ack
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	start := time.Now()
	res, err := n.raft.Apply(ctx, cmd)
	switch {
	case errors.Is(err, cluster.ErrNotLeader):
		ack.Status, ack.Message = wire.AckNotLeader, err.Error()
		return ack
	case err != nil:
		n.metrics.batches.WithLabelValues("unavailable").Inc()
		ack.Status, ack.Message = wire.AckUnavailable, err.Error()
		return ack
	}
	n.metrics.commit.Observe(time.Since(start).Seconds())
	r, _ := res.(IngestResult)
	switch {
	case r.Rejected != "":
		n.metrics.batches.WithLabelValues("rejected").Inc()
		n.logger.Warn("batch rejected", "agent", b.AgentID, "seq", b.Seq, "reason", r.Rejected)
		ack.Status, ack.Message = wire.AckRejected, r.Rejected
	case r.Duplicate:
		n.metrics.batches.WithLabelValues("duplicate").Inc()
	default:
		n.metrics.batches.WithLabelValues("applied").Inc()
		n.metrics.events.WithLabelValues("applied").Add(float64(r.Applied))
		n.metrics.events.WithLabelValues("duplicate").Add(float64(r.DupEvents))
		n.metrics.events.WithLabelValues("invalid").Add(float64(r.Invalid))
	}
	return ack
}

// HandleConfig implements wire.Handler as a long poll on the config version.
func (n *Node) HandleConfig(ctx context.Context, req *wire.ConfigRequest) (*wire.Config, error) {
	cfg, changed := n.store.AgentConfig()
	if cfg.Version != req.Version || req.WaitMillis == 0 {
		return cfg, nil
	}
	wait := min(time.Duration(req.WaitMillis)*time.Millisecond, n.cfg.ConfigWaitMax)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-changed:
	case <-t.C:
	case <-ctx.Done():
	}
	cfg, _ = n.store.AgentConfig()
	return cfg, nil
}

type metrics struct {
	batches *prometheus.CounterVec
	events  *prometheus.CounterVec
	commit  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sightline_aggregator_batches_total", Help: "Agent batches handled, by result.",
		}, []string{"result"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sightline_aggregator_events_total", Help: "Events in applied batches, by result.",
		}, []string{"result"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sightline_aggregator_commit_seconds", Help: "Time from proposing a batch to its apply.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	reg.MustRegister(m.batches, m.events, m.commit,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
