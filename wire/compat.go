package wire

import (
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// The msgpack library decodes an array-encoded struct only when the array
// has exactly as many elements as the struct has fields, so a field
// appended in a newer version would make every older peer refuse every
// message. These decoders implement the rule doc.go promises instead:
// elements beyond the known fields are skipped, and fields the array does
// not reach are left zero. Encoding is unchanged.
func init() {
	RegisterArrayStructs(Event{}, Target{}, Batch{}, Ack{}, ConfigRequest{}, Config{}, Site{}, Error{})
}

// RegisterArrayStructs gives other packages' array-encoded structs (Raft
// commands, stored records) the same rule: extra elements skipped, missing
// fields zero. Pass struct values, not pointers.
func RegisterArrayStructs(values ...any) {
	for _, v := range values {
		msgpack.Register(v, nil, decodeArrayStruct)
	}
}

// arrayFields caches, per struct type, the indexes of the fields that
// travel, in wire order.
var arrayFields sync.Map // reflect.Type → []int

func fieldsOf(t reflect.Type) []int {
	if v, ok := arrayFields.Load(t); ok {
		return v.([]int)
	}
	var idx []int
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue // includes the _msgpack marker
		}
		if name, _, _ := strings.Cut(f.Tag.Get("msgpack"), ","); name == "-" {
			continue
		}
		idx = append(idx, i)
	}
	arrayFields.Store(t, idx)
	return idx
}

func decodeArrayStruct(d *msgpack.Decoder, v reflect.Value) error {
	c, err := d.PeekCode()
	if err != nil {
		return err
	}
	if c == msgpcode.Nil {
		v.Set(reflect.Zero(v.Type()))
		return d.DecodeNil()
	}
	n, err := d.DecodeArrayLen()
	if err != nil {
		return fmt.Errorf("%v: %w", v.Type(), err)
	}
	t := v.Type()
	idx := fieldsOf(t)
	for i := 0; i < n; i++ {
		if i >= len(idx) {
			if err := d.Skip(); err != nil {
				return fmt.Errorf("%v: field %d: %w", t, i, err)
			}
			continue
		}
		if err := d.DecodeValue(v.Field(idx[i])); err != nil {
			return fmt.Errorf("%v.%s: %w", t, t.Field(idx[i]).Name, err)
		}
	}
	for i := max(n, 0); i < len(idx); i++ {
		f := v.Field(idx[i])
		f.Set(reflect.Zero(f.Type()))
	}
	return nil
}
