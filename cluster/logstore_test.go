package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// testLogger buffers log output and shows it only if the test fails.
func testLogger(t testing.TB) (*slog.Logger, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("captured log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo})), buf
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func openStore(t testing.TB, dir string) *LogStore {
	t.Helper()
	l, _ := testLogger(t)
	s, err := OpenLogStore(dir, l)
	if err != nil {
		t.Fatalf("OpenLogStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// sampleLog makes entry i with fields that vary from entry to entry.
func sampleLog(i uint64) *raft.Log {
	l := &raft.Log{Index: i, Term: 1 + i/4, Type: raft.LogType(i % 6)}
	if i%3 != 0 {
		l.Data = bytes.Repeat([]byte{byte(i)}, int(i%50)+1)
	}
	if i%2 == 0 {
		l.Extensions = []byte(fmt.Sprintf("ext-%d", i))
	}
	if i%5 != 0 {
		l.AppendedAt = time.Date(2025, 1, 2, 3, 4, 5, int(i)*1000+7, time.UTC)
	}
	return l
}

func sampleLogs(from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, sampleLog(i))
	}
	return out
}

func assertLog(t testing.TB, s *LogStore, want *raft.Log) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(want.Index, &got); err != nil {
		t.Fatalf("GetLog(%d): %v", want.Index, err)
	}
	if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
		!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
		!got.AppendedAt.Equal(want.AppendedAt) || (want.Data == nil) != (got.Data == nil) {
		t.Fatalf("GetLog(%d) = %+v, want %+v", want.Index, got, *want)
	}
}

func assertBounds(t testing.TB, s *LogStore, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if f != first || l != last {
		t.Fatalf("bounds = %d..%d, want %d..%d", f, l, first, last)
	}
}

func assertMissing(t testing.TB, s *LogStore, idx uint64) {
	t.Helper()
	var l raft.Log
	// raft compares with ==, so the sentinel must come back unwrapped.
	if err := s.GetLog(idx, &l); err != raft.ErrLogNotFound { //nolint:errorlint // raft's contract is ==
		t.Fatalf("GetLog(%d) = %v, want raft.ErrLogNotFound", idx, err)
	}
}

func TestLogStoreContract(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	assertBounds(t, s, 0, 0)
	assertMissing(t, s, 1)

	if err := s.StoreLog(sampleLog(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(sampleLogs(2, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.StoreLogs(nil); err != nil {
		t.Fatalf("StoreLogs(nil): %v", err)
	}
	assertBounds(t, s, 1, 10)
	for i := uint64(1); i <= 10; i++ {
		assertLog(t, s, sampleLog(i))
	}
	assertMissing(t, s, 11)

	// Overwriting a conflicting suffix, as a follower does.
	replaced := sampleLog(10)
	replaced.Term = 99
	if err := s.StoreLog(replaced); err != nil {
		t.Fatal(err)
	}
	assertLog(t, s, replaced)

	steps := []struct {
		name        string
		min, max    uint64
		first, last uint64
		gone        []uint64
	}{
		{"prefix compaction", 1, 3, 4, 10, []uint64{1, 2, 3}},
		{"conflicting suffix", 8, 10, 4, 7, []uint64{8, 9, 10}},
		{"empty range is a no-op", 6, 5, 4, 7, nil},
	}
	for _, st := range steps {
		if err := s.DeleteRange(st.min, st.max); err != nil {
			t.Fatalf("%s: DeleteRange(%d, %d): %v", st.name, st.min, st.max, err)
		}
		assertBounds(t, s, st.first, st.last)
		for _, g := range st.gone {
			assertMissing(t, s, g)
		}
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	assertBounds(t, s, 4, 7)
	for i := uint64(4); i <= 7; i++ {
		assertLog(t, s, sampleLog(i))
	}

	// Delete everything (raft does this after installing a snapshot on a
	// monotonic store), then continue past the snapshot.
	if err := s.DeleteRange(0, math.MaxUint64); err != nil {
		t.Fatal(err)
	}
	assertBounds(t, s, 0, 0)
	if err := s.StoreLogs(sampleLogs(100, 104)); err != nil {
		t.Fatal(err)
	}
	assertBounds(t, s, 100, 104)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir)
	assertBounds(t, s, 100, 104)
	assertLog(t, s, sampleLog(102))
	if !s.IsMonotonic() {
		t.Fatal("IsMonotonic = false")
	}
}

func TestStableStore(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if v, err := s.Get([]byte("missing")); err != nil || len(v) != 0 {
		t.Fatalf("Get(missing) = %q, %v; want empty, nil", v, err)
	}
	if v, err := s.GetUint64([]byte("missing")); err != nil || v != 0 {
		t.Fatalf("GetUint64(missing) = %d, %v; want 0, nil", v, err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 41); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	// Stable keys and log keys live in separate families.
	if err := s.StoreLog(sampleLog(1)); err != nil {
		t.Fatal(err)
	}
	check := func(s *LogStore) {
		t.Helper()
		if v, err := s.Get([]byte("LastVoteCand")); err != nil || string(v) != "node1" {
			t.Fatalf("Get = %q, %v", v, err)
		}
		if v, err := s.Get([]byte("empty")); err != nil || len(v) != 0 {
			t.Fatalf("Get(empty) = %q, %v", v, err)
		}
		if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 42 {
			t.Fatalf("GetUint64 = %d, %v", v, err)
		}
		if _, err := s.GetUint64([]byte("LastVoteCand")); !errors.Is(err, ErrCorruptLog) {
			t.Fatalf("GetUint64 of a 5-byte value = %v, want ErrCorruptLog", err)
		}
		assertBounds(t, s, 1, 1)
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	check(openStore(t, dir))
}

func TestLogStoreClosed(t *testing.T) {
	s := openStore(t, t.TempDir())
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	var l raft.Log
	for name, err := range map[string]error{
		"GetLog":      s.GetLog(1, &l),
		"StoreLog":    s.StoreLog(sampleLog(1)),
		"DeleteRange": s.DeleteRange(1, 2),
		"Set":         s.Set([]byte("k"), []byte("v")),
		"SetUint64":   s.SetUint64([]byte("k"), 1),
	} {
		if !errors.Is(err, ErrStoreClosed) {
			t.Errorf("%s after Close = %v, want ErrStoreClosed", name, err)
		}
	}
	if _, err := s.Get([]byte("k")); !errors.Is(err, ErrStoreClosed) {
		t.Errorf("Get after Close = %v, want ErrStoreClosed", err)
	}
}

// rewriteValues edits stored values behind the store's back, the way a bad
// disk or a torn write would. The store in dir must be closed.
func rewriteValues(t testing.TB, dir string, edits map[string]func([]byte) []byte) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{l: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	b := db.NewBatch()
	defer func() { _ = b.Close() }()
	for key, edit := range edits {
		v, closer, err := db.Get([]byte(key))
		if err != nil {
			t.Fatalf("get %x: %v", key, err)
		}
		nv := edit(append([]byte(nil), v...))
		_ = closer.Close()
		if err := b.Set([]byte(key), nv, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

func flipLastByte(v []byte) []byte { v[len(v)-1] ^= 0xff; return v }
func truncate(v []byte) []byte     { return v[:2] }

// wrongIndex re-encodes the value as a valid entry for another index.
func wrongIndex(v []byte) []byte {
	var l raft.Log
	if err := decodeLogValue(v, &l); err != nil {
		panic(err)
	}
	l.Index++
	return appendLogValue(nil, &l)
}

func TestLogStoreCorruptEntry(t *testing.T) {
	cases := []struct {
		name string
		edit func([]byte) []byte
	}{
		{"flipped byte", flipLastByte},
		{"shorter than checksum", truncate},
		{"valid checksum, wrong index", wrongIndex},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir)
			if err := s.StoreLogs(sampleLogs(1, 10)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			rewriteValues(t, dir, map[string]func([]byte) []byte{string(logKey(5)): tc.edit})

			// A bad entry in the middle is not a torn tail: open keeps
			// everything and reading it is a hard error.
			s = openStore(t, dir)
			assertBounds(t, s, 1, 10)
			var l raft.Log
			if err := s.GetLog(5, &l); !errors.Is(err, ErrCorruptLog) {
				t.Fatalf("GetLog(5) = %v, want ErrCorruptLog", err)
			}
			assertLog(t, s, sampleLog(4))
			assertLog(t, s, sampleLog(6))
		})
	}
}

func TestStableStoreCorruptValue(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	if err := s.SetUint64([]byte("CurrentTerm"), 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rewriteValues(t, dir, map[string]func([]byte) []byte{string(stableKey([]byte("CurrentTerm"))): flipLastByte})
	s = openStore(t, dir)
	if _, err := s.GetUint64([]byte("CurrentTerm")); !errors.Is(err, ErrCorruptLog) {
		t.Fatalf("GetUint64 = %v, want ErrCorruptLog", err)
	}
}

func TestLogStoreTornTail(t *testing.T) {
	cases := []struct {
		name        string
		stored      uint64   // entries 1..stored
		corrupt     []uint64 // entries to damage
		first, last uint64   // bounds after reopen
		stillBad    []uint64 // corrupt entries that survive (not in the tail)
	}{
		{"last entry", 10, []uint64{10}, 1, 9, nil},
		{"last three", 10, []uint64{8, 9, 10}, 1, 7, nil},
		{"middle and tail", 10, []uint64{5, 9, 10}, 1, 8, []uint64{5}},
		{"every entry", 3, []uint64{1, 2, 3}, 0, 0, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir)
			if err := s.StoreLogs(sampleLogs(1, tc.stored)); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			edits := map[string]func([]byte) []byte{}
			for _, i := range tc.corrupt {
				edits[string(logKey(i))] = flipLastByte
			}
			rewriteValues(t, dir, edits)

			logger, buf := testLogger(t)
			s, err := OpenLogStore(dir, logger)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			t.Cleanup(func() { _ = s.Close() })
			assertBounds(t, s, tc.first, tc.last)
			if !strings.Contains(buf.String(), "level=WARN") || !strings.Contains(buf.String(), "torn") {
				t.Fatalf("no warning about the torn tail in log:\n%s", buf.String())
			}
			for i := tc.last + 1; i <= tc.stored; i++ {
				assertMissing(t, s, i)
			}
			for _, i := range tc.stillBad {
				var l raft.Log
				if err := s.GetLog(i, &l); !errors.Is(err, ErrCorruptLog) {
					t.Fatalf("GetLog(%d) = %v, want ErrCorruptLog", i, err)
				}
			}
			// The log continues where the good part ended.
			if err := s.StoreLogs(sampleLogs(tc.last+1, tc.stored)); err != nil {
				t.Fatal(err)
			}
			if tc.first == 0 {
				assertBounds(t, s, 1, tc.stored)
			} else {
				assertBounds(t, s, tc.first, tc.stored)
			}
			assertLog(t, s, sampleLog(tc.stored))
		})
	}
}

func TestLogStoreCorruptionBeyondTornTail(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir)
	n := uint64(maxTornTail + 2)
	if err := s.StoreLogs(sampleLogs(1, n)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	edits := map[string]func([]byte) []byte{}
	for i := uint64(2); i <= n; i++ {
		edits[string(logKey(i))] = flipLastByte
	}
	rewriteValues(t, dir, edits)
	logger, _ := testLogger(t)
	if s, err := OpenLogStore(dir, logger); !errors.Is(err, ErrCorruptLog) {
		if err == nil {
			_ = s.Close()
		}
		t.Fatalf("OpenLogStore = %v, want ErrCorruptLog", err)
	}
}

func TestLogValueRoundTrip(t *testing.T) {
	cases := []*raft.Log{
		{},
		{Index: math.MaxUint64, Term: math.MaxUint64, Type: raft.LogConfiguration},
		{Index: 1, Data: []byte{}, Extensions: []byte{}}, // empty decodes as nil
		{Index: 2, AppendedAt: time.Unix(-62135596800, 999999999)},
		sampleLog(7),
	}
	for _, want := range cases {
		var got raft.Log
		if err := decodeLogValue(appendLogValue(nil, want), &got); err != nil {
			t.Fatalf("decode(%+v): %v", want, err)
		}
		if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
			!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
			!got.AppendedAt.Equal(want.AppendedAt) {
			t.Fatalf("round trip = %+v, want %+v", got, *want)
		}
	}
}

// FuzzDecodeLogValue feeds arbitrary stored values to the decoder: it must
// never panic, and whatever it accepts must survive a re-encode.
func FuzzDecodeLogValue(f *testing.F) {
	for i := uint64(0); i < 8; i++ {
		f.Add(appendLogValue(nil, sampleLog(i)))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, val []byte) {
		var l raft.Log
		if err := decodeLogValue(append([]byte(nil), val...), &l); err != nil {
			if !errors.Is(err, ErrCorruptLog) {
				t.Fatalf("error %v does not wrap ErrCorruptLog", err)
			}
			return
		}
		var again raft.Log
		if err := decodeLogValue(appendLogValue(nil, &l), &again); err != nil {
			t.Fatalf("re-encode of accepted value fails: %v", err)
		}
		if again.Index != l.Index || again.Term != l.Term || !bytes.Equal(again.Data, l.Data) || !again.AppendedAt.Equal(l.AppendedAt) {
			t.Fatalf("re-encode changed the entry: %+v vs %+v", again, l)
		}
	})
}

// BenchmarkStoreLogs stores 1,000 entries of ~500 bytes per synced call.
func BenchmarkStoreLogs(b *testing.B) {
	s := openStore(b, b.TempDir())
	const perCall = 1000
	data := bytes.Repeat([]byte("x"), 500)
	logs := make([]*raft.Log, perCall)
	for i := range logs {
		logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data, AppendedAt: time.Now()}
	}
	b.SetBytes(perCall * int64(len(data)))
	b.ReportAllocs()
	next := uint64(1)
	for b.Loop() {
		for _, l := range logs {
			l.Index = next
			next++
		}
		if err := s.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "logs/s")
}
