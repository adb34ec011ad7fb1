package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrBadMsgpack means a body is not one well-formed, plausibly sized msgpack
// value.
var ErrBadMsgpack = errors.New("wire: malformed msgpack")

// Limits checkMsgpack enforces. The msgpack library allocates a slice for
// an array's declared length before reading its elements, and skips nested
// values recursively, so a few hostile bytes could otherwise ask for
// gigabytes or overflow the stack. Our messages nest at most four deep.
const (
	maxMsgpackDepth = 32
	maxMsgpackElems = 1 << 20
)

// checkMsgpack verifies that b holds exactly one msgpack value whose every
// array and map declares no more elements than the bytes left could hold,
// and that nests at most maxMsgpackDepth deep. It allocates nothing.
func checkMsgpack(b []byte) error {
	// pending[i] counts values still to read in the container at depth i;
	// pending[0] is the single top-level value.
	var pending [maxMsgpackDepth + 1]int
	depth := 0
	pending[0] = 1
	total := 1 // sum of pending, each needs at least one byte
	i := 0
	for {
		for depth > 0 && pending[depth] == 0 {
			depth--
		}
		if pending[depth] == 0 {
			break
		}
		if total > len(b)-i {
			return fmt.Errorf("%w: %d values declared but only %d bytes left", ErrBadMsgpack, total, len(b)-i)
		}
		pending[depth]--
		total--

		c := b[i]
		i++
		var skip, n int // bytes to skip; elements of a new container
		container := false
		switch {
		case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			n, container = 2*int(c&0x0f), true
		case c >= 0x90 && c <= 0x9f:
			n, container = int(c&0x0f), true
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		default:
			var err error
			var sz int
			switch c {
			case 0xcc, 0xd0:
				skip = 1
			case 0xcd, 0xd1:
				skip = 2
			case 0xca, 0xce, 0xd2:
				skip = 4
			case 0xcb, 0xcf, 0xd3:
				skip = 8
			case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8:
				skip = 1 + 1<<(c-0xd4) // type byte + 1, 2, 4, 8 or 16 data bytes
			case 0xc4, 0xd9:
				sz, i, err = readLen(b, i, 1)
				skip = sz
			case 0xc5, 0xda:
				sz, i, err = readLen(b, i, 2)
				skip = sz
			case 0xc6, 0xdb:
				sz, i, err = readLen(b, i, 4)
				skip = sz
			case 0xc7:
				sz, i, err = readLen(b, i, 1)
				skip = sz + 1
			case 0xc8:
				sz, i, err = readLen(b, i, 2)
				skip = sz + 1
			case 0xc9:
				sz, i, err = readLen(b, i, 4)
				skip = sz + 1
			case 0xdc:
				sz, i, err = readLen(b, i, 2)
				n, container = sz, true
			case 0xdd:
				sz, i, err = readLen(b, i, 4)
				n, container = sz, true
			case 0xde:
				sz, i, err = readLen(b, i, 2)
				n, container = 2*sz, true
			case 0xdf:
				sz, i, err = readLen(b, i, 4)
				n, container = 2*sz, true
			default: // 0xc1 is never used
				return fmt.Errorf("%w: invalid code 0x%02x at offset %d", ErrBadMsgpack, c, i-1)
			}
			if err != nil {
				return err
			}
		}
		if skip > len(b)-i {
			return fmt.Errorf("%w: value at offset %d needs %d bytes, %d left", ErrBadMsgpack, i, skip, len(b)-i)
		}
		i += skip
		if container && n > 0 {
			if n > maxMsgpackElems {
				return fmt.Errorf("%w: container of %d elements at offset %d, limit %d", ErrBadMsgpack, n, i, maxMsgpackElems)
			}
			if depth == maxMsgpackDepth {
				return fmt.Errorf("%w: nested deeper than %d", ErrBadMsgpack, maxMsgpackDepth)
			}
			depth++
			pending[depth] = n
			total += n
		}
	}
	if i != len(b) {
		return fmt.Errorf("%w: %d trailing bytes", ErrBadMsgpack, len(b)-i)
	}
	return nil
}

// readLen reads a big-endian length of w bytes at b[i:].
func readLen(b []byte, i, w int) (int, int, error) {
	if w > len(b)-i {
		return 0, i, fmt.Errorf("%w: truncated length at offset %d", ErrBadMsgpack, i)
	}
	var n uint64
	switch w {
	case 1:
		n = uint64(b[i])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b[i:]))
	case 4:
		n = uint64(binary.BigEndian.Uint32(b[i:]))
	}
	// Checked against the bytes left by the caller; capping here keeps the
	// int conversion and the additions safe on 32-bit platforms.
	if n > 1<<30 {
		n = 1 << 30
	}
	return int(n), i + w, nil
}
