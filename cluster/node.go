package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

var (
	// ErrNotLeader is returned (inside a *NotLeaderError) when an operation
	// that only the leader can do reaches a follower or a deposed leader.
	ErrNotLeader = errors.New("cluster: not the leader")

	// ErrShutdown is returned by operations on a Node that is shut down.
	ErrShutdown = errors.New("cluster: node is shut down")
)

// DefaultApplyTimeout bounds Apply, Barrier and membership changes whose
// context carries no deadline.
const DefaultApplyTimeout = 10 * time.Second

// snapshotRetain is how many raft snapshots stay on disk.
const snapshotRetain = 2

// Config configures a Node. Zero durations and counts fall back to the
// DefaultConfig values.
type Config struct {
	NodeID    string // raft server id, unique and stable for the node's life
	RaftAddr  string // host:port to bind the raft TCP transport on
	Advertise string // host:port peers dial; empty means RaftAddr
	DataDir   string // raft state lives under DataDir/raft
	Bootstrap bool   // form a one-node cluster when there is no raft state yet
	Logger    *slog.Logger

	SnapshotThreshold uint64        // log entries since the last snapshot that trigger one
	SnapshotInterval  time.Duration // how often raft checks SnapshotThreshold
	TrailingLogs      uint64        // entries kept after a snapshot for slow followers
	MaxAppendEntries  int           // entries per AppendEntries RPC and per FSM batch (≤ 1024)

	// HeartbeatTimeout and ElectionTimeout are raft's failure detector; tests
	// shorten them. ElectionTimeout must not be below HeartbeatTimeout.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
}

// DefaultConfig returns the production defaults; NodeID, RaftAddr and
// DataDir still have to be filled in.
func DefaultConfig() Config {
	return Config{
		SnapshotThreshold: 8192,
		SnapshotInterval:  120 * time.Second,
		TrailingLogs:      10240,
		MaxAppendEntries:  512,
		HeartbeatTimeout:  time.Second,
		ElectionTimeout:   time.Second,
	}
}

// Validate reports every problem in c at once, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.NodeID == "" {
		bad("node_id", "required")
	}
	if c.DataDir == "" {
		bad("data_dir", "required")
	}
	bindAll := false
	if c.RaftAddr == "" {
		bad("raft_addr", "required")
	} else if host, _, err := splitHostPort(c.RaftAddr); err != nil {
		bad("raft_addr", "%v", err)
	} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		bindAll = true
	}
	if c.Advertise != "" {
		host, port, err := splitHostPort(c.Advertise)
		switch {
		case err != nil:
			bad("advertise", "%v", err)
		case port == 0:
			bad("advertise", "port 0 cannot be dialled")
		case host == "" || (net.ParseIP(host) != nil && net.ParseIP(host).IsUnspecified()):
			bad("advertise", "%q cannot be dialled by peers", c.Advertise)
		}
	} else if bindAll {
		bad("advertise", "required when raft_addr %q binds every interface", c.RaftAddr)
	}
	if c.MaxAppendEntries < 0 || c.MaxAppendEntries > 1024 {
		bad("max_append_entries", "%d out of range 1..1024", c.MaxAppendEntries)
	}
	if c.SnapshotInterval != 0 && c.SnapshotInterval < 5*time.Millisecond {
		bad("snapshot_interval", "%s is below 5ms", c.SnapshotInterval)
	}
	if c.SnapshotInterval < 0 {
		bad("snapshot_interval", "negative")
	}
	if c.HeartbeatTimeout < 0 || (c.HeartbeatTimeout != 0 && c.HeartbeatTimeout < 10*time.Millisecond) {
		bad("heartbeat_timeout", "%s is below 10ms", c.HeartbeatTimeout)
	}
	if c.ElectionTimeout < 0 || (c.ElectionTimeout != 0 && c.ElectionTimeout < 10*time.Millisecond) {
		bad("election_timeout", "%s is below 10ms", c.ElectionTimeout)
	}
	hb, el := c.withDefaults().HeartbeatTimeout, c.withDefaults().ElectionTimeout
	if hb > 0 && el > 0 && el < hb {
		bad("election_timeout", "%s is below heartbeat_timeout %s", el, hb)
	}
	return errors.Join(errs...)
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return "", 0, fmt.Errorf("port %q is not a number in 0..65535", p)
	}
	return host, int(port), nil
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = d.SnapshotInterval
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	if c.MaxAppendEntries == 0 {
		c.MaxAppendEntries = d.MaxAppendEntries
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = d.HeartbeatTimeout
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = max(d.ElectionTimeout, c.HeartbeatTimeout)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// NotLeaderError is returned when a node that is not the leader is asked to
// do what only the leader may. errors.Is(err, ErrNotLeader) holds; LeaderID
// and LeaderAddr name the leader this node knows of (empty if none).
type NotLeaderError struct {
	LeaderID   string
	LeaderAddr string
	// Err is raft's cause. When it is raft.ErrLeadershipLost the command may
	// still commit, so a retry elsewhere must be idempotent.
	Err error
}

func (e *NotLeaderError) Error() string {
	msg := "cluster: not the leader"
	if e.LeaderID != "" || e.LeaderAddr != "" {
		msg += fmt.Sprintf(" (leader %s at %s)", e.LeaderID, e.LeaderAddr)
	} else {
		msg += " (no known leader)"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// Unwrap returns raft's cause.
func (e *NotLeaderError) Unwrap() error { return e.Err }

// LeaderHint returns the leader named by a *NotLeaderError in err's chain,
// or empty strings.
func LeaderHint(err error) (id, raftAddr string) {
	var nl *NotLeaderError
	if errors.As(err, &nl) {
		return nl.LeaderID, nl.LeaderAddr
	}
	return "", ""
}

// Server is one member of the raft configuration.
type Server struct {
	ID       string
	Addr     string
	Suffrage string // "voter", "nonvoter" or "staging"
	Leader   bool
}

// Node is one raft server with its Pebble log store, file snapshot store
// and TCP transport.
type Node struct {
	id    string
	raft  *raft.Raft
	trans *raft.NetworkTransport
	logs  *LogStore

	shut         atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error
}

// AppliedIndexer is implemented by a state machine that keeps its state
// durably and knows the Raft index it reflects.
type AppliedIndexer interface {
	AppliedIndex() (uint64, error)
}

// Start opens the raft state under cfg.DataDir/raft, binds the transport
// and starts raft with fsm. With cfg.Bootstrap and no existing state it
// bootstraps a one-node cluster of itself. The caller owns fsm and closes
// it after Shutdown.
func Start(cfg Config, fsm raft.FSM) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("cluster: config: %w", err)
	}
	if fsm == nil {
		return nil, errors.New("cluster: fsm is nil")
	}
	cfg = cfg.withDefaults()
	logger := cfg.Logger.With("node", cfg.NodeID)
	hlog := newHCLogger(logger, raftLogLevel)

	raftDir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(raftDir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	logs, err := OpenLogStore(filepath.Join(raftDir, "log"), logger)
	if err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(raftDir, snapshotRetain, hlog)
	if err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("cluster: snapshot store: %w", err)
	}
	var advertise net.Addr
	if cfg.Advertise != "" {
		if advertise, err = net.ResolveTCPAddr("tcp", cfg.Advertise); err != nil {
			_ = logs.Close()
			return nil, fmt.Errorf("cluster: advertise: %w", err)
		}
	}
	// With no advertise address the transport advertises the listener's
	// real address, which is what makes RaftAddr "127.0.0.1:0" work.
	trans, err := raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, 3, 10*time.Second, hlog)
	if err != nil {
		_ = logs.Close()
		return nil, fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftAddr, err)
	}
	fail := func(err error) (*Node, error) {
		trans.CloseStreams()
		_ = trans.Close()
		_ = logs.Close()
		return nil, err
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = cfg.MaxAppendEntries
	rc.BatchApplyCh = true
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = min(rc.LeaderLeaseTimeout, cfg.HeartbeatTimeout/2)
	// The FSM keeps its state in its own durable Pebble with the applied
	// index, so replaying the newest snapshot on every start would only
	// throw that state away and rebuild it (see doc.go).
	rc.NoSnapshotRestoreOnStart = true
	// Unless the state is behind the newest snapshot: raft saves a snapshot
	// it installs from the leader before it hands it to the FSM, so a crash
	// (or a failed restore) in between leaves an older state, and raft would
	// otherwise never replay what lies between it and that snapshot.
	if a, ok := fsm.(AppliedIndexer); ok {
		if list, err := snaps.List(); err == nil && len(list) > 0 {
			applied, err := a.AppliedIndex()
			if err != nil {
				return fail(fmt.Errorf("cluster: reading the state's applied index: %w", err))
			}
			if applied < list[0].Index {
				logger.Warn("state is behind the newest snapshot; restoring it", "applied", applied, "snapshot", list[0].Index)
				rc.NoSnapshotRestoreOnStart = false
			}
		}
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return fail(fmt.Errorf("cluster: raft config: %w", err))
	}

	existing, err := raft.HasExistingState(logs, logs, snaps)
	if err != nil {
		return fail(fmt.Errorf("cluster: read raft state: %w", err))
	}
	r, err := raft.NewRaft(rc, fsm, logs, logs, snaps, trans)
	if err != nil {
		return fail(fmt.Errorf("cluster: start raft: %w", err))
	}
	n := &Node{id: cfg.NodeID, raft: r, trans: trans, logs: logs}
	if cfg.Bootstrap && !existing {
		boot := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter,
			ID:       rc.LocalID,
			Address:  trans.LocalAddr(),
		}}}
		if err := r.BootstrapCluster(boot).Error(); err != nil {
			_ = n.Shutdown()
			return nil, fmt.Errorf("cluster: bootstrap: %w", err)
		}
		logger.Info("bootstrapped raft cluster", "addr", trans.LocalAddr())
	}
	logger.Info("raft started", "addr", trans.LocalAddr(), "existing_state", existing)
	return n, nil
}

// ID returns the node's raft server id.
func (n *Node) ID() string { return n.id }

// Addr returns the raft address peers dial (the bound port when RaftAddr
// asked for port 0).
func (n *Node) Addr() string { return string(n.trans.LocalAddr()) }

// Raft exposes the underlying raft for what this type does not wrap.
func (n *Node) Raft() *raft.Raft { return n.raft }

// Apply replicates cmd and returns the FSM's response once it is applied
// on this node. A response that is an error is returned as the error. The
// wait is bounded by ctx's deadline, or DefaultApplyTimeout without one.
func (n *Node) Apply(ctx context.Context, cmd []byte) (any, error) {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return nil, err
	}
	f := n.raft.Apply(cmd, timeout)
	if err := f.Error(); err != nil {
		return nil, n.mapErr("apply", err)
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

// IsLeader reports whether this node is the leader right now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the leader this node knows of, or empty strings.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// WaitForLeader polls until this node knows a leader or ctx ends.
func (n *Node) WaitForLeader(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if n.shut.Load() {
			return ErrShutdown
		}
		if _, addr := n.Leader(); addr != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: wait for leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Servers returns the latest raft configuration with the leader marked.
func (n *Node) Servers() ([]Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, n.mapErr("servers", err)
	}
	_, leaderID := n.raft.LeaderWithID()
	var out []Server
	for _, s := range f.Configuration().Servers {
		out = append(out, Server{
			ID:       string(s.ID),
			Addr:     string(s.Address),
			Suffrage: suffrageName(s.Suffrage),
			Leader:   leaderID != "" && s.ID == leaderID,
		})
	}
	return out, nil
}

func suffrageName(s raft.ServerSuffrage) string {
	switch s {
	case raft.Voter:
		return "voter"
	case raft.Nonvoter:
		return "nonvoter"
	case raft.Staging:
		return "staging"
	default:
		return s.String()
	}
}

// AddVoter adds (or updates the address of) a voting member. Leader only.
func (n *Node) AddVoter(ctx context.Context, id, addr string) error {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return err
	}
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout).Error(); err != nil {
		return n.mapErr("add voter "+id, err)
	}
	return nil
}

// RemoveServer removes a member. Leader only.
func (n *Node) RemoveServer(ctx context.Context, id string) error {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return err
	}
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error(); err != nil {
		return n.mapErr("remove server "+id, err)
	}
	return nil
}

// Barrier waits until every entry committed before it is applied to the
// FSM, e.g. before a new leader serves reads. Leader only.
func (n *Node) Barrier(ctx context.Context) error {
	timeout, err := n.timeout(ctx)
	if err != nil {
		return err
	}
	if err := n.raft.Barrier(timeout).Error(); err != nil {
		return n.mapErr("barrier", err)
	}
	return nil
}

// AppliedIndex returns the last index raft handed to the FSM.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// Stats returns raft's stats plus the log store's first index.
func (n *Node) Stats() map[string]string {
	s := n.raft.Stats()
	first, _ := n.logs.FirstIndex()
	s["first_log_index"] = strconv.FormatUint(first, 10)
	s["node_id"] = n.id
	return s
}

// Shutdown stops raft, closes the transport and then the log store. It is
// safe to call more than once; later calls return the first result.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		n.shut.Store(true)
		var errs []error
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: raft shutdown: %w", err))
		}
		// raft closes the transport only on its first Shutdown, which it may
		// already have done itself after being removed, and it never closes
		// pooled connections.
		n.trans.CloseStreams()
		if err := n.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cluster: close transport: %w", err))
		}
		if err := n.logs.Close(); err != nil {
			errs = append(errs, err)
		}
		n.shutdownErr = errors.Join(errs...)
	})
	return n.shutdownErr
}

// timeout turns ctx into a raft timeout; raft futures cannot be cancelled,
// so a deadline is the only part of ctx they can honour.
func (n *Node) timeout(ctx context.Context) (time.Duration, error) {
	if n.shut.Load() {
		return 0, ErrShutdown
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		return DefaultApplyTimeout, nil
	}
	d := time.Until(dl)
	if d <= 0 {
		return 0, context.DeadlineExceeded
	}
	return d, nil
}

func (n *Node) mapErr(op string, err error) error {
	switch {
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("cluster: %s: %w", op, ErrShutdown)
	case errors.Is(err, raft.ErrNotLeader),
		errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress):
		id, addr := n.Leader()
		return &NotLeaderError{LeaderID: id, LeaderAddr: addr, Err: err}
	default:
		return fmt.Errorf("cluster: %s: %w", op, err)
	}
}
