package aggregator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sightline/sightline/cluster"
)

// TestInterruptedRestoreRecovers: a crash between Restore's two renames
// leaves no state directory; opening finishes the restore (or rolls it
// back) instead of starting from an empty state.
func TestInterruptedRestoreRecovers(t *testing.T) {
	for _, tc := range []struct {
		name      string
		withNew   bool
		wantSites []string
	}{
		{"new state complete", true, []string{"new"}},
		{"only the old state", false, []string{"old"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			put := func(d, id string) {
				s, err := OpenStore(d, nil)
				if err != nil {
					t.Fatal(err)
				}
				cmd, _ := EncodeCommand(CmdPutSite, &Site{ID: id})
				if _, err := NewProcessor(s).Apply([]Entry{{Index: 1, Data: cmd}}); err != nil {
					t.Fatal(err)
				}
				s.Close()
			}
			put(dir, "old")
			if tc.withNew {
				put(dir+".restore", "new")
			}
			if err := os.Rename(dir, dir+".old"); err != nil {
				t.Fatal(err)
			}
			s, err := OpenStore(dir, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			sites, _ := s.Sites()
			if len(sites) != 1 || sites[0].ID != tc.wantSites[0] {
				t.Fatalf("sites after recovery = %+v, want %v", sites, tc.wantSites)
			}
			if exists(dir+".old") || exists(dir+".restore") {
				t.Fatal("leftover restore directories")
			}
		})
	}
}

// TestStateBehindSnapshotIsRestored: if the state falls behind the newest
// snapshot (a crash between raft saving an installed snapshot and the FSM
// restoring it), the next start restores that snapshot instead of leaving
// the entries up to it missing for good.
func TestStateBehindSnapshotIsRestored(t *testing.T) {
	data := t.TempDir()
	stateDir := filepath.Join(data, "state")
	start := func() (*cluster.Node, *Store) {
		s, err := OpenStore(stateDir, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := cluster.DefaultConfig()
		cfg.NodeID, cfg.RaftAddr, cfg.DataDir, cfg.Bootstrap = "n1", "127.0.0.1:0", data, true
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		n, err := cluster.Start(cfg, NewFSM(s, data, cfg.Logger, func(err error) { t.Error(err) }))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := n.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
		return n, s
	}
	n, s := start()
	for seq := uint64(1); seq <= 30; seq++ {
		if _, err := n.Apply(context.Background(), ingest(t, "a1", seq, 1, events("demo", "s", fmt.Sprint("e", seq)))); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	n.Shutdown()
	s.Close()
	// The state loses everything (as if a snapshot install was cut short).
	if err := os.RemoveAll(stateDir); err != nil {
		t.Fatal(err)
	}
	n, s = start()
	defer func() { n.Shutdown(); s.Close() }()
	waitFor(t, 20*time.Second, "the state to be restored from the snapshot", func() bool {
		st, err := s.Stats("demo")
		return err == nil && st.Events == 30
	})
}
