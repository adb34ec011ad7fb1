package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sightline/sightline/cluster"
	"github.com/sightline/sightline/cluster/clustertest"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clustertest.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func TestConfigValidate(t *testing.T) {
	valid := func() cluster.Config {
		c := cluster.DefaultConfig()
		c.NodeID, c.RaftAddr, c.DataDir = "n1", "127.0.0.1:8300", "/var/lib/sightline"
		return c
	}
	cases := []struct {
		name   string
		mutate func(*cluster.Config)
		want   []string // every message expected, in order
	}{
		{"defaults with required fields", func(*cluster.Config) {}, nil},
		{"zero values fall back to defaults", func(c *cluster.Config) { *c = cluster.Config{NodeID: "n", RaftAddr: "127.0.0.1:0", DataDir: "d"} }, nil},
		{"advertise given", func(c *cluster.Config) { c.RaftAddr, c.Advertise = "0.0.0.0:8300", "10.1.2.3:8300" }, nil},
		{"everything missing", func(c *cluster.Config) { *c = cluster.Config{} }, []string{
			"node_id: required", "data_dir: required", "raft_addr: required"}},
		{"bind all without advertise", func(c *cluster.Config) { c.RaftAddr = "0.0.0.0:8300" }, []string{
			`advertise: required when raft_addr "0.0.0.0:8300" binds every interface`}},
		{"bad addresses", func(c *cluster.Config) { c.RaftAddr, c.Advertise = "nohostport", "10.0.0.1:0" }, []string{
			"raft_addr: address nohostport: missing port in address", "advertise: port 0 cannot be dialled"}},
		{"unspecified advertise", func(c *cluster.Config) { c.Advertise = "[::]:8300" }, []string{
			`advertise: "[::]:8300" cannot be dialled by peers`}},
		{"bad port", func(c *cluster.Config) { c.RaftAddr = "127.0.0.1:99999" }, []string{
			`raft_addr: port "99999" is not a number in 0..65535`}},
		{"ranges", func(c *cluster.Config) {
			c.MaxAppendEntries = 2000
			c.SnapshotInterval = time.Millisecond
			c.HeartbeatTimeout = 2 * time.Second
			c.ElectionTimeout = time.Second
		}, []string{
			"max_append_entries: 2000 out of range 1..1024",
			"snapshot_interval: 1ms is below 5ms",
			"election_timeout: 1s is below heartbeat_timeout 2s"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid()
			tc.mutate(&c)
			err := c.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want %q", tc.want)
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("Validate =\n%s\nwant\n%s", err, strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	fsm, err := clustertest.OpenCounterFSM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fsm.Close() }()
	if _, err := cluster.Start(cluster.Config{}, fsm); err == nil || !strings.Contains(err.Error(), "node_id: required") {
		t.Fatalf("Start = %v, want the config errors", err)
	}
	cfg := clustertest.Config(t, "n", t.TempDir())
	if _, err := cluster.Start(cfg, nil); err == nil {
		t.Fatal("Start with a nil FSM succeeded")
	}
}

func TestSingleNodeApply(t *testing.T) {
	n := clustertest.StartNode(t, bootstrapConfig(t, "solo"))
	ctx := testCtx(t)
	if err := n.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, clustertest.Timeout, "leadership", n.IsLeader)
	if id, addr := n.Leader(); id != "solo" || addr != n.Addr() {
		t.Fatalf("Leader = %s %s, want solo %s", id, addr, n.Addr())
	}
	servers, err := n.Servers()
	if err != nil {
		t.Fatal(err)
	}
	want := []cluster.Server{{ID: "solo", Addr: n.Addr(), Suffrage: "voter", Leader: true}}
	if fmt.Sprint(servers) != fmt.Sprint(want) {
		t.Fatalf("Servers = %+v, want %+v", servers, want)
	}

	// 1,000 commands from several goroutines, so raft batches them.
	const workers, per = 8, 125
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range per {
				resp, err := n.Apply(ctx, clustertest.AddCommand(1))
				if err != nil {
					errs <- err
					return
				}
				if _, ok := resp.(uint64); !ok {
					errs <- fmt.Errorf("response %T %v, want uint64", resp, resp)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := n.FSM.Count(); got != workers*per {
		t.Fatalf("count = %d, want %d", got, workers*per)
	}
	if err := n.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	// The barrier itself advances raft's applied index but is not an FSM entry.
	if n.FSM.Applied() < workers*per || n.AppliedIndex() < n.FSM.Applied() {
		t.Fatalf("AppliedIndex = %d, FSM applied = %d", n.AppliedIndex(), n.FSM.Applied())
	}
	t.Logf("%d commands in %d FSM batches", workers*per, n.FSM.Batches())

	// An FSM response that is an error comes back as the error.
	if _, err := n.Apply(ctx, clustertest.RejectCommand); !errors.Is(err, clustertest.ErrRejected) {
		t.Fatalf("Apply(reject) = %v, want ErrRejected", err)
	}
	stats := n.Stats()
	if stats["state"] != "Leader" || stats["node_id"] != "solo" || stats["first_log_index"] != "1" {
		t.Fatalf("Stats = %v", stats)
	}

	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if _, err := n.Apply(expired, clustertest.AddCommand(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Apply with an expired context = %v, want DeadlineExceeded", err)
	}
}

func bootstrapConfig(t *testing.T, id string) cluster.Config {
	cfg := clustertest.Config(t, id, t.TempDir())
	cfg.Bootstrap = true
	return cfg
}

func TestShutdown(t *testing.T) {
	n := clustertest.StartNode(t, bootstrapConfig(t, "solo"))
	ctx := testCtx(t)
	if err := n.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if _, err := n.Apply(ctx, clustertest.AddCommand(1)); !errors.Is(err, cluster.ErrShutdown) {
		t.Fatalf("Apply after Shutdown = %v, want ErrShutdown", err)
	}
	if err := n.WaitForLeader(ctx); !errors.Is(err, cluster.ErrShutdown) {
		t.Fatalf("WaitForLeader after Shutdown = %v, want ErrShutdown", err)
	}
	if err := n.Barrier(ctx); !errors.Is(err, cluster.ErrShutdown) {
		t.Fatalf("Barrier after Shutdown = %v, want ErrShutdown", err)
	}
}

// applyN applies n single increments through node and fails on any error.
func applyN(t *testing.T, ctx context.Context, node *clustertest.Node, n int) {
	t.Helper()
	for i := range n {
		if _, err := node.Apply(ctx, clustertest.AddCommand(1)); err != nil {
			t.Fatalf("apply %d: %v", i, err)
		}
	}
}

func TestRestartKeepsLogAndSkipsApplied(t *testing.T) {
	cfg := bootstrapConfig(t, "solo")
	ctx := testCtx(t)

	n := clustertest.StartNode(t, cfg)
	if err := n.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, clustertest.Timeout, "leadership", n.IsLeader)
	applyN(t, ctx, n, 100)
	snap := n.Raft().Snapshot()
	if err := snap.Error(); err != nil {
		t.Fatal(err)
	}
	meta, rc, err := snap.Open()
	if err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	applyN(t, ctx, n, 20) // after the snapshot: raft will replay these
	applied := n.FSM.Applied()
	lastIndex := n.Raft().LastIndex()
	cfg.RaftAddr = n.Addr() // same address, so the stored membership stays right
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}

	n2 := clustertest.StartNode(t, cfg) // Bootstrap is still set: must be a no-op
	if got := n2.FSM.Count(); got != 120 {
		t.Fatalf("count after reopen = %d, want 120", got)
	}
	if err := n2.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, clustertest.Timeout, "leadership after restart", n2.IsLeader)
	if first := n2.Stats()["first_log_index"]; first != "1" {
		t.Fatalf("first_log_index after restart = %s, want 1 (log kept)", first)
	}
	if got := n2.Raft().LastIndex(); got < lastIndex {
		t.Fatalf("LastIndex after restart = %d, want ≥ %d", got, lastIndex)
	}
	if _, err := n2.Apply(ctx, clustertest.AddCommand(5)); err != nil {
		t.Fatal(err)
	}
	if got := n2.FSM.Count(); got != 125 {
		t.Fatalf("count = %d, want 125 (replayed entries must not count twice)", got)
	}
	// With NoSnapshotRestoreOnStart raft resumes after the snapshot, so the
	// FSM never sees entries at or below it, and skips the replayed ones it
	// had already applied.
	if min := n2.FSM.MinSeen(); min <= meta.Index {
		t.Fatalf("FSM saw index %d, at or below the snapshot index %d", min, meta.Index)
	}
	if n2.FSM.Skipped() == 0 || n2.FSM.Skipped() > applied-meta.Index {
		t.Fatalf("skipped %d replayed entries, want 1..%d", n2.FSM.Skipped(), applied-meta.Index)
	}
	if n2.FSM.Restores() != 0 {
		t.Fatal("raft restored a snapshot into the FSM on start")
	}
	servers, err := n2.Servers()
	if err != nil || len(servers) != 1 || servers[0].Addr != n2.Addr() {
		t.Fatalf("Servers after restart = %+v, %v", servers, err)
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	n := clustertest.StartNode(t, bootstrapConfig(t, "solo"))
	ctx := testCtx(t)
	clustertest.WaitFor(t, clustertest.Timeout, "leadership", n.IsLeader)
	applyN(t, ctx, n, 50)
	snap := n.Raft().Snapshot()
	if err := snap.Error(); err != nil {
		t.Fatal(err)
	}
	meta, rc, err := snap.Open()
	if err != nil {
		t.Fatal(err)
	}
	fsm, err := clustertest.OpenCounterFSM(filepath.Join(t.TempDir(), "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fsm.Close() }()
	if err := fsm.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if fsm.Count() != 50 || fsm.Applied() != meta.Index {
		t.Fatalf("restored count %d applied %d, want 50 and %d", fsm.Count(), fsm.Applied(), meta.Index)
	}
	// The restored state is a working database.
	if resp := fsm.Apply(&raft.Log{Index: meta.Index + 1, Type: raft.LogCommand, Data: clustertest.AddCommand(2)}); resp != uint64(52) {
		t.Fatalf("apply on restored state = %v, want 52", resp)
	}
}

// TestNodeOutsideAnyCluster uses a node that was never bootstrapped nor
// added: it can never be leader, so every leader-only call must say so.
func TestNodeOutsideAnyCluster(t *testing.T) {
	n := clustertest.StartNode(t, clustertest.Config(t, "lonely", t.TempDir()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if n.IsLeader() {
		t.Fatal("an unbootstrapped node is leader")
	}
	_, applyErr := n.Apply(ctx, clustertest.AddCommand(1))
	for name, err := range map[string]error{
		"Apply":        applyErr,
		"AddVoter":     n.AddVoter(ctx, "x", "127.0.0.1:1"),
		"RemoveServer": n.RemoveServer(ctx, "x"),
		"Barrier":      n.Barrier(ctx),
	} {
		if !errors.Is(err, cluster.ErrNotLeader) {
			t.Errorf("%s = %v, want ErrNotLeader", name, err)
		}
		if id, addr := cluster.LeaderHint(err); id != "" || addr != "" {
			t.Errorf("%s hint = %q %q, want none", name, id, addr)
		}
	}
	if id, addr := cluster.LeaderHint(errors.New("other")); id != "" || addr != "" {
		t.Errorf("LeaderHint(other) = %q %q", id, addr)
	}
	if n.FSM.Count() != 0 {
		t.Fatal("a rejected Apply reached the FSM")
	}
}

func TestThreeNodeCluster(t *testing.T) {
	nodes := clustertest.StartCluster(t, 3, nil)
	ctx := testCtx(t)
	clustertest.Increment(t, nodes, 1, 100)
	clustertest.WaitCount(t, nodes, 100)

	// A follower refuses with ErrNotLeader naming the leader. RejectCommand
	// is the probe because it changes nothing if leadership moved to the
	// probed node in the meantime; a probe is retried only then.
	clustertest.WaitFor(t, clustertest.Timeout, "a follower to refuse with the leader's hint", func() bool {
		leader := clustertest.WaitLeader(t, nodes)
		for _, nd := range nodes {
			if nd == leader {
				continue
			}
			_, err := nd.Apply(ctx, clustertest.RejectCommand)
			if errors.Is(err, clustertest.ErrRejected) {
				return false // nd became leader
			}
			if !errors.Is(err, cluster.ErrNotLeader) {
				t.Fatalf("Apply on follower %s = %v, want ErrNotLeader", nd.ID(), err)
			}
			var nl *cluster.NotLeaderError
			if !errors.As(err, &nl) || !errors.Is(err, raft.ErrNotLeader) {
				t.Fatalf("error %v is not a *NotLeaderError wrapping raft.ErrNotLeader", err)
			}
			if id, addr := cluster.LeaderHint(err); id != leader.ID() || addr != leader.Addr() {
				t.Logf("hint %s %s, leader %s %s: leadership moved, probing again", id, addr, leader.ID(), leader.Addr())
				return false
			}
		}
		return true
	})

	clustertest.WaitFor(t, clustertest.Timeout, "every node to list 3 voters with one leader marked", func() bool {
		for _, nd := range nodes {
			servers, err := nd.Servers()
			if err != nil || len(servers) != 3 {
				return false
			}
			leaders := 0
			for _, s := range servers {
				if s.Suffrage != "voter" {
					t.Fatalf("%s: server %+v is not a voter", nd.ID(), s)
				}
				if s.Leader {
					leaders++
					if id, addr := nd.Leader(); s.ID != id || s.Addr != addr {
						return false
					}
				}
			}
			if leaders != 1 {
				return false
			}
		}
		return true
	})

	// Remove node2; the other two carry on.
	gone, rest := nodes[2], nodes[:2]
	clustertest.OnLeader(t, nodes, "remove node2", func(ctx context.Context, l *clustertest.Node) error {
		return l.RemoveServer(ctx, gone.ID())
	})
	if err := gone.Stop(); err != nil {
		t.Fatal(err)
	}
	clustertest.Increment(t, rest, 101, 110)
	clustertest.WaitCount(t, rest, 110)
	clustertest.WaitFor(t, clustertest.Timeout, "the survivors to list 2 servers", func() bool {
		for _, nd := range rest {
			if s, err := nd.Servers(); err != nil || len(s) != 2 {
				return false
			}
		}
		return true
	})
}

func TestLeaderFailover(t *testing.T) {
	nodes := clustertest.StartCluster(t, 3, nil)
	clustertest.Increment(t, nodes, 1, 10)
	clustertest.WaitCount(t, nodes, 10)
	old := clustertest.WaitLeader(t, nodes)
	if err := old.Stop(); err != nil {
		t.Fatal(err)
	}
	var rest []*clustertest.Node
	for _, nd := range nodes {
		if nd != old {
			rest = append(rest, nd)
		}
	}
	clustertest.OnLeader(t, rest, "barrier", func(ctx context.Context, l *clustertest.Node) error {
		return l.Barrier(ctx)
	})
	clustertest.Increment(t, rest, 11, 15)
	clustertest.WaitCount(t, rest, 15)
}

// TestFollowerCatchesUpBySnapshot adds a voter after the log it needs was
// compacted away, so raft must ship a checkpoint snapshot and the counter
// restores it with RestoreCheckpoint.
func TestFollowerCatchesUpBySnapshot(t *testing.T) {
	first := bootstrapConfig(t, "node0")
	first.TrailingLogs = 5
	n0 := clustertest.StartNode(t, first)
	clustertest.WaitFor(t, clustertest.Timeout, "leadership", n0.IsLeader)
	clustertest.Increment(t, []*clustertest.Node{n0}, 1, 200)
	if err := n0.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	clustertest.WaitFor(t, clustertest.Timeout, "log compaction", func() bool {
		return n0.Stats()["first_log_index"] != "1"
	})

	cfg := clustertest.Config(t, "node1", t.TempDir())
	cfg.TrailingLogs = 5
	n1 := clustertest.StartNode(t, cfg)
	nodes := []*clustertest.Node{n0, n1}
	clustertest.OnLeader(t, nodes, "add voter node1", func(ctx context.Context, l *clustertest.Node) error {
		return l.AddVoter(ctx, n1.ID(), n1.Addr())
	})
	clustertest.Increment(t, nodes, 201, 203)
	clustertest.WaitCount(t, nodes, 203)
	if n1.FSM.Restores() == 0 {
		t.Fatal("the new voter caught up without a snapshot restore")
	}
}
