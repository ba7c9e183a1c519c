package receipt

// Receipt pages: how upstream ComputeHorde miners serve receipts and upstream
// validators fetch them.
//
// A miner appends each receipt to the page of the moment it stores it, page =
// floor(unix seconds / 300), served as GET /receipts/{page}.jsonl: one upstream
// Receipt per line ({"payload", "validator_signature", "miner_signature"}, the
// receipt type inside the payload), each line ending in "\n". A validator that
// read N bytes of a page asks again with "Range: bytes=N-"; 404 means the miner
// has no such page, 416 that nothing was added. A Cursor ("page:offset") is
// where a reader stopped; it only ever points just after a complete line, so a
// line is never read twice nor half.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PageDuration is the time span of one receipt page.
const PageDuration = 5 * time.Minute

// PagePrefix is the path under which pages are served.
const PagePrefix = "/receipts/"

// PageAt returns the page a receipt stored at t goes to.
func PageAt(t time.Time) int64 {
	s := t.Unix()
	n := int64(PageDuration / time.Second)
	if s < 0 { // floor, as Python's //
		return (s - n + 1) / n
	}
	return s / n
}

// PageStart returns the first instant of page.
func PageStart(page int64) time.Time {
	return time.Unix(page*int64(PageDuration/time.Second), 0).UTC()
}

// PagePath returns the URL path of page, "/receipts/{page}.jsonl".
func PagePath(page int64) string {
	return PagePrefix + strconv.FormatInt(page, 10) + ".jsonl"
}

// ParsePagePath returns the page of a path made by PagePath; ok is false for
// any other path (a sign, a leading zero, another suffix).
func ParsePagePath(path string) (page int64, ok bool) {
	s, found := strings.CutPrefix(path, PagePrefix)
	if !found {
		return 0, false
	}
	s, found = strings.CutSuffix(s, ".jsonl")
	if !found || s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	p, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false
	}
	return p, true
}

// pageLine is an upstream Receipt as a page line carries it.
type pageLine struct {
	Payload            json.RawMessage `json:"payload"`
	ValidatorSignature *string         `json:"validator_signature"`
	MinerSignature     *string         `json:"miner_signature"`
}

// MarshalLine returns r as upstream writes it on a page (pydantic's
// model_dump_json: payload fields in upstream's declaration order), with the
// trailing newline. Upstream requires both signatures.
func MarshalLine(r Receipt) ([]byte, error) {
	if r.ValidatorSignature == "" || r.MinerSignature == "" {
		return nil, fmt.Errorf("%w: page line needs both signatures", ErrInvalid)
	}
	p, err := r.Decode()
	if err != nil {
		return nil, err
	}
	p.base()
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("receipt line: %w", err)
	}
	b, err := json.Marshal(pageLine{Payload: payload, ValidatorSignature: &r.ValidatorSignature, MinerSignature: &r.MinerSignature})
	if err != nil {
		return nil, fmt.Errorf("receipt line: %w", err)
	}
	return append(b, '\n'), nil
}

// ParseLine reads one page line (with or without its newline) into a
// Receipt. It checks the shape upstream's model checks (both signatures
// present, a known receipt type, the payload's fields), not the signatures:
// call Verify for those.
func ParseLine(line []byte) (Receipt, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	var l pageLine
	if err := json.Unmarshal(line, &l); err != nil {
		return Receipt{}, fmt.Errorf("%w: line: %v", ErrInvalid, err)
	}
	if len(l.Payload) == 0 || l.ValidatorSignature == nil || l.MinerSignature == nil {
		return Receipt{}, fmt.Errorf("%w: line lacks payload or a signature", ErrInvalid)
	}
	var t struct {
		ReceiptType Type `json:"receipt_type"`
	}
	if err := json.Unmarshal(l.Payload, &t); err != nil {
		return Receipt{}, fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	r := Receipt{Type: t.ReceiptType, Payload: l.Payload, ValidatorSignature: *l.ValidatorSignature, MinerSignature: *l.MinerSignature}
	p, err := r.Decode()
	if err != nil {
		return Receipt{}, err
	}
	if err := checkRequired(l.Payload, p); err != nil {
		return Receipt{}, err
	}
	return r, nil
}

// checkRequired refuses a payload missing a field upstream's model requires
// (encoding/json would leave it zero).
func checkRequired(raw json.RawMessage, p Payload) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%w: payload: %v", ErrInvalid, err)
	}
	need := []string{"job_uuid", "miner_hotkey", "validator_hotkey", "timestamp"}
	switch p.(type) {
	case *StartedPayload:
		need = append(need, "executor_class", "is_organic", "ttl")
	case *AcceptedPayload:
		need = append(need, "time_accepted", "ttl")
	case *FinishedPayload:
		need = append(need, "time_started", "time_took_us", "score_str")
	}
	for _, k := range need {
		if v, ok := m[k]; !ok || string(v) == "null" {
			return fmt.Errorf("%w: payload lacks %s", ErrInvalid, k)
		}
	}
	return nil
}

// SplitLines returns the complete lines of data (each without its newline)
// and how many bytes they take; a trailing line without its newline (a page
// being written, or a Range cut) is left for the next read.
func SplitLines(data []byte) (lines [][]byte, used int) {
	for {
		i := bytes.IndexByte(data[used:], '\n')
		if i < 0 {
			return lines, used
		}
		lines = append(lines, data[used:used+i])
		used += i + 1
	}
}

// Cursor is where a reader of a miner's pages stopped: the page and the
// number of bytes of it already read. Its text form is "page:offset".
type Cursor struct {
	Page   int64
	Offset int64
}

// String returns "page:offset".
func (c Cursor) String() string {
	return strconv.FormatInt(c.Page, 10) + ":" + strconv.FormatInt(c.Offset, 10)
}

// ErrCursor marks a cursor text that does not parse.
var ErrCursor = errors.New("bad receipt page cursor")

// ParseCursor reads "page:offset"; the empty string is the zero Cursor.
func ParseCursor(s string) (Cursor, error) {
	if s == "" {
		return Cursor{}, nil
	}
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return Cursor{}, fmt.Errorf("%w: %q", ErrCursor, s)
	}
	p, err1 := strconv.ParseInt(a, 10, 64)
	o, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || p < 0 || o < 0 {
		return Cursor{}, fmt.Errorf("%w: %q", ErrCursor, s)
	}
	return Cursor{Page: p, Offset: o}, nil
}
