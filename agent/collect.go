package agent

import (
	"bytes"
	"encoding/json"

	"errors"
	"fmt"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	"math"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sightline/sightline/wire"
	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// Limits on single fields of the collect body. Sizes are in characters.
const (
	maxSiteLen    = 128
	maxSessionLen = 128
	maxUserLen    = 256
	maxIDLen      = 128
	maxURLLen     = 4096 // bytes
	maxNesting    = 10000
)

// Error codes of the collect API; stable, clients and tests rely on them.
const (
	codeMalformed        = "malformed_body"
	codeInvalidField     = "invalid_field"
	codeMissingField     = "missing_field"
	codeTooManyEvents    = "too_many_events"
	codeUnsupportedType  = "unsupported_media_type"
	codeUnsupportedEnc   = "unsupported_encoding"
	codeTooLarge         = "body_too_large"
	codeUnknownSite      = "unknown_site"
	codeOriginNotAllowed = "origin_not_allowed"
	codeMethodNotAllowed = "method_not_allowed"
	codeNotReady         = "not_ready"
	codeQueueFull        = "queue_full"
	codeShuttingDown     = "shutting_down"
	codeNotFound         = "not_found"
	codeInternal         = "internal"
)

// apiError is an error answer: HTTP status, stable code, a message that says
// what to fix, and the field path it is about (e.g. "events[3].ts").
type apiError struct {
	Status  int
	Code    string
	Message string
	Field   string
}

func (e *apiError) Error() string {
	if e.Field == "" {
		return e.Code + ": " + e.Message
	}
	return e.Code + ": " + e.Field + ": " + e.Message
}

func badField(code, field, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// limits are the request-dependent bounds decoding checks.
type limits struct {
	maxEvents int
	maxAge    time.Duration
	maxSkew   time.Duration
	now       time.Time
}

// collectRequest is a decoded, validated collect body.
type collectRequest struct {
	Site    string
	Session string
	User    string
	Events  []wire.Event
}

// rawEvent is one event between decoding and validation.
type rawEvent struct {
	ID, Type, URL, Value, Name string
	TS                         int64
	Target                     wire.Target
	Props, RRWeb               []byte // compact JSON objects, nil when absent
}

// --- JSON ---------------------------------------------------------------

type jsonRequest struct {
	Site    string            `json:"site"`
	Session string            `json:"session"`
	User    string            `json:"user"`
	Events  []json.RawMessage `json:"events"`
}

type jsonEvent struct {
	ID     string          `json:"id"`
	Type   string          `json:"type"`
	TS     int64           `json:"ts"`
	URL    string          `json:"url"`
	Target *jsonTarget     `json:"target"`
	Value  string          `json:"value"`
	Name   string          `json:"name"`
	Props  json.RawMessage `json:"props"`
	RRWeb  json.RawMessage `json:"rrweb"`
}

type jsonTarget struct {
	Sel  string   `json:"sel"`
	Tag  string   `json:"tag"`
	ID   string   `json:"id"`
	Cls  []string `json:"cls"`
	Text string   `json:"text"`
}

// jsonRequestTyped decodes a whole body in one pass, the common case, with
// the faster json v2 decoder (go-json-experiment/json, the implementation
// that becomes encoding/json/v2). It is stricter (exact-case names, no
// duplicate names, valid UTF-8): what it refuses goes to the v1 path below,
// which either accepts it as before or names the field at fault.
type jsonRequestTyped struct {
	Site    string           `json:"site"`
	Session string           `json:"session"`
	User    string           `json:"user"`
	Events  []jsonEventTyped `json:"events"`
}

type jsonEventTyped struct {
	ID     string         `json:"id"`
	Type   string         `json:"type"`
	TS     int64          `json:"ts"`
	URL    string         `json:"url"`
	Target *jsonTarget    `json:"target"`
	Value  string         `json:"value"`
	Name   string         `json:"name"`
	Props  jsontext.Value `json:"props"`
	RRWeb  jsontext.Value `json:"rrweb"`
}

// decodeJSON decodes and validates a JSON collect body. A body decodes in
// one typed pass; only when that fails is it decoded again event by event,
// to name the field at fault.
func decodeJSON(body []byte, lim limits) (*collectRequest, *apiError) {
	var typed jsonRequestTyped
	if jsonv2.Unmarshal(body, &typed) == nil {
		if err := checkEnvelope(typed.Site, typed.Session, typed.User, len(typed.Events), lim); err != nil {
			return nil, err
		}
		raw := make([]rawEvent, len(typed.Events))
		for i := range typed.Events {
			te := &typed.Events[i]
			je := jsonEvent{ID: te.ID, Type: te.Type, TS: te.TS, URL: te.URL, Target: te.Target,
				Value: te.Value, Name: te.Name, Props: json.RawMessage(te.Props), RRWeb: json.RawMessage(te.RRWeb)}
			if err := fromJSONEvent(&raw[i], &je, i); err != nil {
				return nil, err
			}
		}
		return finish(typed.Site, typed.Session, typed.User, raw, lim)
	}
	return decodeJSONSlow(body, lim)
}

func fromJSONEvent(ev *rawEvent, je *jsonEvent, i int) *apiError {
	ev.ID, ev.Type, ev.TS, ev.URL, ev.Value, ev.Name = je.ID, je.Type, je.TS, je.URL, je.Value, je.Name
	if je.Target != nil {
		ev.Target = wire.Target{Sel: je.Target.Sel, Tag: je.Target.Tag, ID: je.Target.ID, Cls: je.Target.Cls, Text: je.Target.Text}
	}
	var err *apiError
	if len(je.Props) > 0 {
		if ev.Props, err = jsonObject(je.Props, "events["+strconv.Itoa(i)+"].props"); err != nil {
			return err
		}
	}
	if len(je.RRWeb) > 0 {
		if ev.RRWeb, err = jsonObject(je.RRWeb, "events["+strconv.Itoa(i)+"].rrweb"); err != nil {
			return err
		}
	}
	return nil
}

// decodeJSONSlow decodes event by event so that an error names its event.
func decodeJSONSlow(body []byte, lim limits) (*collectRequest, *apiError) {
	var req jsonRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, jsonError("", err)
	}
	if err := checkEnvelope(req.Site, req.Session, req.User, len(req.Events), lim); err != nil {
		return nil, err
	}
	raw := make([]rawEvent, len(req.Events))
	for i, m := range req.Events {
		prefix := "events[" + strconv.Itoa(i) + "]"
		var je jsonEvent
		if err := json.Unmarshal(m, &je); err != nil {
			return nil, jsonError(prefix, err)
		}
		if err := fromJSONEvent(&raw[i], &je, i); err != nil {
			return nil, err
		}
	}
	return finish(req.Site, req.Session, req.User, raw, lim)
}

// jsonObject returns the compact form of an optional JSON object.
func jsonObject(raw json.RawMessage, field string) ([]byte, *apiError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' {
		return nil, badField(codeInvalidField, field, "must be a JSON object")
	}
	// The decoder has already checked the syntax; without white space the
	// bytes are already compact.
	if !bytes.ContainsAny(raw, " \t\r\n") {
		return append([]byte(nil), raw...), nil
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := json.Compact(&buf, raw); err != nil {
		return nil, badField(codeMalformed, field, "invalid JSON: %v", err)
	}
	return buf.Bytes(), nil
}

// jsonError turns an encoding/json error into a message naming the field
// (prefix is the path of the value that was being decoded).
func jsonError(prefix string, err error) *apiError {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		where := "body"
		if prefix != "" {
			where = prefix
		}
		return badField(codeMalformed, prefix, "invalid JSON in %s at byte %d: %v", where, se.Offset, se.Error())
	case errors.As(err, &te):
		field := joinPath(prefix, te.Field)
		if field == "" {
			return badField(codeMalformed, "", "body must be a JSON object, got %s", te.Value)
		}
		return badField(codeInvalidField, field, "must be %s, got %s", describeType(te.Type), te.Value)
	}
	return badField(codeMalformed, prefix, "invalid JSON: %v", err)
}

func joinPath(prefix, field string) string {
	switch {
	case prefix == "":
		return field
	case field == "":
		return prefix
	}
	return prefix + "." + field
}

func describeType(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	switch t {
	case reflect.TypeFor[jsonEvent](), reflect.TypeFor[jsonTarget](), reflect.TypeFor[*jsonTarget]():
		return "an object"
	case reflect.TypeFor[json.RawMessage]():
		return "an object"
	case reflect.TypeFor[[]json.RawMessage]():
		return "an array"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int64, reflect.Int, reflect.Int32:
		return "an integer"
	case reflect.Slice:
		return "an array of " + strings.TrimPrefix(describeType(t.Elem()), "a ") + "s"
	case reflect.Struct, reflect.Pointer, reflect.Map:
		return "an object"
	}
	return t.String()
}

// --- msgpack ------------------------------------------------------------

// decodeMsgpack decodes and validates a msgpack collect body: the same
// shape as the JSON one, as msgpack maps with string keys.
func decodeMsgpack(body []byte, lim limits) (*collectRequest, *apiError) {
	r := bytes.NewReader(body)
	m := &mpReader{d: msgpack.NewDecoder(r), r: r, size: len(body)}
	var site, session, user string
	var raw []rawEvent
	err := m.mapEach("", func(key string) *apiError {
		var err *apiError
		switch key {
		case "site":
			site, err = m.str(key)
		case "session":
			session, err = m.str(key)
		case "user":
			user, err = m.str(key)
		case "events":
			raw, err = m.events(lim)
		default:
			err = m.skip(key)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if r.Len() != 0 {
		return nil, badField(codeMalformed, "", "invalid msgpack: %d trailing bytes after the body at byte %d", r.Len(), m.offset())
	}
	if err := checkEnvelope(site, session, user, len(raw), lim); err != nil {
		return nil, err
	}
	return finish(site, session, user, raw, lim)
}

type mpReader struct {
	d    *msgpack.Decoder
	r    *bytes.Reader
	size int
}

func (m *mpReader) offset() int { return m.size - m.r.Len() }

func (m *mpReader) malformed(field string, err error) *apiError {
	return badField(codeMalformed, field, "invalid msgpack at byte %d: %v", m.offset(), err)
}

func (m *mpReader) peek(field string) (byte, *apiError) {
	c, err := m.d.PeekCode()
	if err != nil {
		return 0, m.malformed(field, err)
	}
	return c, nil
}

func isMap(c byte) bool { return msgpcode.IsFixedMap(c) || c == msgpcode.Map16 || c == msgpcode.Map32 }
func isArray(c byte) bool {
	return msgpcode.IsFixedArray(c) || c == msgpcode.Array16 || c == msgpcode.Array32
}
func isInt(c byte) bool {
	return msgpcode.IsFixedNum(c) || (c >= msgpcode.Uint8 && c <= msgpcode.Uint64) || (c >= msgpcode.Int8 && c <= msgpcode.Int64)
}

// mapEach walks a map with string keys; a nil value counts as an empty map.
func (m *mpReader) mapEach(field string, fn func(key string) *apiError) *apiError {
	c, err := m.peek(field)
	if err != nil {
		return err
	}
	if c == msgpcode.Nil {
		_ = m.d.Skip()
		return nil
	}
	if !isMap(c) {
		if field == "" {
			return badField(codeMalformed, "", "body must be a msgpack map, got %s", mpKind(c))
		}
		return badField(codeInvalidField, field, "must be a map, got %s", mpKind(c))
	}
	n, e := m.d.DecodeMapLen()
	if e != nil {
		return m.malformed(field, e)
	}
	for range n {
		kc, err := m.peek(field)
		if err != nil {
			return err
		}
		if !msgpcode.IsString(kc) {
			return badField(codeInvalidField, field, "map keys must be strings, got %s", mpKind(kc))
		}
		key, e := m.d.DecodeString()
		if e != nil {
			return m.malformed(field, e)
		}
		if err := fn(key); err != nil {
			return err
		}
	}
	return nil
}

func (m *mpReader) str(field string) (string, *apiError) {
	c, err := m.peek(field)
	if err != nil {
		return "", err
	}
	if c == msgpcode.Nil {
		_ = m.d.Skip()
		return "", nil
	}
	if !msgpcode.IsString(c) {
		return "", badField(codeInvalidField, field, "must be a string, got %s", mpKind(c))
	}
	s, e := m.d.DecodeString()
	if e != nil {
		return "", m.malformed(field, e)
	}
	if !utf8.ValidString(s) {
		return "", badField(codeInvalidField, field, "must be valid UTF-8")
	}
	return s, nil
}

func (m *mpReader) int(field string) (int64, *apiError) {
	c, err := m.peek(field)
	if err != nil {
		return 0, err
	}
	if c == msgpcode.Nil {
		_ = m.d.Skip()
		return 0, nil
	}
	if !isInt(c) {
		return 0, badField(codeInvalidField, field, "must be an integer, got %s", mpKind(c))
	}
	if c == msgpcode.Uint64 {
		u, e := m.d.DecodeUint64()
		if e != nil {
			return 0, m.malformed(field, e)
		}
		if u > math.MaxInt64 {
			return 0, badField(codeInvalidField, field, "%d is out of range", u)
		}
		return int64(u), nil
	}
	v, e := m.d.DecodeInt64()
	if e != nil {
		return 0, m.malformed(field, e)
	}
	return v, nil
}

// arrayLen reads an array header; nil counts as -1.
func (m *mpReader) arrayLen(field string) (int, *apiError) {
	c, err := m.peek(field)
	if err != nil {
		return 0, err
	}
	if c == msgpcode.Nil {
		_ = m.d.Skip()
		return -1, nil
	}
	if !isArray(c) {
		return 0, badField(codeInvalidField, field, "must be an array, got %s", mpKind(c))
	}
	n, e := m.d.DecodeArrayLen()
	if e != nil {
		return 0, m.malformed(field, e)
	}
	return n, nil
}

func (m *mpReader) events(lim limits) ([]rawEvent, *apiError) {
	n, err := m.arrayLen("events")
	if err != nil || n < 0 {
		return nil, err
	}
	if n > lim.maxEvents {
		return nil, tooMany(n, lim)
	}
	out := make([]rawEvent, n)
	for i := range out {
		prefix := "events[" + strconv.Itoa(i) + "]"
		if err := m.event(prefix, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func (m *mpReader) event(prefix string, ev *rawEvent) *apiError {
	c, err := m.peek(prefix)
	if err != nil {
		return err
	}
	if !isMap(c) {
		return badField(codeInvalidField, prefix, "must be a map, got %s", mpKind(c))
	}
	return m.mapEach(prefix, func(key string) *apiError {
		f := prefix + "." + key
		var err *apiError
		switch key {
		case "id":
			ev.ID, err = m.str(f)
		case "type":
			ev.Type, err = m.str(f)
		case "ts":
			ev.TS, err = m.int(f)
		case "url":
			ev.URL, err = m.str(f)
		case "value":
			ev.Value, err = m.str(f)
		case "name":
			ev.Name, err = m.str(f)
		case "props":
			ev.Props, err = m.object(f)
		case "rrweb":
			ev.RRWeb, err = m.object(f)
		case "target":
			err = m.target(f, &ev.Target)
		default:
			err = m.skip(f)
		}
		return err
	})
}

func (m *mpReader) target(prefix string, t *wire.Target) *apiError {
	return m.mapEach(prefix, func(key string) *apiError {
		f := prefix + "." + key
		var err *apiError
		switch key {
		case "sel":
			t.Sel, err = m.str(f)
		case "tag":
			t.Tag, err = m.str(f)
		case "id":
			t.ID, err = m.str(f)
		case "text":
			t.Text, err = m.str(f)
		case "cls":
			var n int
			if n, err = m.arrayLen(f); err != nil || n < 0 {
				return err
			}
			// Grow as elements arrive rather than trusting the header.
			t.Cls = make([]string, 0, min(n, 64))
			for i := range n {
				s, err := m.str(f + "[" + strconv.Itoa(i) + "]")
				if err != nil {
					return err
				}
				t.Cls = append(t.Cls, s)
			}
		default:
			err = m.skip(f)
		}
		return err
	})
}

// object transcodes an optional msgpack map to compact JSON.
func (m *mpReader) object(field string) ([]byte, *apiError) {
	c, err := m.peek(field)
	if err != nil {
		return nil, err
	}
	if c == msgpcode.Nil {
		_ = m.d.Skip()
		return nil, nil
	}
	if !isMap(c) {
		return nil, badField(codeInvalidField, field, "must be a map (a JSON object), got %s", mpKind(c))
	}
	return m.toJSON(field, nil, 0)
}

// skip passes over a value, with the same depth bound as toJSON.
func (m *mpReader) skip(field string) *apiError {
	_, err := m.walk(field, nil, 0, false)
	return err
}

func (m *mpReader) toJSON(field string, dst []byte, depth int) ([]byte, *apiError) {
	return m.walk(field, dst, depth, true)
}

// walk reads one value; when emit is set it appends the value as JSON.
func (m *mpReader) walk(field string, dst []byte, depth int, emit bool) ([]byte, *apiError) {
	if depth > maxNesting {
		return nil, badField(codeInvalidField, field, "nested deeper than %d levels", maxNesting)
	}
	c, err := m.peek(field)
	if err != nil {
		return nil, err
	}
	var e error
	switch {
	case c == msgpcode.Nil:
		e = m.d.DecodeNil()
		dst = append(dst, "null"...)
	case c == msgpcode.True || c == msgpcode.False:
		var b bool
		b, e = m.d.DecodeBool()
		dst = strconv.AppendBool(dst, b)
	case c == msgpcode.Uint64:
		var u uint64
		u, e = m.d.DecodeUint64()
		dst = strconv.AppendUint(dst, u, 10)
	case isInt(c):
		var v int64
		v, e = m.d.DecodeInt64()
		dst = strconv.AppendInt(dst, v, 10)
	case c == msgpcode.Float || c == msgpcode.Double:
		var f float64
		if f, e = m.d.DecodeFloat64(); e == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
			return nil, badField(codeInvalidField, field, "NaN and infinity have no JSON form")
		}
		dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
	case msgpcode.IsString(c):
		var s string
		if s, e = m.d.DecodeString(); e == nil && !utf8.ValidString(s) {
			return nil, badField(codeInvalidField, field, "strings must be valid UTF-8")
		}
		if emit {
			dst = appendJSONString(dst, s)
		}
	case isArray(c):
		n, e := m.d.DecodeArrayLen()
		if e != nil {
			return nil, m.malformed(field, e)
		}
		dst = append(dst, '[')
		for i := range n {
			if i > 0 {
				dst = append(dst, ',')
			}
			var err *apiError
			if dst, err = m.walk(field, dst, depth+1, emit); err != nil {
				return nil, err
			}
		}
		dst = append(dst, ']')
	case isMap(c):
		n, e := m.d.DecodeMapLen()
		if e != nil {
			return nil, m.malformed(field, e)
		}
		dst = append(dst, '{')
		for i := range n {
			if i > 0 {
				dst = append(dst, ',')
			}
			kc, err := m.peek(field)
			if err != nil {
				return nil, err
			}
			if !msgpcode.IsString(kc) {
				return nil, badField(codeInvalidField, field, "map keys must be strings, got %s", mpKind(kc))
			}
			k, e := m.d.DecodeString()
			if e != nil {
				return nil, m.malformed(field, e)
			}
			if !utf8.ValidString(k) {
				return nil, badField(codeInvalidField, field, "strings must be valid UTF-8")
			}
			if emit {
				dst = appendJSONString(dst, k)
				dst = append(dst, ':')
			}
			if dst, err = m.walk(field, dst, depth+1, emit); err != nil {
				return nil, err
			}
		}
		dst = append(dst, '}')
	default:
		return nil, badField(codeInvalidField, field, "%s values have no JSON form", mpKind(c))
	}
	if e != nil {
		return nil, m.malformed(field, e)
	}
	if !emit {
		dst = dst[:0]
	}
	return dst, nil
}

// mpKind names a msgpack type for error messages.
func mpKind(c byte) string {
	switch {
	case c == msgpcode.Nil:
		return "nil"
	case c == msgpcode.True || c == msgpcode.False:
		return "a boolean"
	case isInt(c):
		return "an integer"
	case c == msgpcode.Float || c == msgpcode.Double:
		return "a float"
	case msgpcode.IsString(c):
		return "a string"
	case msgpcode.IsBin(c):
		return "binary"
	case isArray(c):
		return "an array"
	case isMap(c):
		return "a map"
	case msgpcode.IsExt(c):
		return "an extension"
	}
	return fmt.Sprintf("code 0x%02x", c)
}

// appendJSONString appends s (valid UTF-8) as a JSON string.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			// Valid JSON, but not valid JavaScript source: escape them.
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// --- validation, shared -------------------------------------------------

func tooMany(n int, lim limits) *apiError {
	return badField(codeTooManyEvents, "events", "%d events, at most %d per request; send them in several requests", n, lim.maxEvents)
}

func checkEnvelope(site, session, user string, n int, lim limits) *apiError {
	switch {
	case site == "":
		return badField(codeMissingField, "site", "required, the site id, e.g. \"demo\"")
	case utf8.RuneCountInString(site) > maxSiteLen:
		return badField(codeInvalidField, "site", "longer than %d characters", maxSiteLen)
	case hasControl(site):
		return badField(codeInvalidField, "site", "contains a control character")
	case session == "":
		return badField(codeMissingField, "session", "required, the recorder's session id")
	case utf8.RuneCountInString(session) > maxSessionLen:
		return badField(codeInvalidField, "session", "longer than %d characters", maxSessionLen)
	case hasControl(session):
		return badField(codeInvalidField, "session", "contains a control character")
	case utf8.RuneCountInString(user) > maxUserLen:
		return badField(codeInvalidField, "user", "longer than %d characters", maxUserLen)
	case n == 0:
		return badField(codeMissingField, "events", "required, a non-empty array of events")
	case n > lim.maxEvents:
		return tooMany(n, lim)
	}
	return nil
}

// hasControl reports a control character. Ids and sessions become parts of
// storage keys at the aggregator, where NUL separates them; rejecting them
// here means nothing the agent acknowledges is refused later.
func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// typeList is the accepted event types, for error messages.
const typeList = "click, pageview, input, keypress, submit, select, custom, identify, rrweb"

// finish validates the events and builds the wire events.
func finish(site, session, user string, raw []rawEvent, lim limits) (*collectRequest, *apiError) {
	now := lim.now.UnixMilli()
	oldest := lim.now.Add(-lim.maxAge).UnixMilli()
	newest := lim.now.Add(lim.maxSkew).UnixMilli()
	out := &collectRequest{Site: site, Session: session, User: user, Events: make([]wire.Event, len(raw))}
	for i := range raw {
		ev := &raw[i]
		f := func(name string) string { return "events[" + strconv.Itoa(i) + "]." + name }
		switch {
		case ev.ID == "":
			return nil, badField(codeMissingField, f("id"), "required, a unique event id")
		case utf8.RuneCountInString(ev.ID) > maxIDLen:
			return nil, badField(codeInvalidField, f("id"), "longer than %d characters", maxIDLen)
		case hasControl(ev.ID):
			return nil, badField(codeInvalidField, f("id"), "contains a control character")
		case ev.Type == "":
			return nil, badField(codeMissingField, f("type"), "required, one of %s", typeList)
		case !wire.KnownType(ev.Type):
			return nil, badField(codeInvalidField, f("type"), "unknown type %q, use one of %s", truncate(ev.Type, 32), typeList)
		case ev.TS <= 0:
			return nil, badField(codeInvalidField, f("ts"), "must be a positive Unix time in milliseconds")
		case ev.TS < oldest:
			return nil, badField(codeInvalidField, f("ts"), "%d is older than max_event_age (%v)", ev.TS, lim.maxAge)
		case ev.TS > newest:
			return nil, badField(codeInvalidField, f("ts"), "%d is more than max_clock_skew (%v) in the future", ev.TS, lim.maxSkew)
		case len(ev.URL) > maxURLLen:
			return nil, badField(codeInvalidField, f("url"), "longer than %d bytes", maxURLLen)
		case ev.Type == wire.TypeRRWeb && ev.RRWeb == nil:
			return nil, badField(codeMissingField, f("rrweb"), "required for type rrweb, the rrweb event as an object")
		}
		value := ev.Value
		if ev.Type == wire.TypeInput || ev.Type == wire.TypeKeypress {
			// Guarantee 4's default: input values and key presses are not
			// recorded. Until censor rules (which may allow them per site)
			// reach the agent, nothing can allow them, whatever the client
			// sends.
			value = ""
		}
		out.Events[i] = wire.Event{
			Site: site, Session: session, User: user,
			ID: ev.ID, Type: ev.Type, TS: ev.TS, Recv: now, URL: ev.URL,
			Target: ev.Target, Value: value, Name: ev.Name,
			Props: ev.Props, RRWeb: ev.RRWeb,
		}
	}
	return out, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// eventSize approximates an event's queued size, for shedding metrics.
func eventSize(e *wire.Event) int {
	n := 16 + len(e.Site) + len(e.Session) + len(e.User) + len(e.ID) + len(e.Type) + len(e.URL) +
		len(e.Target.Sel) + len(e.Target.Tag) + len(e.Target.ID) + len(e.Target.Text) +
		len(e.Value) + len(e.Name) + len(e.Props) + len(e.RRWeb)
	for _, c := range e.Target.Cls {
		n += len(c) + 1
	}
	return n
}
