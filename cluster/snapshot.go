package cluster

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

var (
	// ErrBadCheckpoint means a snapshot stream is not a checkpoint tar this
	// package would write: a bad header, an unsafe path, a link or special
	// file, or more data than the restore limits allow.
	ErrBadCheckpoint = errors.New("cluster: bad checkpoint stream")

	// ErrRestoreDirNotEmpty means RestoreCheckpoint was pointed at a
	// directory that already holds files.
	ErrRestoreDirNotEmpty = errors.New("cluster: restore directory is not empty")
)

// restoreLimits bound what one snapshot stream may unpack to; a peer (or a
// corrupt file) must not be able to fill the disk or the inode table. Tests
// lower them.
var restoreLimits = struct {
	bytes   int64
	entries int
}{bytes: 1 << 40, entries: 1 << 20}

// tarModTime is written for every entry so the stream of one checkpoint is
// byte-for-byte reproducible.
var tarModTime = time.Unix(0, 0).UTC()

// CheckpointSnapshot checkpoints db into a fresh directory under scratchDir
// and returns an FSMSnapshot that streams it as tar. Call it from
// FSM.Snapshot: the checkpoint is taken (hard links, WAL synced first) at the
// FSM's current applied index, and Persist may then run concurrently with
// further Apply calls. Release deletes the checkpoint.
func CheckpointSnapshot(db *pebble.DB, scratchDir string) (raft.FSMSnapshot, error) {
	if err := os.MkdirAll(scratchDir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster: checkpoint: %w", err)
	}
	root, err := os.MkdirTemp(scratchDir, "checkpoint-")
	if err != nil {
		return nil, fmt.Errorf("cluster: checkpoint: %w", err)
	}
	dir := filepath.Join(root, "db")
	// WithFlushedWAL syncs the WAL first, so writes the FSM committed
	// without Sync are in the checkpoint too.
	if err := db.Checkpoint(dir, pebble.WithFlushedWAL()); err != nil {
		_ = os.RemoveAll(root)
		return nil, fmt.Errorf("cluster: checkpoint: %w", err)
	}
	return &checkpointSnapshot{root: root, dir: dir}, nil
}

type checkpointSnapshot struct {
	root string // the temp dir Release removes
	dir  string // the checkpoint inside it
}

// Persist writes the checkpoint to sink as a tar stream.
func (s *checkpointSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := writeCheckpointTar(sink, s.dir); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("cluster: persist checkpoint: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("cluster: persist checkpoint: %w", err)
	}
	return nil
}

// Release removes the checkpoint directory.
func (s *checkpointSnapshot) Release() { _ = os.RemoveAll(s.root) }

// writeCheckpointTar writes dir's directories and regular files in lexical
// order with slash-separated relative names.
func writeCheckpointTar(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		name := filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: 0o755, ModTime: tarModTime})
		case d.Type().IsRegular():
			return writeTarFile(tw, p, name)
		default:
			return fmt.Errorf("%s: not a regular file or directory", p)
		}
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func writeTarFile(tw *tar.Writer, p, name string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: st.Size(), Mode: 0o644, ModTime: tarModTime}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// RestoreCheckpoint unpacks a stream written by a CheckpointSnapshot into
// dir, which must be missing or empty; the caller then opens Pebble on it.
// Only regular files and directories with clean relative names are
// accepted, and everything is written through an os.Root on dir, so nothing
// lands outside it. Files are synced. On error dir is left empty.
func RestoreCheckpoint(r io.Reader, dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("cluster: restore checkpoint: %w", err)
		}
	case err != nil:
		return fmt.Errorf("cluster: restore checkpoint: %w", err)
	case len(entries) > 0:
		return fmt.Errorf("cluster: restore checkpoint into %s: %w", dir, ErrRestoreDirNotEmpty)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("cluster: restore checkpoint: %w", err)
	}
	err = extractCheckpoint(r, root)
	if err == nil {
		err = syncDirs(root)
	}
	_ = root.Close()
	if err != nil {
		emptyDir(dir)
		return fmt.Errorf("cluster: restore checkpoint into %s: %w", dir, err)
	}
	return nil
}

func extractCheckpoint(r io.Reader, root *os.Root) error {
	tr := tar.NewReader(r)
	var total int64
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if n == 0 {
				return fmt.Errorf("%w: empty stream", ErrBadCheckpoint)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadCheckpoint, err)
		}
		if n >= restoreLimits.entries {
			return fmt.Errorf("%w: more than %d entries", ErrBadCheckpoint, restoreLimits.entries)
		}
		name, err := checkpointEntryName(hdr)
		if err != nil {
			return err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if hdr.Size < 0 || hdr.Size > restoreLimits.bytes-total {
				return fmt.Errorf("%w: more than %d bytes", ErrBadCheckpoint, restoreLimits.bytes)
			}
			total += hdr.Size
			if err := restoreFile(root, name, tr, hdr.Size); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: %q has type %q; only regular files and directories are allowed", ErrBadCheckpoint, hdr.Name, hdr.Typeflag)
		}
	}
}

// checkpointEntryName returns hdr's name if it is a clean, relative,
// slash-separated path that stays below the root.
func checkpointEntryName(hdr *tar.Header) (string, error) {
	name := hdr.Name
	if hdr.Typeflag == tar.TypeDir && len(name) > 1 && name[len(name)-1] == '/' {
		name = name[:len(name)-1]
	}
	if name == "" || name == "." || path.Clean(name) != name || !filepath.IsLocal(name) || path.IsAbs(name) {
		return "", fmt.Errorf("%w: unsafe path %q", ErrBadCheckpoint, hdr.Name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '\\' || name[i] == 0 {
			return "", fmt.Errorf("%w: unsafe path %q", ErrBadCheckpoint, hdr.Name)
		}
	}
	return name, nil
}

func restoreFile(root *os.Root, name string, r io.Reader, size int64) error {
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// O_EXCL refuses a second entry for the same name.
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadCheckpoint, err)
	}
	n, err := io.Copy(f, r)
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("%w: %s: %w", ErrBadCheckpoint, name, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// syncDirs fsyncs every directory under root so the new entries survive a
// crash.
func syncDirs(root *os.Root) error {
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// emptyDir removes what a failed restore left in dir (which was empty).
func emptyDir(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}
