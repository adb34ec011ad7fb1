package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// Frame layout, all integers big-endian:
//
//	0  magic    2 bytes  'S' 'L'
//	2  version  1 byte   FrameVersion
//	3  type     1 byte   MsgType
//	4  length   4 bytes  body length
//	8  crc      4 bytes  CRC32C (Castagnoli) of the body
//	12 body     length bytes, msgpack
const (
	FrameHeaderSize = 12
	FrameVersion    = 1
	// MaxFrameBody bounds one message so a peer cannot make us allocate
	// without limit; a batch of 1,000 events compresses far below it.
	MaxFrameBody = 16 << 20
)

var frameMagic = [2]byte{'S', 'L'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Frame errors. Each names what was wrong with the bytes read.
var (
	// ErrBadMagic means the bytes are not a Sightline frame at all.
	ErrBadMagic = errors.New("wire: bad frame magic")
	// ErrBadVersion means the peer speaks a frame version we do not.
	ErrBadVersion = errors.New("wire: unsupported frame version")
	// ErrFrameTooLarge means the declared body length exceeds MaxFrameBody.
	ErrFrameTooLarge = errors.New("wire: frame body too large")
	// ErrBadChecksum means the body does not match its CRC32C.
	ErrBadChecksum = errors.New("wire: frame checksum mismatch")
)

// AppendFrame appends a frame holding body to dst.
func AppendFrame(dst []byte, t MsgType, body []byte) []byte {
	var h [FrameHeaderSize]byte
	h[0], h[1] = frameMagic[0], frameMagic[1]
	h[2] = FrameVersion
	h[3] = byte(t)
	binary.BigEndian.PutUint32(h[4:8], uint32(len(body)))
	binary.BigEndian.PutUint32(h[8:12], crc32.Checksum(body, castagnoli))
	dst = append(dst, h[:]...)
	return append(dst, body...)
}

// ParseFrameHeader checks a frame header and returns its type, body length
// and checksum.
func ParseFrameHeader(h []byte) (MsgType, uint32, uint32, error) {
	if len(h) < FrameHeaderSize {
		return 0, 0, 0, fmt.Errorf("wire: short frame header (%d bytes): %w", len(h), io.ErrUnexpectedEOF)
	}
	if h[0] != frameMagic[0] || h[1] != frameMagic[1] {
		return 0, 0, 0, ErrBadMagic
	}
	if h[2] != FrameVersion {
		return 0, 0, 0, fmt.Errorf("%w: %d", ErrBadVersion, h[2])
	}
	n := binary.BigEndian.Uint32(h[4:8])
	if n > MaxFrameBody {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, MaxFrameBody)
	}
	return MsgType(h[3]), n, binary.BigEndian.Uint32(h[8:12]), nil
}

// DecodeFrame parses one whole frame from b and returns its type, body and
// the number of bytes consumed.
func DecodeFrame(b []byte) (MsgType, []byte, int, error) {
	t, n, sum, err := ParseFrameHeader(b)
	if err != nil {
		return 0, nil, 0, err
	}
	end := FrameHeaderSize + int(n)
	if len(b) < end {
		return 0, nil, 0, fmt.Errorf("wire: frame body truncated (%d of %d bytes): %w", len(b)-FrameHeaderSize, n, io.ErrUnexpectedEOF)
	}
	body := b[FrameHeaderSize:end]
	if crc32.Checksum(body, castagnoli) != sum {
		return 0, nil, 0, ErrBadChecksum
	}
	return t, body, end, nil
}

// ReadFrame reads one frame from r.
func ReadFrame(r io.Reader) (MsgType, []byte, error) {
	var h [FrameHeaderSize]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	t, n, sum, err := ParseFrameHeader(h[:])
	if err != nil {
		return 0, nil, err
	}
	body, err := readBody(r, int(n))
	if err != nil {
		return 0, nil, fmt.Errorf("wire: reading frame body: %w", err)
	}
	if crc32.Checksum(body, castagnoli) != sum {
		return 0, nil, ErrBadChecksum
	}
	return t, body, nil
}

// readBody reads exactly n bytes. Large bodies grow with the bytes that
// actually arrive instead of trusting the declared length up front, so a
// peer that announces 16 MiB and sends nothing costs us nothing.
func readBody(r io.Reader, n int) ([]byte, error) {
	const eager = 64 << 10
	if n <= eager {
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			if err == io.EOF {
				// The header promised a body: ending here is truncation,
				// not a clean end of stream.
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return body, nil
	}
	body := make([]byte, 0, eager)
	for len(body) < n {
		if len(body) == cap(body) {
			body = slices.Grow(body, min(cap(body), n-len(body)))
		}
		m, err := r.Read(body[len(body):min(cap(body), n)])
		body = body[:len(body)+m]
		if err != nil && len(body) < n {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return body, nil
}

// WriteFrame writes one frame to w in a single Write call.
func WriteFrame(w io.Writer, t MsgType, body []byte) error {
	_, err := w.Write(AppendFrame(make([]byte, 0, FrameHeaderSize+len(body)), t, body))
	return err
}
