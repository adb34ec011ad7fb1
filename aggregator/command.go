package aggregator

import (
	"errors"
	"fmt"

	"github.com/sightline/sightline/wire"
)

// CmdType numbers are part of the Raft log format: written out, never reused.
// The high bit marks a command that older nodes may skip when they do not
// know it; any other unknown command stops the node rather than diverging.
type CmdType uint8

const (
	CmdIngest      CmdType = 1 // a batch of events from one agent
	CmdPutSite     CmdType = 2 // create or replace a site
	CmdCreateToken CmdType = 3 // add an API token (hashed)

	// CmdIgnorable is OR-ed into a type that older nodes may skip.
	CmdIgnorable CmdType = 0x80
)

// Command errors.
var (
	// ErrEmptyCommand means a log entry had no type byte.
	ErrEmptyCommand = errors.New("aggregator: empty command")
	// ErrUnknownCommand means a log entry carries a type this node does not
	// know and that is not marked ignorable.
	ErrUnknownCommand = errors.New("aggregator: unknown command type")
)

// IngestCmd is the Raft form of a wire batch: the payload stays compressed
// in the log and is decoded on apply.
type IngestCmd struct {
	_msgpack struct{} `msgpack:",as_array"`

	AgentID string `msgpack:"agent"`
	Seq     uint64 `msgpack:"seq"`
	Low     uint64 `msgpack:"low"`
	Count   uint32 `msgpack:"count"`
	Codec   uint8  `msgpack:"codec"`
	Payload []byte `msgpack:"payload"`
}

// Site is a tracked web site and the page origins allowed to send for it.
type Site struct {
	_msgpack struct{} `msgpack:",as_array"`

	ID      string   `msgpack:"id" json:"id"`
	Origins []string `msgpack:"origins" json:"origins"`
	Created int64    `msgpack:"created" json:"created"` // Unix ms, set by the proposer
}

// Token is an API token as stored: only its SHA-256 hash is kept.
type Token struct {
	_msgpack struct{} `msgpack:",as_array"`

	Hash    string `msgpack:"hash" json:"-"`
	Name    string `msgpack:"name" json:"name"`
	Role    string `msgpack:"role" json:"role"`
	Created int64  `msgpack:"created" json:"created"`
}

// Roles for API tokens.
const (
	RoleAdmin   = "admin"
	RoleAnalyst = "analyst"
	RoleViewer  = "viewer"
)

// Log entries and stored records outlive the code that wrote them: a field
// appended later must not make older entries undecodable, nor newer ones
// unreadable to an older node.
func init() {
	wire.RegisterArrayStructs(IngestCmd{}, Site{}, Token{}, SessionRec{})
}

// EncodeCommand builds a log entry: one type byte followed by the msgpack body.
func EncodeCommand(t CmdType, body any) ([]byte, error) {
	b, err := wire.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("aggregator: encoding command %d: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// DecodeCommand splits a log entry into its type and body.
func DecodeCommand(entry []byte) (CmdType, []byte, error) {
	if len(entry) == 0 {
		return 0, nil, ErrEmptyCommand
	}
	return CmdType(entry[0]), entry[1:], nil
}
