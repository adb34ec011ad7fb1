package aggregator

import "encoding/binary"

// Key families of the FSM's Pebble state, one prefix byte each. Site ids
// never contain 0x00 (they are validated), so it separates key parts.
//
//	'm' name                              meta: applied index, config version
//	'S' site                              Site
//	'T' sha256(token) hex                 Token
//	'A' agent                             agent low-water mark (u64)
//	'a' agent 0x00 seq(8)                 applied batch marker
//	'i' site 0x00 eventID                 applied event marker
//	'e' site 0x00 session 0x00 ts(8) id   wire.Event (msgpack)
//	's' site 0x00 session                 SessionRec
//	'c' site 0x00 counter                 u64 counter
const (
	famMeta       = 'm'
	famSite       = 'S'
	famToken      = 'T'
	famAgentLow   = 'A'
	famAgentBatch = 'a'
	famEventID    = 'i'
	famEvent      = 'e'
	famSession    = 's'
	famCounter    = 'c'
)

var (
	keyApplied   = []byte{famMeta, 'a', 'p', 'p', 'l', 'i', 'e', 'd'}
	keyCfgVer    = []byte{famMeta, 'c', 'f', 'g', 'v', 'e', 'r'}
	counterEvent = "events"
	counterSess  = "sessions"
)

func key(fam byte, parts ...string) []byte {
	n := 1
	for _, p := range parts {
		n += len(p) + 1
	}
	k := make([]byte, 0, n)
	k = append(k, fam)
	for i, p := range parts {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, p...)
	}
	return k
}

func agentBatchKey(agent string, seq uint64) []byte {
	k := key(famAgentBatch, agent)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func eventKey(site, session string, ts int64, id string) []byte {
	k := key(famEvent, site, session)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(ts))
	return append(k, id...)
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func u64bytes(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
