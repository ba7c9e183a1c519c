package receipt

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// upstreamLine is a Receipt as upstream's model_dump_json writes it on a page
// (from ../shared/vectors/upstream/messages.jsonl, the busy decline's receipt).
const upstreamLine = `{"payload":{"job_uuid":"7b1c5e2a-0000-4000-8000-000000000001","miner_hotkey":"5ExZX4Jrhy8svUAzBVDKkHUG1QY1vvbgdDqgw1wF3pFws3mD","validator_hotkey":"5H728gLgx4yuCSVEwGCAfLo3RtzTau9F6cTNqNJtrqqjACWq","timestamp":"2026-01-02T03:04:05.123456Z","receipt_type":"JobStartedReceipt","executor_class":"always_on.gpu-24gb","is_organic":true,"ttl":300},"validator_signature":"0xabababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab","miner_signature":"0xabababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab"}`

func TestPageLineRoundTripsUpstreamBytes(t *testing.T) {
	r, err := ParseLine([]byte(upstreamLine + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Type != JobStarted || r.MinerSignature == "" {
		t.Fatalf("parsed %+v", r)
	}
	b, err := MarshalLine(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != upstreamLine+"\n" {
		t.Errorf("line\n got %s\nwant %s", b, upstreamLine)
	}
}

func TestPageLineSignedRoundTrip(t *testing.T) {
	v, m := key(t, "validator"), key(t, "miner")
	p := &FinishedPayload{Base: Base{JobUUID: "j", MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: At(time.Now())},
		TimeStarted: At(time.Now()), TimeTookUS: 7, ScoreStr: "1"}
	vs, _ := Sign(v, p)
	ms, _ := Sign(m, p)
	r, err := New(p, vs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := MarshalLine(r); !errors.Is(err, ErrInvalid) {
		t.Errorf("line without the miner's signature: %v", err)
	}
	r.MinerSignature = ms
	b, err := MarshalLine(r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseLine(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.Verify(); err != nil {
		t.Fatal(err)
	}
}

func TestParseLineRefusesWhatUpstreamRefuses(t *testing.T) {
	for name, l := range map[string]string{
		"no miner signature": strings.Replace(upstreamLine, `,"miner_signature":"0xabababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab"`, "", 1),
		"unknown type":       strings.Replace(upstreamLine, `"JobStartedReceipt"`, `"JobFooReceipt"`, 1),
		"missing ttl":        strings.Replace(upstreamLine, `,"ttl":300`, "", 1),
		"half a line":        upstreamLine[:100],
		"empty":              "",
	} {
		if _, err := ParseLine([]byte(l)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestPages(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	p := PageAt(at)
	if want := at.Unix() / 300; p != want {
		t.Fatalf("page %d, want %d", p, want)
	}
	if s := PageStart(p); s.After(at) || !s.Add(PageDuration).After(at) {
		t.Errorf("page %d starts %v, not holding %v", p, s, at)
	}
	if PageAt(PageStart(p)) != p || PageAt(PageStart(p+1).Add(-time.Nanosecond)) != p {
		t.Error("page edges")
	}
	if got := PagePath(p); got != "/receipts/5891076.jsonl" {
		t.Errorf("path %s", got)
	}
	if got, ok := ParsePagePath(PagePath(p)); !ok || got != p {
		t.Errorf("parse %d %v", got, ok)
	}
	for _, bad := range []string{"/receipts/", "/receipts/.jsonl", "/receipts/01.jsonl", "/receipts/-1.jsonl", "/receipts/+1.jsonl", "/receipts/1.json", "/receipts/1.jsonl.gz", "/x/1.jsonl", "/receipts/99999999999999999999.jsonl"} {
		if _, ok := ParsePagePath(bad); ok {
			t.Errorf("%s parsed", bad)
		}
	}
}

func TestSplitLinesKeepsAPartialLine(t *testing.T) {
	lines, used := SplitLines([]byte("a\nbb\nccc"))
	if len(lines) != 2 || string(lines[1]) != "bb" || used != 5 {
		t.Errorf("%q %d", lines, used)
	}
	if lines, used := SplitLines(nil); lines != nil || used != 0 {
		t.Errorf("%q %d", lines, used)
	}
}

func TestCursor(t *testing.T) {
	c := Cursor{Page: 5893696, Offset: 1234}
	got, err := ParseCursor(c.String())
	if err != nil || got != c || c.String() != "5893696:1234" {
		t.Errorf("%v %v %s", got, err, c)
	}
	if z, err := ParseCursor(""); err != nil || z != (Cursor{}) {
		t.Errorf("empty: %v %v", z, err)
	}
	for _, bad := range []string{"1", "a:1", "1:-2", "-1:0", "1:2:3"} {
		if _, err := ParseCursor(bad); !errors.Is(err, ErrCursor) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}
