package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
)

var (
	// ErrCorruptLog means a stored raft log entry or stable value failed its
	// CRC32C or did not decode. It is never repaired silently except for a
	// torn tail found on open.
	ErrCorruptLog = errors.New("cluster: corrupt raft log entry")

	// ErrStoreClosed is returned by LogStore methods called after Close.
	ErrStoreClosed = errors.New("cluster: log store closed")
)

// Key families in the log store's Pebble. The byte values are on disk: never
// renumber them.
const (
	prefixLog    byte = 0x01 // + uint64 BE index → crc32c + encoded raft.Log
	prefixStable byte = 0x02 // + raw key → crc32c + raw value
)

// logFormatV1 is the first byte of every encoded raft.Log payload.
const logFormatV1 byte = 1

// flagAppendedAt marks a payload that carries a non-zero AppendedAt.
const flagAppendedAt byte = 1 << 0

// maxTornTail bounds how many trailing entries open may drop. One StoreLogs
// call writes at most MaxAppendEntries entries (raft caps that at 1024), so a
// longer run of bad entries is not a torn write but real corruption.
const maxTornTail = 1024

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// LogStore is a raft.LogStore, raft.StableStore and raft.MonotonicLogStore
// on one Pebble database. Every write is one batch committed with
// pebble.Sync, so an entry raft believes stored survives a crash.
type LogStore struct {
	db     *pebble.DB
	logger *slog.Logger

	// Lock order: wmu before mu. wmu serializes writers so that first and
	// last always describe what the last committed batch left; mu guards
	// closed against use of the DB after Close (Pebble panics on that).
	wmu    sync.Mutex
	mu     sync.RWMutex
	closed bool

	first atomic.Uint64
	last  atomic.Uint64
}

var (
	_ raft.LogStore          = (*LogStore)(nil)
	_ raft.StableStore       = (*LogStore)(nil)
	_ raft.MonotonicLogStore = (*LogStore)(nil)
)

// OpenLogStore opens (creating if needed) the Pebble log store in dir. A run
// of trailing entries that fail their checksum is a write torn by a crash
// and is truncated with a warning; nil logger means slog.Default().
func OpenLogStore(dir string, logger *slog.Logger) (*LogStore, error) {
	return openLogStore(dir, nil, logger)
}

// openLogStore opens the store on fs (nil: the operating system's); crash
// tests pass a crashable in-memory file system.
func openLogStore(dir string, fs vfs.FS, logger *slog.Logger) (*LogStore, error) {
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("component", "logstore")
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{l: logger}, FS: fs})
	if err != nil {
		return nil, fmt.Errorf("cluster: open log store %s: %w", dir, err)
	}
	s := &LogStore{db: db, logger: logger}
	if err := s.load(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("cluster: open log store %s: %w", dir, err)
	}
	return s, nil
}

// load finds the first and last index and drops a torn tail.
func (s *LogStore) load() error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLog}, UpperBound: []byte{prefixLog + 1}})
	if err != nil {
		return err
	}
	defer func() { _ = it.Close() }()
	if !it.First() {
		return it.Error()
	}
	first, err := indexFromKey(it.Key())
	if err != nil {
		return err
	}
	var (
		bad      []uint64 // trailing entries that fail, newest first
		lastGood uint64
		cause    error
	)
	for ok := it.Last(); ok; ok = it.Prev() {
		idx, err := indexFromKey(it.Key())
		if err != nil {
			return err
		}
		val, err := it.ValueAndErr()
		if err != nil {
			return err
		}
		var l raft.Log
		verr := decodeLogValue(append([]byte(nil), val...), &l)
		if verr == nil && l.Index != idx {
			verr = fmt.Errorf("%w: key index %d holds entry %d", ErrCorruptLog, idx, l.Index)
		}
		if verr == nil {
			lastGood = idx
			break
		}
		if len(bad) == maxTornTail {
			return fmt.Errorf("more than %d trailing log entries fail verification, not a torn write: %w", maxTornTail, verr)
		}
		bad = append(bad, idx)
		cause = verr
	}
	if err := it.Error(); err != nil {
		return err
	}
	if len(bad) > 0 {
		from, to := bad[len(bad)-1], bad[0]
		b := s.db.NewBatch()
		defer func() { _ = b.Close() }()
		if err := b.DeleteRange(logKey(from), []byte{prefixLog + 1}, nil); err != nil {
			return err
		}
		if err := b.Commit(pebble.Sync); err != nil {
			return fmt.Errorf("truncate torn tail: %w", err)
		}
		s.logger.Warn("truncated torn raft log tail", "entries", len(bad), "from", from, "to", to, "error", cause)
	}
	if lastGood == 0 {
		first = 0
	}
	s.first.Store(first)
	s.last.Store(lastGood)
	return nil
}

// FirstIndex returns the first index stored, 0 when empty.
func (s *LogStore) FirstIndex() (uint64, error) { return s.first.Load(), nil }

// LastIndex returns the last index stored, 0 when empty.
func (s *LogStore) LastIndex() (uint64, error) { return s.last.Load(), nil }

// IsMonotonic tells raft to delete the whole log after installing a
// snapshot instead of leaving a gap, so the store's range stays contiguous.
func (s *LogStore) IsMonotonic() bool { return true }

// GetLog reads the entry at index into l. It returns raft.ErrLogNotFound
// unwrapped (raft compares it with ==) and ErrCorruptLog on a bad checksum.
func (s *LogStore) GetLog(index uint64, l *raft.Log) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrStoreClosed
	}
	val, closer, err := s.db.Get(logKey(index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("cluster: get log %d: %w", index, err)
	}
	// Pebble's buffer is only valid until Close; raft keeps Data.
	owned := append([]byte(nil), val...)
	_ = closer.Close()
	if err := decodeLogValue(owned, l); err != nil {
		return fmt.Errorf("cluster: log %d: %w", index, err)
	}
	if l.Index != index {
		return fmt.Errorf("cluster: log %d: %w: holds entry %d", index, ErrCorruptLog, l.Index)
	}
	return nil
}

// StoreLog stores one entry.
func (s *LogStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs stores entries in one synced batch.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrStoreClosed
	}
	b := s.db.NewBatch()
	defer func() { _ = b.Close() }()
	var key [9]byte
	var buf []byte
	first, last := s.first.Load(), s.last.Load()
	for _, l := range logs {
		putLogKey(key[:], l.Index)
		buf = appendLogValue(buf[:0], l)
		// Batch.Set copies key and value, so buf is reused.
		if err := b.Set(key[:], buf, nil); err != nil {
			return fmt.Errorf("cluster: store log %d: %w", l.Index, err)
		}
		if first == 0 || l.Index < first {
			first = l.Index
		}
		if l.Index > last {
			last = l.Index
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cluster: store logs %d..%d: %w", logs[0].Index, logs[len(logs)-1].Index, err)
	}
	s.first.Store(first)
	s.last.Store(last)
	return nil
}

// DeleteRange deletes entries min..max inclusive in one synced batch.
func (s *LogStore) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrStoreClosed
	}
	end := []byte{prefixLog + 1}
	if max < math.MaxUint64 {
		end = logKey(max + 1)
	}
	b := s.db.NewBatch()
	defer func() { _ = b.Close() }()
	if err := b.DeleteRange(logKey(min), end, nil); err != nil {
		return fmt.Errorf("cluster: delete logs %d..%d: %w", min, max, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cluster: delete logs %d..%d: %w", min, max, err)
	}
	first, last := s.first.Load(), s.last.Load()
	if min > first && max < last {
		return nil // a hole; raft never makes one, and the bounds still hold
	}
	// Re-read the bounds rather than assume the range was contiguous.
	first, last, err := s.scanBounds()
	if err != nil {
		return fmt.Errorf("cluster: delete logs %d..%d: %w", min, max, err)
	}
	s.first.Store(first)
	s.last.Store(last)
	return nil
}

func (s *LogStore) scanBounds() (first, last uint64, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{prefixLog}, UpperBound: []byte{prefixLog + 1}})
	if err != nil {
		return 0, 0, err
	}
	defer func() { _ = it.Close() }()
	if it.First() {
		if first, err = indexFromKey(it.Key()); err != nil {
			return 0, 0, err
		}
	}
	if it.Last() {
		if last, err = indexFromKey(it.Key()); err != nil {
			return 0, 0, err
		}
	}
	return first, last, it.Error()
}

// Set stores a stable value in one synced batch.
func (s *LogStore) Set(key, val []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrStoreClosed
	}
	b := s.db.NewBatch()
	defer func() { _ = b.Close() }()
	v := make([]byte, 4, 4+len(val))
	binary.BigEndian.PutUint32(v, crc32.Checksum(val, crcTable))
	v = append(v, val...)
	if err := b.Set(stableKey(key), v, nil); err != nil {
		return fmt.Errorf("cluster: set %q: %w", key, err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cluster: set %q: %w", key, err)
	}
	return nil
}

// Get returns a stable value, or nil when the key was never set.
func (s *LogStore) Get(key []byte) ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrStoreClosed
	}
	val, closer, err := s.db.Get(stableKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: get %q: %w", key, err)
	}
	defer func() { _ = closer.Close() }()
	if len(val) < 4 || binary.BigEndian.Uint32(val) != crc32.Checksum(val[4:], crcTable) {
		return nil, fmt.Errorf("cluster: stable key %q: %w: checksum mismatch", key, ErrCorruptLog)
	}
	if len(val) == 4 {
		return nil, nil
	}
	return append([]byte(nil), val[4:]...), nil
}

// SetUint64 stores a stable uint64 (big-endian).
func (s *LogStore) SetUint64(key []byte, val uint64) error {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], val)
	return s.Set(key, b[:])
}

// GetUint64 returns a stable uint64, or 0 when the key was never set.
func (s *LogStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil || v == nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("cluster: stable key %q: %w: %d bytes, want 8", key, ErrCorruptLog, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Close closes the Pebble database; later calls return ErrStoreClosed.
func (s *LogStore) Close() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("cluster: close log store: %w", err)
	}
	return nil
}

func logKey(index uint64) []byte {
	k := make([]byte, 9)
	putLogKey(k, index)
	return k
}

func putLogKey(k []byte, index uint64) {
	k[0] = prefixLog
	binary.BigEndian.PutUint64(k[1:], index)
}

func indexFromKey(k []byte) (uint64, error) {
	if len(k) != 9 || k[0] != prefixLog {
		return 0, fmt.Errorf("%w: malformed log key %x", ErrCorruptLog, k)
	}
	return binary.BigEndian.Uint64(k[1:]), nil
}

func stableKey(key []byte) []byte {
	return append([]byte{prefixStable}, key...)
}

// appendLogValue appends crc32c(payload) + payload for l to dst. Payload:
// version byte, uvarint index, uvarint term, type byte, flags byte, uvarint
// len + data, uvarint len + extensions, and when flagged the AppendedAt as
// varint unix seconds + uvarint nanoseconds.
func appendLogValue(dst []byte, l *raft.Log) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = append(dst, logFormatV1)
	dst = binary.AppendUvarint(dst, l.Index)
	dst = binary.AppendUvarint(dst, l.Term)
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= flagAppendedAt
	}
	dst = append(dst, byte(l.Type), flags)
	dst = binary.AppendUvarint(dst, uint64(len(l.Data)))
	dst = append(dst, l.Data...)
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	if flags&flagAppendedAt != 0 {
		dst = binary.AppendVarint(dst, l.AppendedAt.Unix())
		dst = binary.AppendUvarint(dst, uint64(l.AppendedAt.Nanosecond()))
	}
	binary.BigEndian.PutUint32(dst[start:], crc32.Checksum(dst[start+4:], crcTable))
	return dst
}

// decodeLogValue checks the CRC of val and decodes it into l. Data and
// Extensions alias val, so the caller hands over a buffer it owns.
func decodeLogValue(val []byte, l *raft.Log) error {
	if len(val) < 4 {
		return fmt.Errorf("%w: %d bytes, shorter than the checksum", ErrCorruptLog, len(val))
	}
	p := val[4:]
	if binary.BigEndian.Uint32(val) != crc32.Checksum(p, crcTable) {
		return fmt.Errorf("%w: checksum mismatch", ErrCorruptLog)
	}
	d := decoder{b: p}
	if v := d.byte(); v != logFormatV1 && d.err == nil {
		return fmt.Errorf("%w: unknown format version %d", ErrCorruptLog, v)
	}
	index := d.uvarint()
	term := d.uvarint()
	typ := d.byte()
	flags := d.byte()
	data := d.bytes()
	ext := d.bytes()
	var at time.Time
	if flags&flagAppendedAt != 0 {
		sec := d.varint()
		nsec := d.uvarint()
		if d.err == nil && nsec >= uint64(time.Second) {
			d.err = fmt.Errorf("nanoseconds %d out of range", nsec)
		}
		at = time.Unix(sec, int64(nsec))
	}
	if d.err == nil && flags&^flagAppendedAt != 0 {
		d.err = fmt.Errorf("unknown flags %#x", flags)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("%w: %w", ErrCorruptLog, d.err)
	}
	*l = raft.Log{Index: index, Term: term, Type: raft.LogType(typ), Data: data, Extensions: ext, AppendedAt: at}
	return nil
}

// decoder reads a payload and remembers the first error.
type decoder struct {
	b   []byte
	err error
}

var errTruncated = errors.New("truncated payload")

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errTruncated
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errTruncated
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns a length-prefixed slice aliasing the payload; nil when empty
// so a round trip of a nil Data stays nil.
func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errTruncated
		return nil
	}
	if n == 0 {
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}
