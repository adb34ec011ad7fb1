package cluster

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// memSink is a raft.SnapshotSink that keeps the stream in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
	failAfter         int // fail writes once this many bytes are in; 0 = never
}

func (s *memSink) ID() string { return "mem" }

func (s *memSink) Write(p []byte) (int, error) {
	if s.failAfter > 0 && s.Len()+len(p) > s.failAfter {
		return 0, errors.New("sink full")
	}
	return s.Buffer.Write(p)
}

func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func openPebble(t testing.TB, dir string) *pebble.DB {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{l: slog.New(slog.DiscardHandler)}})
	if err != nil {
		t.Fatalf("open pebble %s: %v", dir, err)
	}
	return db
}

func readAll(t testing.TB, db *pebble.DB) map[string]string {
	t.Helper()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = it.Close() }()
	out := map[string]string{}
	for ok := it.First(); ok; ok = it.Next() {
		out[string(it.Key())] = string(it.Value())
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestCheckpointSnapshotRoundTrip(t *testing.T) {
	src := openPebble(t, filepath.Join(t.TempDir(), "src"))
	defer func() { _ = src.Close() }()
	const n = 5000
	want := map[string]string{}
	// Half flushed to an sstable, half only in the memtable and the WAL
	// (written without Sync), so both paths into the checkpoint are covered.
	for i := range n {
		k, v := fmt.Sprintf("key-%06d", i), fmt.Sprintf("value-%d-%s", i, bytes.Repeat([]byte("v"), i%64))
		want[k] = v
		if err := src.Set([]byte(k), []byte(v), pebble.NoSync); err != nil {
			t.Fatal(err)
		}
		if i == n/2 {
			if err := src.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}

	scratch := filepath.Join(t.TempDir(), "scratch")
	snap, err := CheckpointSnapshot(src, scratch)
	if err != nil {
		t.Fatal(err)
	}
	// Writes after the checkpoint must not leak into it.
	if err := src.Set([]byte("late"), []byte("x"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v, want closed only", sink.closed, sink.cancelled)
	}
	snap.Release()
	if entries, err := os.ReadDir(scratch); err != nil || len(entries) != 0 {
		t.Fatalf("scratch after Release: %v %v, want empty", entries, err)
	}

	dst := filepath.Join(t.TempDir(), "restored")
	if err := RestoreCheckpoint(bytes.NewReader(sink.Bytes()), dst); err != nil {
		t.Fatal(err)
	}
	db := openPebble(t, dst)
	defer func() { _ = db.Close() }()
	got := readAll(t, db)
	if len(got) != len(want) {
		t.Fatalf("restored %d keys, want %d", len(got), len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Fatalf("key %s = %q, want %q", k, got[k], v)
		}
	}
}

func TestCheckpointPersistFailureCancelsSink(t *testing.T) {
	src := openPebble(t, filepath.Join(t.TempDir(), "src"))
	defer func() { _ = src.Close() }()
	if err := src.Set([]byte("k"), bytes.Repeat([]byte("v"), 1<<16), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	snap, err := CheckpointSnapshot(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{failAfter: 1024}
	if err := snap.Persist(sink); err == nil {
		t.Fatal("Persist into a failing sink succeeded")
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("sink closed=%v cancelled=%v, want cancelled only", sink.closed, sink.cancelled)
	}
}

type tarEntry struct {
	name     string
	typ      byte
	body     string
	linkname string
}

func makeTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body)), Linkname: e.linkname}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRestoreCheckpointRefuses(t *testing.T) {
	cases := []struct {
		name    string
		stream  []byte
		wantErr error
	}{
		{"parent traversal", makeTar(t, tarEntry{name: "../evil", typ: tar.TypeReg, body: "x"}), ErrBadCheckpoint},
		{"nested traversal", makeTar(t, tarEntry{name: "a/../../evil", typ: tar.TypeReg, body: "x"}), ErrBadCheckpoint},
		{"absolute path", makeTar(t, tarEntry{name: "/tmp/evil", typ: tar.TypeReg, body: "x"}), ErrBadCheckpoint},
		{"unclean path", makeTar(t, tarEntry{name: "a//b", typ: tar.TypeReg, body: "x"}), ErrBadCheckpoint},
		{"symlink", makeTar(t, tarEntry{name: "link", typ: tar.TypeSymlink, linkname: "/etc/passwd"}), ErrBadCheckpoint},
		{"hard link", makeTar(t, tarEntry{name: "link", typ: tar.TypeLink, linkname: "../x"}), ErrBadCheckpoint},
		{"device", makeTar(t, tarEntry{name: "dev", typ: tar.TypeChar}), ErrBadCheckpoint},
		{"fifo", makeTar(t, tarEntry{name: "fifo", typ: tar.TypeFifo}), ErrBadCheckpoint},
		{"duplicate file", makeTar(t, tarEntry{name: "a", typ: tar.TypeReg, body: "1"}, tarEntry{name: "a", typ: tar.TypeReg, body: "2"}), ErrBadCheckpoint},
		{"empty stream", nil, ErrBadCheckpoint},
		{"garbage", bytes.Repeat([]byte{0xab}, 2048), ErrBadCheckpoint},
		{"truncated file", makeTar(t, tarEntry{name: "a", typ: tar.TypeReg, body: "hello world"})[:512+4], ErrBadCheckpoint},
		{"good entry then traversal", makeTar(t,
			tarEntry{name: "ok/", typ: tar.TypeDir},
			tarEntry{name: "ok/file", typ: tar.TypeReg, body: "fine"},
			tarEntry{name: "ok/../../evil", typ: tar.TypeReg, body: "x"}), ErrBadCheckpoint},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			parent := t.TempDir()
			dir := filepath.Join(parent, "restore")
			err := RestoreCheckpoint(bytes.NewReader(tc.stream), dir)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("RestoreCheckpoint = %v, want %v", err, tc.wantErr)
			}
			assertOnlyDir(t, parent, "restore")
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("failed restore left %d entries in dir", len(entries))
			}
		})
	}
}

func TestRestoreCheckpointDirMustBeEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "existing"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	stream := makeTar(t, tarEntry{name: "a", typ: tar.TypeReg, body: "x"})
	if err := RestoreCheckpoint(bytes.NewReader(stream), dir); !errors.Is(err, ErrRestoreDirNotEmpty) {
		t.Fatalf("RestoreCheckpoint = %v, want ErrRestoreDirNotEmpty", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "existing")); err != nil || string(b) != "keep" {
		t.Fatalf("existing file touched: %q %v", b, err)
	}
	// An existing empty directory is fine.
	empty := t.TempDir()
	if err := RestoreCheckpoint(bytes.NewReader(stream), empty); err != nil {
		t.Fatal(err)
	}
}

func TestRestoreCheckpointSizeLimits(t *testing.T) {
	saved := restoreLimits
	t.Cleanup(func() { restoreLimits = saved })
	restoreLimits.bytes, restoreLimits.entries = 10, 3

	cases := []struct {
		name    string
		entries []tarEntry
		ok      bool
	}{
		{"at the byte limit", []tarEntry{{name: "a", typ: tar.TypeReg, body: "12345"}, {name: "b", typ: tar.TypeReg, body: "67890"}}, true},
		{"over the byte limit", []tarEntry{{name: "a", typ: tar.TypeReg, body: "12345"}, {name: "b", typ: tar.TypeReg, body: "678901"}}, false},
		{"over the entry limit", []tarEntry{{name: "a/", typ: tar.TypeDir}, {name: "b/", typ: tar.TypeDir}, {name: "c/", typ: tar.TypeDir}, {name: "d/", typ: tar.TypeDir}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := RestoreCheckpoint(bytes.NewReader(makeTar(t, tc.entries...)), filepath.Join(t.TempDir(), "r"))
			if tc.ok && err != nil {
				t.Fatalf("RestoreCheckpoint = %v, want success", err)
			}
			if !tc.ok && !errors.Is(err, ErrBadCheckpoint) {
				t.Fatalf("RestoreCheckpoint = %v, want ErrBadCheckpoint", err)
			}
		})
	}
}

// assertOnlyDir fails unless parent holds nothing but the named entry (or
// nothing at all), which is how a test sees that nothing escaped.
func assertOnlyDir(t testing.TB, parent, name string) {
	t.Helper()
	entries, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != name {
			t.Fatalf("restore wrote %q outside its directory", e.Name())
		}
	}
}

// FuzzRestoreCheckpoint feeds arbitrary streams to RestoreCheckpoint: no
// panic, nothing outside the target dir, nothing but files and dirs inside.
func FuzzRestoreCheckpoint(f *testing.F) {
	f.Add(makeTar(f, tarEntry{name: "000001.log", typ: tar.TypeReg, body: "wal"}, tarEntry{name: "sub/", typ: tar.TypeDir}, tarEntry{name: "sub/x", typ: tar.TypeReg, body: "y"}))
	f.Add(makeTar(f, tarEntry{name: "../evil", typ: tar.TypeReg, body: "x"}))
	f.Add(makeTar(f, tarEntry{name: "l", typ: tar.TypeSymlink, linkname: ".."}))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, stream []byte) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "restore")
		err := RestoreCheckpoint(bytes.NewReader(stream), dir)
		assertOnlyDir(t, parent, "restore")
		werr := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && !d.Type().IsRegular() {
				return fmt.Errorf("%s has mode %s", p, d.Type())
			}
			return nil
		})
		if werr != nil && !errors.Is(werr, fs.ErrNotExist) {
			t.Fatal(werr)
		}
		if err != nil {
			entries, _ := os.ReadDir(dir)
			if len(entries) != 0 {
				t.Fatalf("failed restore (%v) left %d entries", err, len(entries))
			}
		}
	})
}
