// Package pyjson writes the bytes Python's json.dumps(obj, sort_keys=True)
// writes, the canonical form ComputeHorde signs receipts over, and formats
// datetimes the way pydantic serialises them.
package pyjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// ErrUnwritable marks input whose canonical form would not be what Python
// writes, or that no peer could read back: the bytes would be signed, and
// no one could check the signature.
var ErrUnwritable = errors.New("canonical json: cannot write this back")

// MaxIntDigits is the longest integer Python reads or writes by default
// (sys.int_info.default_max_str_digits); longer ones are refused.
const MaxIntDigits = 4300

// Canonical re-encodes JSON text as Python's json.dumps(json.loads(text),
// sort_keys=True). Numbers written with '.', 'e' or 'E' are floats, others ints.
//
// It refuses, with ErrUnwritable, what it cannot write back faithfully:
// numbers that overflow a float64 (Python would write Infinity, which is not
// JSON), integers over MaxIntDigits digits, invalid UTF-8 (Python's
// json.loads refuses it) and lone UTF-16 surrogate escapes (Python keeps
// them, Go cannot).
func Canonical(text []byte) ([]byte, error) {
	if !utf8.Valid(text) {
		return nil, fmt.Errorf("%w: input is not valid UTF-8", ErrUnwritable)
	}
	if err := checkSurrogates(text); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("canonical json: trailing data")
	}
	var buf bytes.Buffer
	if err := encode(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkSurrogates refuses \uD800–\uDFFF escapes that are not a high
// surrogate followed by a low one: Go's decoder turns them into U+FFFD,
// Python keeps them, so the canonical bytes would differ from Python's.
// It reads the text loosely; the JSON decoder judges its syntax after.
func checkSurrogates(text []byte) error {
	inString := false
	for i := 0; i < len(text); i++ {
		c := text[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(text) {
				return nil
			}
			if text[i+1] != 'u' {
				i++
				continue
			}
			r, ok := hex4(text, i+2)
			if !ok {
				return nil
			}
			switch {
			case r >= 0xdc00 && r <= 0xdfff:
				return fmt.Errorf("%w: lone low surrogate \\u%04x at byte %d", ErrUnwritable, r, i)
			case r >= 0xd800 && r <= 0xdbff:
				if i+11 >= len(text) || text[i+6] != '\\' || text[i+7] != 'u' {
					return fmt.Errorf("%w: lone high surrogate \\u%04x at byte %d", ErrUnwritable, r, i)
				}
				lo, ok := hex4(text, i+8)
				if !ok || lo < 0xdc00 || lo > 0xdfff {
					return fmt.Errorf("%w: lone high surrogate \\u%04x at byte %d", ErrUnwritable, r, i)
				}
				i += 11
			default:
				i += 5
			}
		}
	}
	return nil
}

// hex4 reads four hex digits at text[i:].
func hex4(text []byte, i int) (rune, bool) {
	if i+4 > len(text) {
		return 0, false
	}
	var r rune
	for _, c := range text[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// Marshal encodes v with encoding/json and returns its canonical form.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return Canonical(b)
}

func encode(buf *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		if v {
			buf.WriteString("true")
		} else {
			buf.WriteString("false")
		}
	case string:
		writeString(buf, v)
	case json.Number:
		s, err := number(string(v))
		if err != nil {
			return err
		}
		buf.WriteString(s)
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteString(", ")
			}
			if err := encode(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		// Python sorts str keys by code point; UTF-16 order differs only above
		// U+FFFF, so compare runes.
		slices.SortFunc(keys, func(a, b string) int { return slices.Compare([]rune(a), []rune(b)) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteString(", ")
			}
			writeString(buf, k)
			buf.WriteString(": ")
			if err := encode(buf, v[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("canonical json: unsupported type %T", v)
	}
	return nil
}

func number(s string) (string, error) {
	if !strings.ContainsAny(s, ".eE") {
		// Python int: arbitrary precision up to MaxIntDigits, printed
		// without the sign of zero.
		digits := strings.TrimPrefix(s, "-")
		if len(digits) > MaxIntDigits {
			return "", fmt.Errorf("%w: integer of %d digits (Python reads at most %d)", ErrUnwritable, len(digits), MaxIntDigits)
		}
		if strings.TrimLeft(digits, "0") == "" {
			return "0", nil
		}
		return s, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if errors.Is(err, strconv.ErrRange) && math.IsInf(f, 0) {
		return "", fmt.Errorf("%w: number %.40s overflows a float64 (Python would write %s, which is not JSON)", ErrUnwritable, s, FloatRepr(f))
	}
	if err != nil {
		return "", fmt.Errorf("canonical json: number %.40q: %w", s, err)
	}
	// Underflow reads as zero or a denormal, as it does in Python.
	return FloatRepr(f), nil
}

// FloatRepr formats f as Python's repr(float) does.
func FloatRepr(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case math.IsNaN(f):
		return "NaN"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // -d.ddde±XX
	neg := strings.HasPrefix(e, "-")
	e = strings.TrimPrefix(e, "-")
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	digits := strings.Replace(mant, ".", "", 1)
	decpt := exp + 1
	var out string
	if decpt <= -4 || decpt > 16 {
		out = digits[:1]
		if len(digits) > 1 {
			out += "." + digits[1:]
		}
		sign := "+"
		if exp < 0 {
			sign = "-"
			exp = -exp
		}
		out += fmt.Sprintf("e%s%02d", sign, exp)
	} else if decpt <= 0 {
		out = "0." + strings.Repeat("0", -decpt) + digits
	} else if decpt >= len(digits) {
		out = digits + strings.Repeat("0", decpt-len(digits)) + ".0"
	} else {
		out = digits[:decpt] + "." + digits[decpt:]
	}
	if neg {
		out = "-" + out
	}
	return out
}

// WriteString writes s as a JSON string exactly as Canonical writes it
// (Python's json.dumps with ensure_ascii; each byte of invalid UTF-8 as
// \ufffd, as encoding/json reads it), for encoders that write canonical
// bytes directly.
func WriteString(buf *bytes.Buffer, s string) { writeString(buf, s) }

func writeString(buf *bytes.Buffer, s string) {
	buf.WriteByte('"')
	for _, r := range s {
		switch r {
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
			switch {
			case r < 0x20 || (r >= 0x7f && r <= 0xffff):
				fmt.Fprintf(buf, `\u%04x`, r)
			case r > 0xffff:
				r1, r2 := utf16.EncodeRune(r)
				fmt.Fprintf(buf, `\u%04x\u%04x`, r1, r2)
			default:
				buf.WriteRune(r)
			}
		}
	}
	buf.WriteByte('"')
}

// Time formats t as pydantic does in JSON mode: UTC "Z", and six fraction
// digits whenever the time has a sub-second part.
func Time(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05Z")
	}
	return t.Format("2006-01-02T15:04:05") + fmt.Sprintf(".%06dZ", t.Nanosecond()/1000)
}

// ParseTime parses the pydantic datetime forms (RFC 3339 with or without
// fraction). Times outside years 1–9999 once in UTC are refused: Time
// could not write them back in a form Python (or ParseTime) reads.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("parse time %q: %w", s, err)
	}
	if err := TimeInRange(t); err != nil {
		return time.Time{}, fmt.Errorf("parse time %q: %w", s, err)
	}
	return t, nil
}

// TimeInRange refuses a time Time cannot write back: outside years 1–9999 in UTC.
func TimeInRange(t time.Time) error {
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: year %d in UTC is outside 1–9999", ErrUnwritable, y)
	}
	return nil
}
