package streamreceipt

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Receipt versions: the first line of every blob. docs/PROTOCOL.md defines
// both byte for byte.
const (
	// VersionV1 binds the bodies but not the request that produced them: it
	// stays verifiable for receipts signed before v2, and never convicts.
	VersionV1 = "horde-streaming-receipt/v1"
	// VersionV2 binds the whole exchange: method, target, content types and
	// status beside the bodies, and who stamped the request.
	VersionV2 = "horde-streaming-receipt/v2"
)

// ReceiptVersion is the version the signing proxy signs.
const ReceiptVersion = VersionV2

// Stamp says who stamped a request with its time and id.
type Stamp string

const (
	// StampClient: the client sent X-Horde-Timestamp and X-Horde-Request-Id,
	// and the proxy checked the timestamp against its clock.
	StampClient Stamp = "client"
	// StampProxy: the client sent neither (an upstream client); the proxy
	// used its own receive time and made the request id, which it returns
	// in the X-Horde-Request-Id response header.
	StampProxy Stamp = "proxy"
)

// Limits of v2 values.
const (
	MaxRequestID   = 200
	MaxJobUUID     = 128
	MaxMethod      = 32
	MaxTarget      = 8192
	MaxContentType = 1024
)

// v2Keys is the order of a v2 blob's lines after the version.
var v2Keys = []string{"job_uuid", "request_id", "stamp", "timestamp_from", "timestamp_to", "method", "target",
	"request_content_type", "input_sha256", "status", "response_content_type", "output_sha256"}

var v1Keys = []string{"job_uuid", "request_id", "timestamp_from", "timestamp_to", "input_sha256", "output_sha256"}

// version reads the receipt's version; 0 is v1 (receipts kept as JSON
// before the field existed).
func (r *Receipt) version() int {
	if r.Version == 0 {
		return 1
	}
	return r.Version
}

// Blob returns the canonical bytes that are signed. A v2 receipt with a
// value the format forbids (see the Check functions) is refused.
func (r *Receipt) Blob() ([]byte, error) {
	switch r.version() {
	case 1:
		return r.blobV1(), nil
	case 2:
		if err := r.checkV2(); err != nil {
			return nil, err
		}
		return r.blobV2(), nil
	}
	return nil, fmt.Errorf("%w: unknown version %d", ErrReceipt, r.Version)
}

func (r *Receipt) blobV1() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\njob_uuid=%s\nrequest_id=%s\ntimestamp_from=%s\ntimestamp_to=%s\ninput_sha256=%s\noutput_sha256=%s\n",
		VersionV1, r.JobUUID, r.RequestID, stamp(r.TimestampFrom), stamp(r.TimestampTo), r.InputSHA256, r.OutputSHA256)
	return b.Bytes()
}

func (r *Receipt) blobV2() []byte {
	vals := r.v2Values()
	n := len(VersionV2) + 1
	for i, v := range vals {
		n += len(v2Keys[i]) + len(v) + 2
	}
	b := make([]byte, 0, n)
	b = append(b, VersionV2+"\n"...)
	for i, v := range vals {
		b = append(append(append(append(b, v2Keys[i]...), '='), v...), '\n')
	}
	return b
}

// v2Values are the receipt's values as a v2 blob writes them, in v2Keys order.
func (r *Receipt) v2Values() []string {
	return []string{r.JobUUID, r.RequestID, string(r.Stamp), stamp(r.TimestampFrom), stamp(r.TimestampTo), r.Method, r.Target,
		r.RequestContentType, r.InputSHA256, strconv.Itoa(r.Status), r.ResponseContentType, r.OutputSHA256}
}

func stamp(t time.Time) string { return t.UTC().Format(TimeFormat) }

// checkV2 applies each v2 field's rule; the error names the field.
func (r *Receipt) checkV2() error {
	checks := []struct {
		key string
		err error
	}{
		{"job_uuid", checkVisible(r.JobUUID, 1, MaxJobUUID, "")},
		{"request_id", CheckRequestID(r.RequestID)},
		{"stamp", checkStamp(r.Stamp)},
		{"method", CheckMethod(r.Method)},
		{"target", CheckTarget(r.Target)},
		{"request_content_type", CheckContentType(r.RequestContentType)},
		{"input_sha256", checkHex(r.InputSHA256)},
		{"status", checkStatus(r.Status)},
		{"response_content_type", CheckContentType(r.ResponseContentType)},
		{"output_sha256", checkHex(r.OutputSHA256)},
	}
	for _, c := range checks {
		if c.err != nil {
			return fmt.Errorf("%w: %s: %v", ErrReceipt, c.key, c.err)
		}
	}
	return nil
}

// CheckRequestID is the rule of request ids: 1 to 200 visible ASCII
// characters (0x21–0x7E) other than / ? # %, so an id stands in a URL path
// as it is.
func CheckRequestID(s string) error { return checkVisible(s, 1, MaxRequestID, "/?#%") }

// CheckMethod is the rule of methods: 1 to 32 HTTP token characters
// (RFC 9110 tchar).
func CheckMethod(s string) error {
	if len(s) == 0 || len(s) > MaxMethod {
		return fmt.Errorf("%d bytes, want 1 to %d", len(s), MaxMethod)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return fmt.Errorf("byte 0x%02x at %d is not an HTTP token character", c, i)
		}
	}
	return nil
}

// CheckTarget is the rule of request targets: the origin form (path and raw
// query, as on the request line), 1 to 8192 visible ASCII characters
// (0x21–0x7E) beginning with / and without #.
func CheckTarget(s string) error {
	if !strings.HasPrefix(s, "/") {
		return errors.New("does not begin with /")
	}
	return checkVisible(s, 1, MaxTarget, "#")
}

// CheckContentType is the rule of content types: the header's value as
// sent, 0 to 1024 printable ASCII characters (0x20–0x7E) with no space at
// either end; empty means no Content-Type header.
func CheckContentType(s string) error {
	if len(s) > MaxContentType {
		return fmt.Errorf("%d bytes, limit %d", len(s), MaxContentType)
	}
	if s != strings.TrimSpace(s) {
		return errors.New("space at an end")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return fmt.Errorf("byte 0x%02x at %d is not printable ASCII", s[i], i)
		}
	}
	return nil
}

func checkVisible(s string, minLen, maxLen int, forbidden string) error {
	if len(s) < minLen || len(s) > maxLen {
		return fmt.Errorf("%d bytes, want %d to %d", len(s), minLen, maxLen)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return fmt.Errorf("byte 0x%02x at %d is not visible ASCII", s[i], i)
		}
		if strings.IndexByte(forbidden, s[i]) >= 0 {
			return fmt.Errorf("%q at %d is not allowed", s[i], i)
		}
	}
	return nil
}

func checkStamp(s Stamp) error {
	if s != StampClient && s != StampProxy {
		return fmt.Errorf("%.20q is neither %s nor %s", s, StampClient, StampProxy)
	}
	return nil
}

func checkHex(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("%d characters, want 64", len(s))
	}
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return fmt.Errorf("not lowercase hex")
		}
	}
	return nil
}

func checkStatus(n int) error {
	if n < 100 || n > 999 {
		return fmt.Errorf("%d is not a three-digit HTTP status", n)
	}
	return nil
}

// ParseBlob reads a receipt blob of either version, insisting on the
// canonical form: exactly the bytes Blob would write for what it read.
func ParseBlob(blob []byte) (*Receipt, error) {
	if len(blob) == 0 || blob[len(blob)-1] != '\n' {
		return nil, fmt.Errorf("%w: blob does not end with a line break", ErrReceipt)
	}
	lines := strings.Split(string(blob[:len(blob)-1]), "\n")
	var r *Receipt
	var err error
	switch lines[0] {
	case VersionV1:
		r, err = parseV1(lines[1:])
	case VersionV2:
		r, err = parseV2(lines[1:])
	default:
		return nil, fmt.Errorf("%w: first line %.40q is not %s or %s", ErrReceipt, lines[0], VersionV2, VersionV1)
	}
	if err != nil {
		return nil, err
	}
	if b, err := r.Blob(); err != nil || !bytes.Equal(b, blob) {
		return nil, fmt.Errorf("%w: blob is not in canonical form", ErrReceipt)
	}
	return r, nil
}

// values reads lines "key=value" in the order keys gives.
func values(lines, keys []string) (map[string]string, error) {
	if len(lines) != len(keys) {
		return nil, fmt.Errorf("%w: %d lines, want %d", ErrReceipt, len(lines)+1, len(keys)+1)
	}
	vals := make(map[string]string, len(keys))
	for i, line := range lines {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k != keys[i] {
			return nil, fmt.Errorf("%w: line %d is %.40q, want %s=…", ErrReceipt, i+2, line, keys[i])
		}
		vals[k] = v
	}
	return vals, nil
}

func parseTimes(r *Receipt, vals map[string]string) error {
	var err error
	if r.TimestampFrom, err = time.Parse(TimeFormat, vals["timestamp_from"]); err != nil {
		return fmt.Errorf("%w: timestamp_from: %v", ErrReceipt, err)
	}
	if r.TimestampTo, err = time.Parse(TimeFormat, vals["timestamp_to"]); err != nil {
		return fmt.Errorf("%w: timestamp_to: %v", ErrReceipt, err)
	}
	return nil
}

func parseV1(lines []string) (*Receipt, error) {
	vals, err := values(lines, v1Keys)
	if err != nil {
		return nil, err
	}
	r := &Receipt{Version: 1, JobUUID: vals["job_uuid"], RequestID: vals["request_id"], InputSHA256: vals["input_sha256"], OutputSHA256: vals["output_sha256"]}
	return r, parseTimes(r, vals)
}

func parseV2(lines []string) (*Receipt, error) {
	vals, err := values(lines, v2Keys)
	if err != nil {
		return nil, err
	}
	r := &Receipt{Version: 2, JobUUID: vals["job_uuid"], RequestID: vals["request_id"], Stamp: Stamp(vals["stamp"]),
		Method: vals["method"], Target: vals["target"], RequestContentType: vals["request_content_type"], InputSHA256: vals["input_sha256"],
		ResponseContentType: vals["response_content_type"], OutputSHA256: vals["output_sha256"]}
	st := vals["status"]
	if r.Status, err = strconv.Atoi(st); err != nil || strconv.Itoa(r.Status) != st {
		return nil, fmt.Errorf("%w: status: %.20q is not a decimal number", ErrReceipt, st)
	}
	if err := parseTimes(r, vals); err != nil {
		return nil, err
	}
	if err := r.checkV2(); err != nil {
		return nil, err
	}
	return r, nil
}

// requestDigestVersion is the first line of the text RequestDigest hashes.
const requestDigestVersion = "horde-request/v1"

// RequestDigest is the hex sha256 of the canonical text of one request —
// its method, target, content type and the sha256 (hex) of its body — as a
// v2 receipt binds it:
//
//	horde-request/v1\nmethod=…\ntarget=…\ncontent_type=…\ninput_sha256=…\n
//
// A verdict of cheating records the digest of the request it replayed, so
// whoever holds the evidence can check it is the very request signed.
func RequestDigest(method, target, contentType, inputSHA256 string) string {
	return sha256Hex([]byte(requestDigestVersion + "\nmethod=" + method + "\ntarget=" + target + "\ncontent_type=" + contentType +
		"\ninput_sha256=" + inputSHA256 + "\n"))
}

// RequestDigest is the digest of the request a v2 receipt binds ("" for v1,
// which binds no request).
func (r *Receipt) RequestDigest() string {
	if r.version() != 2 {
		return ""
	}
	return RequestDigest(r.Method, r.Target, r.RequestContentType, r.InputSHA256)
}
