package wire

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
