package aggregator

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/sightline/sightline/wire"
)

// Entry is one committed Raft entry as the processor sees it; Data is nil
// for entries that carry no command.
type Entry struct {
	Index uint64
	Data  []byte
}

// IngestResult answers a CmdIngest.
type IngestResult struct {
	Duplicate bool   // the (agent, seq) was applied before
	Rejected  string // non-empty: the batch cannot be applied, and why
	Applied   int    // events stored
	DupEvents int    // events skipped as already stored (by id)
	Invalid   int    // events skipped as malformed
}

// SessionRec is the per-session summary kept on apply.
type SessionRec struct {
	_msgpack struct{} `msgpack:",as_array"`

	First  int64  `msgpack:"first"`
	Last   int64  `msgpack:"last"`
	Events uint64 `msgpack:"events"`
	User   string `msgpack:"user"`
}

// Processor applies committed commands to the Store. It is deterministic:
// the outcome depends only on the state and the entries, never on clocks,
// randomness or I/O beyond the store. Tests drive it without Raft.
type Processor struct {
	store *Store
	// failed is the first error Apply returned. Raft may go on handing us
	// entries until the node stops; none of them may be written after a
	// failed one, or the applied index would skip past the lost entries.
	failed error
}

// NewProcessor returns a processor writing to store.
func NewProcessor(store *Store) *Processor { return &Processor{store: store} }

// Apply applies entries in order in one synced Pebble commit and returns one
// response per entry. Entries at or below the stored applied index were
// applied before a restart and are skipped. An error means the state could
// not be written; the caller must stop the node.
func (p *Processor) Apply(entries []Entry) ([]any, error) {
	if p.failed != nil {
		return nil, p.failed
	}
	res, err := p.apply(entries)
	if err != nil {
		p.failed = err
	}
	return res, err
}

func (p *Processor) apply(entries []Entry) ([]any, error) {
	out := make([]any, len(entries))
	var cfgChanged bool
	err := p.store.withDB(func(db *pebble.DB) error {
		applied, err := get(db, keyApplied)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		tx := newApplyTx(db)
		defer tx.b.Close()
		last := u64(applied)
		for i, e := range entries {
			if e.Index <= last {
				out[i] = IngestResult{Duplicate: true}
				continue
			}
			if e.Data == nil {
				// A Raft entry that is not a command (configuration, no-op):
				// nothing to apply, but the applied index covers it, so a
				// restart can tell whether a newer snapshot is needed.
				last = e.Index
				continue
			}
			r, changed, err := tx.apply(e)
			if err != nil {
				return fmt.Errorf("aggregator: applying entry %d: %w", e.Index, err)
			}
			out[i] = r
			cfgChanged = cfgChanged || changed
			last = e.Index
		}
		if err := tx.flush(); err != nil {
			return err
		}
		if err := tx.b.Set(keyApplied, u64bytes(last), nil); err != nil {
			return err
		}
		return tx.b.Commit(pebble.Sync)
	})
	if err != nil {
		return nil, err
	}
	if cfgChanged {
		if err := p.store.reloadConfig(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// applyTx gathers the writes of one Apply call. Counters and session
// summaries are kept in maps and written once at the end; the markers of
// this call are kept in maps too, so that later entries of the same call see
// earlier ones.
type applyTx struct {
	db       *pebble.DB
	b        *pebble.Batch
	counters map[string]uint64 // counter key → new value
	sessions map[string]*SessionRec
	marks    map[string]bool // markers set in this call
	lows     map[string]uint64
}

func newApplyTx(db *pebble.DB) *applyTx {
	return &applyTx{
		db:       db,
		b:        db.NewBatch(),
		counters: map[string]uint64{},
		sessions: map[string]*SessionRec{},
		marks:    map[string]bool{},
		lows:     map[string]uint64{},
	}
}

func (tx *applyTx) apply(e Entry) (any, bool, error) {
	t, body, err := DecodeCommand(e.Data)
	if err != nil {
		return nil, false, err
	}
	switch t {
	case CmdIngest:
		var c IngestCmd
		if err := wire.Unmarshal(body, &c); err != nil {
			return IngestResult{Rejected: "undecodable ingest command: " + err.Error()}, false, nil
		}
		r, err := tx.ingest(&c)
		return r, false, err
	case CmdPutSite:
		var s Site
		if err := wire.Unmarshal(body, &s); err != nil {
			return fmt.Errorf("undecodable site: %w", err), false, nil
		}
		v, _ := msgpack.Marshal(&s)
		if err := tx.b.Set(key(famSite, s.ID), v, nil); err != nil {
			return nil, false, err
		}
		return nil, true, tx.b.Set(keyCfgVer, u64bytes(e.Index), nil)
	case CmdCreateToken:
		var tok Token
		if err := wire.Unmarshal(body, &tok); err != nil {
			return fmt.Errorf("undecodable token: %w", err), false, nil
		}
		v, _ := msgpack.Marshal(&tok)
		return nil, false, tx.b.Set(key(famToken, tok.Hash), v, nil)
	}
	if t&CmdIgnorable != 0 {
		return nil, false, nil
	}
	return nil, false, fmt.Errorf("%w %d", ErrUnknownCommand, t)
}

func (tx *applyTx) has(k []byte) (bool, error) {
	if tx.marks[string(k)] {
		return true, nil
	}
	_, err := get(tx.db, k)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (tx *applyTx) mark(k []byte) error {
	tx.marks[string(k)] = true
	return tx.b.Set(k, nil, nil)
}

func (tx *applyTx) agentLow(agent string) (uint64, error) {
	if v, ok := tx.lows[agent]; ok {
		return v, nil
	}
	v, err := get(tx.db, key(famAgentLow, agent))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	tx.lows[agent] = u64(v)
	return u64(v), nil
}

func (tx *applyTx) ingest(c *IngestCmd) (IngestResult, error) {
	var r IngestResult
	if c.AgentID == "" || strings.IndexByte(c.AgentID, 0) >= 0 {
		r.Rejected = "agent id is empty or contains NUL"
		return r, nil
	}
	low, err := tx.agentLow(c.AgentID)
	if err != nil {
		return r, err
	}
	bk := agentBatchKey(c.AgentID, c.Seq)
	if c.Seq < low {
		r.Duplicate = true
		return r, nil
	}
	if dup, err := tx.has(bk); err != nil || dup {
		r.Duplicate = dup
		return r, err
	}
	events, err := wire.DecodeEvents(c.Codec, c.Payload)
	if err != nil {
		r.Rejected = err.Error()
		return r, nil
	}
	for i := range events {
		ev := &events[i]
		if !validStored(ev) {
			r.Invalid++
			continue
		}
		idk := key(famEventID, ev.Site, ev.ID)
		dup, err := tx.has(idk)
		if err != nil {
			return r, err
		}
		if dup {
			r.DupEvents++
			continue
		}
		if err := tx.mark(idk); err != nil {
			return r, err
		}
		v, err := msgpack.Marshal(ev)
		if err != nil {
			return r, err
		}
		if err := tx.b.Set(eventKey(ev.Site, ev.Session, ev.TS, ev.ID), v, nil); err != nil {
			return r, err
		}
		if err := tx.touchSession(ev); err != nil {
			return r, err
		}
		if err := tx.add(ev.Site, counterEvent, 1); err != nil {
			return r, err
		}
		r.Applied++
	}
	if err := tx.mark(bk); err != nil {
		return r, err
	}
	// Every sequence below the agent's low-water mark has been acked and
	// will never be resent, so its markers can go.
	if c.Low > low {
		from := agentBatchKey(c.AgentID, low)
		to := agentBatchKey(c.AgentID, c.Low)
		if err := tx.b.DeleteRange(from, to, nil); err != nil {
			return r, err
		}
		for k := range tx.marks {
			if k >= string(from) && k < string(to) {
				delete(tx.marks, k)
			}
		}
		tx.lows[c.AgentID] = c.Low
		if err := tx.b.Set(key(famAgentLow, c.AgentID), u64bytes(c.Low), nil); err != nil {
			return r, err
		}
	}
	return r, nil
}

// validStored rejects what would break the key layout; the agent validates
// everything else before an event is accepted.
func validStored(ev *wire.Event) bool {
	return ev.Site != "" && ev.Session != "" && ev.ID != "" &&
		strings.IndexByte(ev.Site, 0) < 0 && strings.IndexByte(ev.Session, 0) < 0
}

func (tx *applyTx) touchSession(ev *wire.Event) error {
	k := string(key(famSession, ev.Site, ev.Session))
	rec, ok := tx.sessions[k]
	if !ok {
		v, err := get(tx.db, []byte(k))
		switch {
		case errors.Is(err, ErrNotFound):
			rec = &SessionRec{First: ev.TS, Last: ev.TS}
			if err := tx.add(ev.Site, counterSess, 1); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			rec = &SessionRec{}
			if err := wire.Unmarshal(v, rec); err != nil {
				return err
			}
		}
		tx.sessions[k] = rec
	}
	rec.Events++
	rec.First = min(rec.First, ev.TS)
	rec.Last = max(rec.Last, ev.TS)
	if ev.User != "" {
		rec.User = ev.User
	}
	return nil
}

func (tx *applyTx) add(site, name string, n uint64) error {
	k := string(key(famCounter, site, name))
	v, ok := tx.counters[k]
	if !ok {
		cur, err := get(tx.db, []byte(k))
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		v = u64(cur)
	}
	tx.counters[k] = v + n
	return nil
}

func (tx *applyTx) flush() error {
	for k, v := range tx.counters {
		if err := tx.b.Set([]byte(k), u64bytes(v), nil); err != nil {
			return err
		}
	}
	for k, rec := range tx.sessions {
		v, err := msgpack.Marshal(rec)
		if err != nil {
			return err
		}
		if err := tx.b.Set([]byte(k), v, nil); err != nil {
			return err
		}
	}
	return nil
}
