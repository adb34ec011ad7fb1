package wire

import "github.com/vmihailenco/msgpack/v5"

// Event is one captured user interaction as it travels from agent to
// aggregator. The agent builds it from the collect payload after validation
// (and, later, censoring); the aggregator stores it as-is.
//
// Props and RRWeb hold the original JSON bytes so that playback returns the
// rrweb events exactly as the recorder emitted them (after censoring).
type Event struct {
	_msgpack struct{} `msgpack:",as_array"`

	Site    string `msgpack:"site"`
	Session string `msgpack:"session"`
	User    string `msgpack:"user"`
	ID      string `msgpack:"id"`
	Type    string `msgpack:"type"`
	TS      int64  `msgpack:"ts"`   // client time, Unix milliseconds
	Recv    int64  `msgpack:"recv"` // agent receive time, Unix milliseconds
	URL     string `msgpack:"url"`
	Target  Target `msgpack:"target"`
	Value   string `msgpack:"value"`
	Name    string `msgpack:"name"`
	Props   []byte `msgpack:"props"` // JSON object or nil
	RRWeb   []byte `msgpack:"rrweb"` // JSON object or nil
}

// Target describes the element an event happened on.
type Target struct {
	_msgpack struct{} `msgpack:",as_array"`

	Sel  string   `msgpack:"sel"`
	Tag  string   `msgpack:"tag"`
	ID   string   `msgpack:"id"`
	Cls  []string `msgpack:"cls"`
	Text string   `msgpack:"text"`
}

// Event types accepted in the collect payload.
const (
	TypeClick    = "click"
	TypePageview = "pageview"
	TypeInput    = "input"
	TypeKeypress = "keypress"
	TypeSubmit   = "submit"
	TypeSelect   = "select"
	TypeCustom   = "custom"
	TypeIdentify = "identify"
	TypeRRWeb    = "rrweb"
)

// KnownType reports whether t is one of the event types above.
func KnownType(t string) bool {
	switch t {
	case TypeClick, TypePageview, TypeInput, TypeKeypress, TypeSubmit, TypeSelect,
		TypeCustom, TypeIdentify, TypeRRWeb:
		return true
	}
	return false
}

// EncodeMsgpack writes an Event exactly as the reflection encoder does (an
// array of its fields in order, compact integers, nil slices as nil), only
// faster: the agent encodes every accepted event and the aggregator every
// stored one. The golden tests pin the bytes; a field appended to Event must
// be appended here too. The pointer receiver saves a copy per event; msgpack
// then needs an addressable Event (a pointer, or an element of a slice),
// which Marshal arranges for a bare value.
func (ev *Event) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeArrayLen(13); err != nil {
		return err
	}
	for _, s := range [...]string{ev.Site, ev.Session, ev.User, ev.ID, ev.Type} {
		if err := e.EncodeString(s); err != nil {
			return err
		}
	}
	if err := e.EncodeInt(ev.TS); err != nil {
		return err
	}
	if err := e.EncodeInt(ev.Recv); err != nil {
		return err
	}
	if err := e.EncodeString(ev.URL); err != nil {
		return err
	}
	if err := ev.Target.EncodeMsgpack(e); err != nil {
		return err
	}
	if err := e.EncodeString(ev.Value); err != nil {
		return err
	}
	if err := e.EncodeString(ev.Name); err != nil {
		return err
	}
	if err := e.EncodeBytes(ev.Props); err != nil {
		return err
	}
	return e.EncodeBytes(ev.RRWeb)
}

// EncodeMsgpack writes a Target as the reflection encoder does.
func (t *Target) EncodeMsgpack(e *msgpack.Encoder) error {
	if err := e.EncodeArrayLen(5); err != nil {
		return err
	}
	if err := e.EncodeString(t.Sel); err != nil {
		return err
	}
	if err := e.EncodeString(t.Tag); err != nil {
		return err
	}
	if err := e.EncodeString(t.ID); err != nil {
		return err
	}
	if t.Cls == nil {
		if err := e.EncodeNil(); err != nil {
			return err
		}
	} else {
		if err := e.EncodeArrayLen(len(t.Cls)); err != nil {
			return err
		}
		for _, c := range t.Cls {
			if err := e.EncodeString(c); err != nil {
				return err
			}
		}
	}
	return e.EncodeString(t.Text)
}
