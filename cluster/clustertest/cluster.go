package clustertest

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/sightline/sightline/cluster"
)

// Timeout bounds every wait in these helpers; generous because -race on a
// small machine slows raft down, and waits poll rather than sleep.
const Timeout = 60 * time.Second

// WaitFor polls cond until it is true or timeout passes, then fails t.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Config returns a node config for tests: loopback port 0, data in dataDir,
// logs through Logger(t). Raft keeps its default one-second timeouts:
// shorter ones make leaders step down under -race on a two-core machine.
func Config(t testing.TB, id, dataDir string) cluster.Config {
	cfg := cluster.DefaultConfig()
	cfg.NodeID = id
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.DataDir = dataDir
	cfg.Logger = Logger(t).With("test_node", id)
	return cfg
}

// Node is a started cluster.Node with its CounterFSM.
type Node struct {
	*cluster.Node
	FSM    *CounterFSM
	Config cluster.Config

	stopOnce sync.Once
	stopErr  error
}

// StartNode opens a CounterFSM in cfg.DataDir/fsm and starts a node on it.
// The node is stopped when the test ends.
func StartNode(t testing.TB, cfg cluster.Config) *Node {
	t.Helper()
	fsm, err := OpenCounterFSM(filepath.Join(cfg.DataDir, "fsm"))
	if err != nil {
		t.Fatalf("open fsm: %v", err)
	}
	n, err := cluster.Start(cfg, fsm)
	if err != nil {
		_ = fsm.Close()
		t.Fatalf("start node %s: %v", cfg.NodeID, err)
	}
	tn := &Node{Node: n, FSM: fsm, Config: cfg}
	t.Cleanup(func() {
		if err := tn.Stop(); err != nil {
			t.Errorf("stop node %s: %v", cfg.NodeID, err)
		}
	})
	return tn
}

// Stop shuts the node down and then closes its FSM; safe to call twice.
func (n *Node) Stop() error {
	n.stopOnce.Do(func() {
		err := n.Shutdown()
		if cerr := n.FSM.Close(); err == nil {
			err = cerr
		}
		n.stopErr = err
	})
	return n.stopErr
}

// StartCluster starts n nodes named node0…, bootstraps node0, adds the rest
// as voters through the leader and waits until every node knows the leader
// and all n members. mutate, if not nil, adjusts each config first.
func StartCluster(t testing.TB, n int, mutate func(*cluster.Config)) []*Node {
	t.Helper()
	nodes := make([]*Node, n)
	for i := range nodes {
		cfg := Config(t, fmt.Sprintf("node%d", i), t.TempDir())
		cfg.Bootstrap = i == 0
		if mutate != nil {
			mutate(&cfg)
		}
		nodes[i] = StartNode(t, cfg)
		if i == 0 {
			WaitLeader(t, nodes[:1])
		}
	}
	for _, nd := range nodes[1:] {
		OnLeader(t, nodes, "add voter "+nd.ID(), func(ctx context.Context, l *Node) error {
			return l.AddVoter(ctx, nd.ID(), nd.Addr())
		})
	}
	WaitFor(t, Timeout, "every node to see the full membership and one leader", func() bool {
		leaderID, _ := nodes[0].Leader()
		for _, nd := range nodes {
			servers, err := nd.Servers()
			if err != nil || len(servers) != n {
				return false
			}
			if id, _ := nd.Leader(); id == "" || id != leaderID {
				return false
			}
		}
		return true
	})
	return nodes
}

// WaitLeader waits until exactly one of nodes is leader and returns it.
func WaitLeader(t testing.TB, nodes []*Node) *Node {
	t.Helper()
	var leader *Node
	WaitFor(t, Timeout, "a leader", func() bool {
		leader = nil
		for _, nd := range nodes {
			if nd.IsLeader() {
				if leader != nil {
					return false
				}
				leader = nd
			}
		}
		return leader != nil
	})
	return leader
}

// OnLeader runs op on the current leader, retrying on any error (leadership
// can move when a loaded machine stalls heartbeats) until Timeout. op must
// be safe to repeat.
func OnLeader(t testing.TB, nodes []*Node, what string, op func(ctx context.Context, leader *Node) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	var lastErr error
	for ctx.Err() == nil {
		var leader *Node
		for _, nd := range nodes {
			if nd.IsLeader() {
				leader = nd
				break
			}
		}
		if leader != nil {
			if lastErr = op(ctx, leader); lastErr == nil {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s on the leader: gave up after %s: %v", what, Timeout, lastErr)
}

// Increment applies IncrementCommand(from) … IncrementCommand(to) through
// the leader; each is idempotent, so errors are retried.
func Increment(t testing.TB, nodes []*Node, from, to uint64) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		OnLeader(t, nodes, fmt.Sprintf("increment %d", seq), func(ctx context.Context, l *Node) error {
			_, err := l.Apply(ctx, IncrementCommand(seq))
			return err
		})
	}
}

// WaitCount waits until every node's counter reads want.
func WaitCount(t testing.TB, nodes []*Node, want uint64) {
	t.Helper()
	WaitFor(t, Timeout, fmt.Sprintf("every node to count %d", want), func() bool {
		for _, nd := range nodes {
			if nd.FSM.Count() != want {
				return false
			}
		}
		return true
	})
}
