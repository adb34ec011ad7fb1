package aggregator

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/sightline/sightline/cluster"
	"github.com/sightline/sightline/wire"
)

// Store errors.
var (
	// ErrNotFound means the requested record does not exist.
	ErrNotFound = errors.New("not found")
)

// Store is the FSM's Pebble state. Apply is its only writer (through the
// processor); readers share it under mu. Restore swaps the whole database,
// so it is the only holder of the write lock.
type Store struct {
	dir string
	fs  vfs.FS // nil: the operating system's
	log pebble.Logger

	mu sync.RWMutex
	db *pebble.DB

	cfgMu sync.Mutex
	cfg   *wire.Config  // cached agent config, rebuilt on change
	cfgCh chan struct{} // closed and replaced when cfg changes
}

// OpenStore opens (or creates) the state in dir; Pebble's own messages go
// to logger (nil: slog.Default()).
func OpenStore(dir string, logger *slog.Logger) (*Store, error) { return openStore(dir, nil, logger) }

// openStore opens the state on fs; crash tests pass a crashable in-memory
// file system.
func openStore(dir string, fs vfs.FS, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.Default()
	}
	plog := cluster.PebbleLogger(logger.With("component", "state"))
	if fs == nil {
		if err := finishRestore(dir); err != nil {
			return nil, err
		}
	}
	db, err := openPebble(dir, fs, plog)
	if err != nil {
		return nil, err
	}
	s := &Store{dir: dir, fs: fs, log: plog, db: db, cfgCh: make(chan struct{})}
	if err := s.reloadConfig(); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

func openPebble(dir string, fs vfs.FS, log pebble.Logger) (*pebble.DB, error) {
	opts := &pebble.Options{Logger: log, FS: fs, CacheSize: 64 << 20}
	// Apply looks up a marker per event id and per batch, and nearly every
	// lookup misses; bloom filters answer those misses without reading
	// blocks from every level.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("aggregator: opening state in %s: %w", dir, err)
	}
	return db, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.db == nil {
		return nil
	}
	err := s.db.Close()
	s.db = nil
	return err
}

// Restore replaces the whole state with the checkpoint read from r. It runs
// on the FSM goroutine, so no apply races it; readers wait on the lock.
func (s *Store) Restore(r io.Reader, restore func(io.Reader, string) error) error {
	tmp := s.dir + ".restore"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := restore(r, tmp); err != nil {
		return fmt.Errorf("aggregator: restoring snapshot: %w", err)
	}
	s.mu.Lock()
	if s.db != nil {
		if err := s.db.Close(); err != nil {
			s.mu.Unlock()
			return err
		}
		s.db = nil
	}
	old := s.dir + ".old"
	_ = os.RemoveAll(old)
	if err := os.Rename(s.dir, old); err != nil && !os.IsNotExist(err) {
		s.mu.Unlock()
		return err
	}
	if err := os.Rename(tmp, s.dir); err != nil {
		s.mu.Unlock()
		return err
	}
	syncDir(filepath.Dir(s.dir))
	db, err := openPebble(s.dir, s.fs, s.log)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	s.db = db
	s.mu.Unlock()
	_ = os.RemoveAll(old)
	return s.reloadConfig()
}

// finishRestore completes or rolls back a Restore that a crash interrupted.
// Restore writes the new state completely into dir.restore, then renames
// dir to dir.old and dir.restore to dir; with dir missing, one of the two
// renames did not happen. Whatever state this leaves, raft restores the
// newest snapshot on start when the state is behind it.
func finishRestore(dir string) error {
	restore, old := dir+".restore", dir+".old"
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		switch {
		case exists(restore):
			if err := os.Rename(restore, dir); err != nil {
				return fmt.Errorf("aggregator: finishing an interrupted restore: %w", err)
			}
		case exists(old):
			if err := os.Rename(old, dir); err != nil {
				return fmt.Errorf("aggregator: rolling back an interrupted restore: %w", err)
			}
		}
		syncDir(filepath.Dir(dir))
	}
	if err := os.RemoveAll(restore); err != nil {
		return err
	}
	return os.RemoveAll(old)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func syncDir(dir string) {
	if f, err := os.Open(dir); err == nil {
		_ = f.Sync()
		f.Close()
	}
}

// withDB runs fn with the current database under the read lock.
func (s *Store) withDB(fn func(db *pebble.DB) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.db == nil {
		return pebble.ErrClosed
	}
	return fn(s.db)
}

func get(r pebble.Reader, k []byte) ([]byte, error) {
	v, c, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), v...)
	c.Close()
	return out, nil
}

func (s *Store) getU64(k []byte) (uint64, error) {
	var n uint64
	err := s.withDB(func(db *pebble.DB) error {
		v, err := get(db, k)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		n = u64(v)
		return err
	})
	return n, err
}

// AppliedIndex is the Raft index of the last entry the state reflects.
func (s *Store) AppliedIndex() (uint64, error) { return s.getU64(keyApplied) }

// Stats are the committed counts of one site.
type Stats struct {
	Site     string `json:"site"`
	Events   uint64 `json:"events"`
	Sessions uint64 `json:"sessions"`
}

// Stats reads the committed counters of a site.
func (s *Store) Stats(site string) (Stats, error) {
	st := Stats{Site: site}
	var err error
	if st.Events, err = s.getU64(key(famCounter, site, counterEvent)); err != nil {
		return st, err
	}
	st.Sessions, err = s.getU64(key(famCounter, site, counterSess))
	return st, err
}

// Site reads one site.
func (s *Store) Site(id string) (Site, error) {
	var site Site
	err := s.withDB(func(db *pebble.DB) error {
		v, err := get(db, key(famSite, id))
		if err != nil {
			return err
		}
		return wire.Unmarshal(v, &site)
	})
	return site, err
}

// Sites lists every site in id order.
func (s *Store) Sites() ([]Site, error) {
	var out []Site
	err := s.scan([]byte{famSite}, func(_, v []byte) error {
		var site Site
		if err := wire.Unmarshal(v, &site); err != nil {
			return err
		}
		out = append(out, site)
		return nil
	})
	return out, err
}

// TokenByHash finds a token by the hex SHA-256 of its secret.
func (s *Store) TokenByHash(hash string) (Token, error) {
	var t Token
	err := s.withDB(func(db *pebble.DB) error {
		v, err := get(db, key(famToken, hash))
		if err != nil {
			return err
		}
		return wire.Unmarshal(v, &t)
	})
	return t, err
}

// TokenCount counts stored tokens.
func (s *Store) TokenCount() (int, error) {
	n := 0
	err := s.scan([]byte{famToken}, func(_, _ []byte) error { n++; return nil })
	return n, err
}

// SessionEvents returns the stored events of one session in time order.
func (s *Store) SessionEvents(site, session string) ([]wire.Event, error) {
	p := key(famEvent, site, session)
	p = append(p, 0)
	var out []wire.Event
	err := s.scan(p, func(_, v []byte) error {
		var ev wire.Event
		if err := wire.Unmarshal(v, &ev); err != nil {
			return err
		}
		out = append(out, ev)
		return nil
	})
	return out, err
}

// scan calls fn for every key with the prefix, in order.
func (s *Store) scan(prefix []byte, fn func(k, v []byte) error) error {
	return s.withDB(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
		if err != nil {
			return err
		}
		for it.First(); it.Valid(); it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				it.Close()
				return err
			}
			if err := fn(it.Key(), v); err != nil {
				it.Close()
				return err
			}
		}
		return it.Close()
	})
}

// AgentConfig returns the current agent configuration and a channel that is
// closed when it next changes (for long polls).
func (s *Store) AgentConfig() (*wire.Config, <-chan struct{}) {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	return s.cfg, s.cfgCh
}

// reloadConfig rebuilds the cached agent configuration from the state and
// wakes long polls.
func (s *Store) reloadConfig() error {
	sites, err := s.Sites()
	if err != nil {
		return err
	}
	ver, err := s.getU64(keyCfgVer)
	if err != nil {
		return err
	}
	cfg := &wire.Config{Version: ver}
	for _, site := range sites {
		cfg.Sites = append(cfg.Sites, wire.Site{ID: site.ID, Origins: site.Origins})
	}
	s.cfgMu.Lock()
	s.cfg = cfg
	close(s.cfgCh)
	s.cfgCh = make(chan struct{})
	s.cfgMu.Unlock()
	return nil
}

type pebbleDB = pebble.DB
