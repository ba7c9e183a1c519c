package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// This file: JSON values that keep the order of object keys, for the one
// place where order is signed (SignedFields: a client's env and the fields
// of its volumes and uploads keep the order the client wrote them in).

// ovalue is a JSON value that remembers the order of its object keys.
type ovalue struct {
	kind byte      // 'n' null, 'b' bool, 's' string, '#' number, '[' array, '{' object
	b    bool      // 'b'
	s    string    // 's', and '#' (the number's text)
	arr  []ovalue  // '['
	obj  []omember // '{'
}

type omember struct {
	key string
	val ovalue
}

var onull = ovalue{kind: 'n'}

func ostr(s string) ovalue     { return ovalue{kind: 's', s: s} }
func obool(b bool) ovalue      { return ovalue{kind: 'b', b: b} }
func oint(n int64) ovalue      { return ovalue{kind: '#', s: fmt.Sprint(n)} }
func oobj(m ...omember) ovalue { return ovalue{kind: '{', obj: m} }

// get returns the member named key (exactly, case and all).
func (v ovalue) get(key string) (ovalue, bool) {
	for _, m := range v.obj {
		if m.key == key {
			return m.val, true
		}
	}
	return ovalue{}, false
}

// errDuplicateKey marks an object that names a key twice: two decoders may
// read different values from it, so signed input never has one.
var errDuplicateKey = errors.New("duplicate key")

// parseOrdered reads exactly one JSON value. Objects keep their key order
// and may not repeat a key; numbers keep their text.
func parseOrdered(b []byte) (ovalue, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := parseValue(dec, 0)
	if err != nil {
		return ovalue{}, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return ovalue{}, fmt.Errorf("data after the JSON value")
	}
	return v, nil
}

const maxDepth = 64

func parseValue(dec *json.Decoder, depth int) (ovalue, error) {
	if depth > maxDepth {
		return ovalue{}, fmt.Errorf("nested deeper than %d", maxDepth)
	}
	t, err := dec.Token()
	if err != nil {
		return ovalue{}, err
	}
	switch t := t.(type) {
	case nil:
		return onull, nil
	case bool:
		return obool(t), nil
	case string:
		return ostr(t), nil
	case json.Number:
		return ovalue{kind: '#', s: string(t)}, nil
	case json.Delim:
		switch t {
		case '[':
			v := ovalue{kind: '[', arr: []ovalue{}}
			for dec.More() {
				e, err := parseValue(dec, depth+1)
				if err != nil {
					return ovalue{}, err
				}
				v.arr = append(v.arr, e)
			}
			_, err := dec.Token() // ']'
			return v, err
		case '{':
			v := ovalue{kind: '{', obj: []omember{}}
			seen := map[string]bool{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return ovalue{}, err
				}
				k := kt.(string)
				if seen[k] {
					return ovalue{}, fmt.Errorf("%w %q", errDuplicateKey, k)
				}
				seen[k] = true
				e, err := parseValue(dec, depth+1)
				if err != nil {
					return ovalue{}, err
				}
				v.obj = append(v.obj, omember{k, e})
			}
			_, err := dec.Token() // '}'
			return v, err
		}
	}
	return ovalue{}, fmt.Errorf("unexpected token %v", t)
}

// compact writes v as pydantic's model_dump_json writes JSON: no spaces,
// keys in order, strings with only '"', '\\' and control characters escaped
// (non-ASCII as raw UTF-8). Numbers must be integers: a float's text
// differs between Python and pydantic, and no signed field holds one.
func (v ovalue) compact(buf *bytes.Buffer) error {
	switch v.kind {
	case 'n':
		buf.WriteString("null")
	case 'b':
		if v.b {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case 's':
		compactString(buf, v.s)
	case '#':
		n, err := intText(v.s)
		if err != nil {
			return err
		}
		buf.WriteString(n)
	case '[':
		buf.WriteByte('[')
		for i, e := range v.arr {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := e.compact(buf); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case '{':
		buf.WriteByte('{')
		for i, m := range v.obj {
			if i > 0 {
				buf.WriteByte(',')
			}
			compactString(buf, m.key)
			buf.WriteByte(':')
			if err := m.val.compact(buf); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("no JSON value")
	}
	return nil
}

func (v ovalue) compactBytes() ([]byte, error) {
	var buf bytes.Buffer
	err := v.compact(&buf)
	return buf.Bytes(), err
}

// maxIntDigits bounds an integer's digits (Python's default limit).
const maxIntDigits = 4300

// intText returns the text Python writes for the integer JSON number s, or
// an error when s is not an integer.
func intText(s string) (string, error) {
	if strings.ContainsAny(s, ".eE") {
		return "", fmt.Errorf("number %.40s is not an integer (signed fields hold only integers)", s)
	}
	digits := strings.TrimPrefix(s, "-")
	if len(digits) > maxIntDigits {
		return "", fmt.Errorf("integer of %d digits", len(digits))
	}
	if strings.TrimLeft(digits, "0") == "" {
		return "0", nil
	}
	return s, nil
}

// compactString writes s as a JSON string the way pydantic-core does.
func compactString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		default:
			if c < 0x20 {
				buf.WriteString(`\u00`)
				buf.WriteByte(hex[c>>4])
				buf.WriteByte(hex[c&0xf])
			} else {
				buf.WriteByte(c)
			}
		}
	}
	buf.WriteByte('"')
}

// Typed reads of ordered values; each names the field it reads.

func (v ovalue) asString(field string) (string, error) {
	if v.kind != 's' {
		return "", fmt.Errorf("%s must be a string", field)
	}
	return v.s, nil
}

func (v ovalue) asBool(field string) (bool, error) {
	if v.kind != 'b' {
		return false, fmt.Errorf("%s must be true or false", field)
	}
	return v.b, nil
}

func (v ovalue) asInt(field string) (int, error) {
	if v.kind != '#' {
		return 0, fmt.Errorf("%s must be an integer", field)
	}
	if _, err := intText(v.s); err != nil {
		return 0, fmt.Errorf("%s: %v", field, err)
	}
	n, err := strconv.Atoi(v.s)
	if err != nil {
		return 0, fmt.Errorf("%s: integer %.40s out of range", field, v.s)
	}
	return n, nil
}

func (v ovalue) asStrings(field string) ([]string, error) {
	if v.kind != '[' {
		return nil, fmt.Errorf("%s must be a list of strings", field)
	}
	out := make([]string, 0, len(v.arr))
	for i, e := range v.arr {
		s, err := e.asString(fmt.Sprintf("%s[%d]", field, i))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// asStringMap checks an object of strings and returns it with its key order.
func (v ovalue) asStringMap(field string) (map[string]string, []string, error) {
	if v.kind != '{' {
		return nil, nil, fmt.Errorf("%s must be an object of strings", field)
	}
	m := make(map[string]string, len(v.obj))
	order := make([]string, 0, len(v.obj))
	for _, e := range v.obj {
		s, err := e.val.asString(field + "." + e.key)
		if err != nil {
			return nil, nil, err
		}
		m[e.key] = s
		order = append(order, e.key)
	}
	return m, order, nil
}
