package aggregator

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/sightline/sightline/wire"
)

func openTestStore(t *testing.T) (*Store, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func events(site, session string, ids ...string) []wire.Event {
	out := make([]wire.Event, len(ids))
	for i, id := range ids {
		out[i] = wire.Event{Site: site, Session: session, ID: id, Type: wire.TypeClick, TS: int64(1000 + i), URL: "http://x/"}
	}
	return out
}

func ingest(t testing.TB, agent string, seq, low uint64, evs []wire.Event) []byte {
	t.Helper()
	payload, err := wire.EncodeEvents(evs)
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := EncodeCommand(CmdIngest, &IngestCmd{AgentID: agent, Seq: seq, Low: low, Count: uint32(len(evs)), Codec: wire.CodecZstdMsgpack, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return cmd
}

// applier numbers entries like a Raft log would.
type applier struct {
	t     *testing.T
	p     *Processor
	index uint64
}

func (a *applier) apply(cmds ...[]byte) []any {
	a.t.Helper()
	entries := make([]Entry, len(cmds))
	for i, c := range cmds {
		a.index++
		entries[i] = Entry{Index: a.index, Data: c}
	}
	res, err := a.p.Apply(entries)
	if err != nil {
		a.t.Fatal(err)
	}
	return res
}

func wantStats(t *testing.T, s *Store, site string, events, sessions uint64) {
	t.Helper()
	st, err := s.Stats(site)
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != events || st.Sessions != sessions {
		t.Fatalf("stats(%s) = %d events, %d sessions; want %d, %d", site, st.Events, st.Sessions, events, sessions)
	}
}

func TestIngestDedupe(t *testing.T) {
	tests := []struct {
		name         string
		cmds         func(t *testing.T) [][]byte
		wantEvents   uint64
		wantSessions uint64
		lastResult   IngestResult
	}{
		{
			name: "one batch",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{ingest(t, "a1", 1, 1, events("demo", "s1", "e1", "e2", "e3"))}
			},
			wantEvents: 3, wantSessions: 1, lastResult: IngestResult{Applied: 3},
		},
		{
			name: "same agent and seq twice",
			cmds: func(t *testing.T) [][]byte {
				b := ingest(t, "a1", 1, 1, events("demo", "s1", "e1", "e2"))
				return [][]byte{b, b}
			},
			wantEvents: 2, wantSessions: 1, lastResult: IngestResult{Duplicate: true},
		},
		{
			name: "same seq from another agent is new",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{
					ingest(t, "a1", 1, 1, events("demo", "s1", "e1")),
					ingest(t, "a2", 1, 1, events("demo", "s2", "e2")),
				}
			},
			wantEvents: 2, wantSessions: 2, lastResult: IngestResult{Applied: 1},
		},
		{
			name: "seq below the low-water mark is a duplicate",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{
					ingest(t, "a1", 5, 5, events("demo", "s1", "e1")),
					ingest(t, "a1", 6, 6, events("demo", "s1", "e2")),
					ingest(t, "a1", 5, 5, events("demo", "s1", "e3")),
				}
			},
			wantEvents: 2, wantSessions: 1, lastResult: IngestResult{Duplicate: true},
		},
		{
			name: "out-of-order seqs both apply",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{
					ingest(t, "a1", 2, 1, events("demo", "s1", "e2")),
					ingest(t, "a1", 1, 1, events("demo", "s1", "e1")),
				}
			},
			wantEvents: 2, wantSessions: 1, lastResult: IngestResult{Applied: 1},
		},
		{
			name: "event ids already stored are skipped",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{
					ingest(t, "a1", 1, 1, events("demo", "s1", "e1", "e2")),
					ingest(t, "a1", 2, 1, events("demo", "s1", "e2", "e3")),
				}
			},
			wantEvents: 3, wantSessions: 1, lastResult: IngestResult{Applied: 1, DupEvents: 1},
		},
		{
			name: "duplicate ids inside one batch count once",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{ingest(t, "a1", 1, 1, events("demo", "s1", "e1", "e1"))}
			},
			wantEvents: 1, wantSessions: 1, lastResult: IngestResult{Applied: 1, DupEvents: 1},
		},
		{
			name: "events without session are skipped as invalid",
			cmds: func(t *testing.T) [][]byte {
				return [][]byte{ingest(t, "a1", 1, 1, events("demo", "", "e1"))}
			},
			lastResult: IngestResult{Invalid: 1},
		},
		{
			name: "undecodable payload is rejected",
			cmds: func(t *testing.T) [][]byte {
				cmd, _ := EncodeCommand(CmdIngest, &IngestCmd{AgentID: "a1", Seq: 1, Codec: wire.CodecZstdMsgpack, Payload: []byte("nope")})
				return [][]byte{cmd}
			},
			lastResult: IngestResult{Rejected: "x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTestStore(t)
			a := &applier{t: t, p: NewProcessor(s)}
			var last any
			for _, c := range tt.cmds(t) {
				last = a.apply(c)[0]
			}
			got := last.(IngestResult)
			if (got.Rejected != "") != (tt.lastResult.Rejected != "") {
				t.Fatalf("rejected = %q, want rejected=%v", got.Rejected, tt.lastResult.Rejected != "")
			}
			got.Rejected, tt.lastResult.Rejected = "", ""
			if got != tt.lastResult {
				t.Fatalf("last result = %+v, want %+v", got, tt.lastResult)
			}
			wantStats(t, s, "demo", tt.wantEvents, tt.wantSessions)
		})
	}
}

func TestLowWaterMarkForgetsMarkers(t *testing.T) {
	s, _ := openTestStore(t)
	a := &applier{t: t, p: NewProcessor(s)}
	for seq := uint64(1); seq <= 10; seq++ {
		a.apply(ingest(t, "a1", seq, 1, events("demo", "s1", fmt.Sprint("e", seq))))
	}
	a.apply(ingest(t, "a1", 11, 11, events("demo", "s1", "e11")))
	n := 0
	if err := s.scan([]byte{famAgentBatch}, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("batch markers left = %d, want 1 (only seq 11)", n)
	}
	wantStats(t, s, "demo", 11, 1)
}

func TestReplayAfterRestartIsSkipped(t *testing.T) {
	s, dir := openTestStore(t)
	p := NewProcessor(s)
	cmds := []Entry{
		{Index: 1, Data: ingest(t, "a1", 1, 1, events("demo", "s1", "e1"))},
		{Index: 2, Data: ingest(t, "a1", 2, 1, events("demo", "s1", "e2"))},
	}
	if _, err := p.Apply(cmds); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	// Raft replays everything after its last snapshot; the store already
	// holds entries 1 and 2, so only entry 3 may count.
	res, err := NewProcessor(s2).Apply(append(cmds, Entry{Index: 3, Data: ingest(t, "a2", 1, 1, events("demo", "s2", "e3"))}))
	if err != nil {
		t.Fatal(err)
	}
	if r := res[2].(IngestResult); r.Applied != 1 {
		t.Fatalf("entry 3 = %+v, want applied", r)
	}
	wantStats(t, s2, "demo", 3, 2)
	if idx, _ := s2.AppliedIndex(); idx != 3 {
		t.Fatalf("applied index = %d, want 3", idx)
	}
}

func TestUnknownCommands(t *testing.T) {
	s, _ := openTestStore(t)
	p := NewProcessor(s)
	if _, err := p.Apply([]Entry{{Index: 1, Data: []byte{byte(CmdIgnorable | 0x11), 0xc0}}}); err != nil {
		t.Fatalf("ignorable unknown command: %v", err)
	}
	_, err := p.Apply([]Entry{{Index: 2, Data: []byte{0x11, 0xc0}}})
	if !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown command: err = %v, want ErrUnknownCommand", err)
	}
	if _, err := NewProcessor(s).Apply([]Entry{{Index: 3, Data: []byte{}}}); !errors.Is(err, ErrEmptyCommand) {
		t.Fatalf("empty command: err = %v, want ErrEmptyCommand", err)
	}
}

func TestSitesAndConfigLongPoll(t *testing.T) {
	s, _ := openTestStore(t)
	a := &applier{t: t, p: NewProcessor(s)}
	cfg, changed := s.AgentConfig()
	if cfg.Version != 0 || len(cfg.Sites) != 0 {
		t.Fatalf("initial config = %+v", cfg)
	}
	cmd, _ := EncodeCommand(CmdPutSite, &Site{ID: "demo", Origins: []string{"http://localhost:8080"}})
	a.apply(cmd)
	select {
	case <-changed:
	default:
		t.Fatal("config change did not wake long polls")
	}
	cfg, _ = s.AgentConfig()
	if cfg.Version != a.index || len(cfg.Sites) != 1 || cfg.Sites[0].Origins[0] != "http://localhost:8080" {
		t.Fatalf("config after put = %+v", cfg)
	}
}

func TestCommandEnvelopeGolden(t *testing.T) {
	cmd, err := EncodeCommand(CmdIngest, &IngestCmd{AgentID: "a", Seq: 7, Low: 5, Count: 1, Codec: 1, Payload: []byte{0xAA}})
	if err != nil {
		t.Fatal(err)
	}
	// type 1, then a 6-element msgpack array.
	const want = "0196a16107050101c401aa"
	if got := hex.EncodeToString(cmd); got != want {
		t.Fatalf("ingest envelope = %s, want %s", got, want)
	}
	cmd, _ = EncodeCommand(CmdPutSite, &Site{ID: "d", Origins: []string{"o"}, Created: 1})
	if got := hex.EncodeToString(cmd); got != "0293a16491a16f01" {
		t.Fatalf("site envelope = %s", got)
	}
}

// memSink collects a persisted snapshot.
type memSink struct{ bytes.Buffer }

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { return nil }
func (m *memSink) Close() error  { return nil }

func TestSnapshotRestore(t *testing.T) {
	s1, dir1 := openTestStore(t)
	f1 := NewFSM(s1, filepath.Dir(dir1), slog.Default(), func(err error) { t.Error(err) })
	var logs []*raft.Log
	for i := range 50 {
		logs = append(logs, &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand,
			Data: ingest(t, "a1", uint64(i+1), 1, events("demo", fmt.Sprint("s", i%5), fmt.Sprint("e", i)))})
	}
	f1.ApplyBatch(logs)
	snap, err := f1.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()

	s2, dir2 := openTestStore(t)
	f2 := NewFSM(s2, filepath.Dir(dir2), slog.Default(), func(err error) { t.Error(err) })
	f2.ApplyBatch([]*raft.Log{{Index: 1, Type: raft.LogCommand, Data: ingest(t, "zz", 1, 1, events("other", "x", "y"))}})
	if err := f2.Restore(ioNopCloser{&sink}); err != nil {
		t.Fatal(err)
	}
	wantStats(t, s2, "demo", 50, 5)
	wantStats(t, s2, "other", 0, 0)
	if idx, _ := s2.AppliedIndex(); idx != 50 {
		t.Fatalf("applied index after restore = %d, want 50", idx)
	}
	evs, err := s2.SessionEvents("demo", "s0")
	if err != nil || len(evs) != 10 {
		t.Fatalf("session s0 after restore: %d events, err %v", len(evs), err)
	}
	// The restored state keeps deduping.
	res := f2.ApplyBatch([]*raft.Log{{Index: 51, Type: raft.LogCommand, Data: ingest(t, "a1", 3, 1, events("demo", "s0", "new"))}})
	if r := res[0].(IngestResult); !r.Duplicate {
		t.Fatalf("re-sent batch after restore = %+v, want duplicate", r)
	}
}

type ioNopCloser struct{ *memSink }

func (ioNopCloser) Close() error { return nil }

// TestCommandsSurviveAppendedFields: an entry written by a newer node with
// an extra field, and one by an older node with fewer, both still apply.
func TestCommandsSurviveAppendedFields(t *testing.T) {
	s, _ := openTestStore(t)
	a := &applier{t: t, p: NewProcessor(s)}
	// Site as a 4-element array (a future field appended) ...
	newer := []byte{byte(CmdPutSite), 0x94, 0xa1, 'd', 0x90, 0x01, 0xa3, 'n', 'e', 'w'}
	// ... and as a 2-element array (created time not yet known).
	older := []byte{byte(CmdPutSite), 0x92, 0xa1, 'e', 0x90}
	for _, r := range a.apply(newer, older) {
		if err, ok := r.(error); ok {
			t.Fatalf("apply: %v", err)
		}
	}
	for _, id := range []string{"d", "e"} {
		if _, err := s.Site(id); err != nil {
			t.Fatalf("site %s: %v", id, err)
		}
	}
}

// FuzzApplyCommand feeds arbitrary log entries to the processor: it must
// answer with a result or an error, never panic, and keep its state usable.
func FuzzApplyCommand(f *testing.F) {
	f.Add(ingest(f, "a1", 1, 1, events("demo", "s1", "e1")))
	site, _ := EncodeCommand(CmdPutSite, &Site{ID: "demo", Origins: []string{"http://x"}})
	f.Add(site)
	tok, _ := EncodeCommand(CmdCreateToken, &Token{Hash: "h", Role: RoleAdmin})
	f.Add(tok)
	f.Add([]byte{byte(CmdIngest), 0x96, 0xa1, 'a', 0x01, 0x01, 0x01, 0x01, 0xc4, 0x00})
	f.Add([]byte{byte(CmdIgnorable | 9)})
	s, err := OpenStore(filepath.Join(f.TempDir(), "state"), nil)
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	p := NewProcessor(s)
	var index uint64
	f.Fuzz(func(t *testing.T, entry []byte) {
		index++
		_, _ = p.Apply([]Entry{{Index: index, Data: entry}})
		if _, err := s.Stats("demo"); err != nil {
			t.Fatalf("store unusable after entry %x: %v", entry, err)
		}
	})
}

// TestFailedApplyIsSticky: after an entry fails, later entries are refused
// too, so the applied index never moves past a lost entry.
func TestFailedApplyIsSticky(t *testing.T) {
	s, _ := openTestStore(t)
	p := NewProcessor(s)
	if _, err := p.Apply([]Entry{{Index: 1, Data: []byte{0x11}}}); err == nil {
		t.Fatal("unknown command applied")
	}
	if _, err := p.Apply([]Entry{{Index: 2, Data: ingest(t, "a1", 1, 1, events("demo", "s", "e"))}}); err == nil {
		t.Fatal("an entry after a failed one was applied")
	}
	if idx, _ := s.AppliedIndex(); idx != 0 {
		t.Fatalf("applied index = %d after a failure, want 0", idx)
	}
}

// TestNonCommandEntriesAdvanceIndex: configuration entries carry no command
// but the applied index still covers them.
func TestNonCommandEntriesAdvanceIndex(t *testing.T) {
	s, _ := openTestStore(t)
	f := NewFSM(s, t.TempDir(), slog.Default(), func(err error) { t.Error(err) })
	f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration},
		{Index: 2, Type: raft.LogCommand, Data: ingest(t, "a1", 1, 1, events("demo", "s", "e"))},
		{Index: 3, Type: raft.LogNoop},
	})
	if idx, _ := s.AppliedIndex(); idx != 3 {
		t.Fatalf("applied index = %d, want 3", idx)
	}
	wantStats(t, s, "demo", 1, 1)
}
