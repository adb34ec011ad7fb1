package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/vmihailenco/msgpack/v5"
)

// MsgType numbers are part of the format: written out, never reused.
type MsgType uint8

const (
	MsgBatch         MsgType = 2 // agent → aggregator: one batch of events
	MsgAck           MsgType = 3 // aggregator → agent: answer to a batch
	MsgConfigRequest MsgType = 4 // agent → aggregator: long-poll for config
	MsgConfig        MsgType = 5 // aggregator → agent: sites and settings
	MsgError         MsgType = 6 // either way: the request was refused
)

func (t MsgType) String() string {
	switch t {
	case MsgBatch:
		return "batch"
	case MsgAck:
		return "ack"
	case MsgConfigRequest:
		return "config-request"
	case MsgConfig:
		return "config"
	case MsgError:
		return "error"
	}
	return fmt.Sprintf("msgtype(%d)", uint8(t))
}

// Payload codecs for Batch.Payload.
const (
	CodecZstdMsgpack uint8 = 1 // zstd of a msgpack array of Event
)

// Batch carries events from one agent. (AgentID, Seq) identifies it for
// exactly-once: the aggregator applies a given pair at most once. Low is the
// agent's smallest unacknowledged sequence when it sent the batch; every
// sequence below Low has been acked and will never be sent again, so the
// aggregator may forget them.
type Batch struct {
	_msgpack struct{} `msgpack:",as_array"`

	AgentID string `msgpack:"agent"`
	Seq     uint64 `msgpack:"seq"`
	Low     uint64 `msgpack:"low"`
	Count   uint32 `msgpack:"count"`
	Codec   uint8  `msgpack:"codec"`
	Payload []byte `msgpack:"payload"`
}

// Ack statuses.
const (
	AckOK          uint8 = 0 // committed by Raft (now or earlier)
	AckNotLeader   uint8 = 1 // retry at Leader, if given
	AckRejected    uint8 = 2 // permanent: the batch itself is invalid
	AckUnavailable uint8 = 3 // retryable: the cluster cannot commit now
)

// Ack answers one Batch.
type Ack struct {
	_msgpack struct{} `msgpack:",as_array"`

	Seq     uint64 `msgpack:"seq"`
	Status  uint8  `msgpack:"status"`
	Leader  string `msgpack:"leader"` // wire address of the leader, when known
	Message string `msgpack:"message"`
}

// ConfigRequest asks for the agent configuration. The server answers at once
// when its version differs from Version, otherwise it waits up to WaitMillis
// for a change (long poll), so changes reach agents within moments.
type ConfigRequest struct {
	_msgpack struct{} `msgpack:",as_array"`

	AgentID    string `msgpack:"agent"`
	Version    uint64 `msgpack:"version"`
	WaitMillis uint32 `msgpack:"wait"`
}

// Config is what agents need to know from the cluster.
type Config struct {
	_msgpack struct{} `msgpack:",as_array"`

	Version uint64 `msgpack:"version"`
	Sites   []Site `msgpack:"sites"`
}

// Site is one tracked web site and the page origins allowed to send for it.
type Site struct {
	_msgpack struct{} `msgpack:",as_array"`

	ID      string   `msgpack:"id"`
	Origins []string `msgpack:"origins"`
}

// Error is a refusal with a stable code and a human message.
type Error struct {
	_msgpack struct{} `msgpack:",as_array"`

	Code    string `msgpack:"code"`
	Message string `msgpack:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Marshal encodes a message body.
func Marshal(v any) ([]byte, error) {
	// Event and Target encode through pointer methods; a bare value would
	// not be addressable to msgpack.
	switch x := v.(type) {
	case Event:
		v = &x
	case Target:
		v = &x
	}
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	// Compact ints: timestamps and sequence numbers take the smallest
	// msgpack form, which is most of the per-event byte budget.
	enc.UseCompactInts(true)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes a message body into v and refuses trailing bytes. The
// body is checked for sane structure first (see checkMsgpack), so hostile
// input cannot make the decoder allocate far beyond its own size.
func Unmarshal(body []byte, v any) error {
	if err := checkMsgpack(body); err != nil {
		return fmt.Errorf("wire: decoding %T: %w", v, err)
	}
	r := bytes.NewReader(body)
	dec := msgpack.NewDecoder(r)
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("wire: decoding %T: %w", v, err)
	}
	if r.Len() != 0 {
		return fmt.Errorf("wire: decoding %T: %d trailing bytes", v, r.Len())
	}
	return nil
}

// MaxBatchEvents and MaxPayloadDecoded bound what one batch may expand to.
const (
	MaxBatchEvents    = 100_000
	MaxPayloadDecoded = 64 << 20
)

var (
	// The fastest level: batches are many near-identical events, which even
	// it shrinks about sixfold, and the agent's CPU is the scarcer resource.
	// A batch is at most a few hundred kilobytes of msgpack, so a 1 MiB
	// window loses nothing and keeps the agent's footprint small.
	zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1<<20), zstd.WithLowerEncoderMem(true))
	zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxPayloadDecoded))
)

// ErrBadPayload means a batch payload could not be decoded.
var ErrBadPayload = errors.New("wire: bad batch payload")

// EncodeEvents builds a CodecZstdMsgpack payload.
func EncodeEvents(events []Event) ([]byte, error) {
	raw, err := Marshal(events)
	if err != nil {
		return nil, err
	}
	return zenc.EncodeAll(raw, make([]byte, 0, len(raw)/4)), nil
}

// SplitEventArray reads the array header of a msgpack-encoded []Event (as
// Marshal writes it) and returns the element count and the bytes of the
// elements, so that stored arrays can be joined without decoding them.
func SplitEventArray(b []byte) (int, []byte, error) {
	r := bytes.NewReader(b)
	n, err := msgpack.NewDecoder(r).DecodeArrayLen()
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	if n < 0 {
		return 0, nil, fmt.Errorf("%w: nil event array", ErrBadPayload)
	}
	return n, b[len(b)-r.Len():], nil
}

// EncodeEventElements builds a CodecZstdMsgpack payload from n encoded
// events laid end to end (the element bytes SplitEventArray returns).
func EncodeEventElements(n int, elements []byte) []byte {
	raw := make([]byte, 0, 5+len(elements))
	switch {
	case n < 16:
		raw = append(raw, 0x90|byte(n))
	case n <= 0xffff:
		raw = append(raw, 0xdc, byte(n>>8), byte(n))
	default:
		raw = append(raw, 0xdd, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	raw = append(raw, elements...)
	return zenc.EncodeAll(raw, make([]byte, 0, len(raw)/4))
}

// DecodeEvents reverses EncodeEvents.
func DecodeEvents(codec uint8, payload []byte) ([]Event, error) {
	if codec != CodecZstdMsgpack {
		return nil, fmt.Errorf("%w: unknown codec %d", ErrBadPayload, codec)
	}
	raw, err := zdec.DecodeAll(payload, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", ErrBadPayload, err)
	}
	if err := checkMsgpack(raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPayload, err)
	}
	r := bytes.NewReader(raw)
	dec := msgpack.NewDecoder(r)
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	if n < 0 || n > MaxBatchEvents {
		return nil, fmt.Errorf("%w: %d events, limit %d", ErrBadPayload, n, MaxBatchEvents)
	}
	events := make([]Event, n)
	for i := range events {
		if err := dec.Decode(&events[i]); err != nil {
			return nil, fmt.Errorf("%w: event %d: %v", ErrBadPayload, i, err)
		}
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadPayload, r.Len())
	}
	return events, nil
}

// ReadMessage reads one frame and decodes its body into v, which must match
// the frame's type. A MsgError frame is returned as *Error.
func ReadMessage(r io.Reader, want MsgType, v any) error {
	t, body, err := ReadFrame(r)
	if err != nil {
		return err
	}
	if t == MsgError && want != MsgError {
		var e Error
		if err := Unmarshal(body, &e); err != nil {
			return err
		}
		return &e
	}
	if t != want {
		return fmt.Errorf("wire: got %v frame, want %v", t, want)
	}
	return Unmarshal(body, v)
}

// WriteMessage encodes v and writes it as one frame of type t.
func WriteMessage(w io.Writer, t MsgType, v any) error {
	body, err := Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, t, body)
}
