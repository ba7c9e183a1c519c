package pyjson

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPythonVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/python_json_dumps_sorted.json")
	if err != nil {
		t.Fatal(err)
	}
	var vecs []struct{ In, Out string }
	if err := json.Unmarshal(b, &vecs); err != nil {
		t.Fatal(err)
	}
	if len(vecs) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vecs {
		got, err := Canonical([]byte(v.In))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != v.Out {
			t.Errorf("Canonical(%s)\n got %s\nwant %s", v.In, got, v.Out)
		}
	}
}

func TestFloatRepr(t *testing.T) {
	for f, want := range map[float64]string{
		0.1: "0.1", 1.5: "1.5", 1e20: "1e+20", 1e16: "1e+16", 1e15: "1000000000000000.0",
		123456789.125: "123456789.125", -2.5e-05: "-2.5e-05", 0.0001: "0.0001", 3: "3.0",
		1e-07: "1e-07", 1.2345e-300: "1.2345e-300", 0: "0.0",
	} {
		if got := FloatRepr(f); got != want {
			t.Errorf("FloatRepr(%v) = %s, want %s", f, got, want)
		}
	}
}

func TestTime(t *testing.T) {
	for in, want := range map[time.Time]string{
		time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC):                 "2020-01-01T00:00:00Z",
		time.Date(2020, 1, 1, 0, 0, 0, 123456789, time.UTC):         "2020-01-01T00:00:00.123456Z",
		time.Date(2020, 1, 1, 0, 0, 0, 120000000, time.UTC):         "2020-01-01T00:00:00.120000Z",
		time.Date(2020, 1, 1, 2, 0, 0, 0, time.FixedZone("", 7200)): "2020-01-01T00:00:00Z",
	} {
		if got := Time(in); got != want {
			t.Errorf("Time(%v) = %s, want %s", in, got, want)
		}
	}
	if _, err := ParseTime("2020-01-01T00:00:00.120000+02:00"); err != nil {
		t.Error(err)
	}
	for _, s := range []string{"9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01"} {
		if _, err := ParseTime(s); !errors.Is(err, ErrUnwritable) {
			t.Errorf("ParseTime(%s) err = %v, want ErrUnwritable (outside years 1-9999 in UTC)", s, err)
		}
	}
}

// TestRefusesUnwritable: what Canonical cannot write back (issue #15 row 13,
// found by FuzzCanonical: 1e1000 became Infinity) is refused with a clear
// error, never signed.
func TestRefusesUnwritable(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{`1e1000`, "overflows a float64"},
		{`-1e1000`, "overflows a float64"},
		{`{"a": [1E400]}`, "overflows a float64"},
		{`1.8e308`, "overflows a float64"},
		{strings.Repeat("7", MaxIntDigits+1), "integer of 4301 digits"},
		{"-" + strings.Repeat("7", MaxIntDigits+1), "integer of 4301 digits"},
		{"\"\xff\"", "not valid UTF-8"},
		{`"\ud800"`, `lone high surrogate \ud800`},
		{`"\udc00"`, `lone low surrogate \udc00`},
		{`"\ud800x"`, "lone high surrogate"},
		{`"\ud800\u0041"`, "lone high surrogate"},
		{`{"\uDBFF": 1}`, "lone high surrogate"},
	} {
		_, err := Canonical([]byte(tt.in))
		if !errors.Is(err, ErrUnwritable) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Canonical(%.50s) err = %v, want ErrUnwritable saying %q", tt.in, err, tt.want)
		}
	}
	for _, in := range []string{`NaN`, `Infinity`, `-Infinity`, `[1,]`} {
		if _, err := Canonical([]byte(in)); err == nil {
			t.Errorf("Canonical(%s) accepted", in)
		}
	}
	for _, v := range []any{math.NaN(), math.Inf(1), []float64{math.Inf(-1)}} {
		if _, err := Marshal(v); err == nil {
			t.Errorf("Marshal(%v) accepted", v)
		}
	}
	// What Python can read and write is kept.
	for in, want := range map[string]string{
		`1e308`:                         "1e+308",
		`1e-400`:                        "0.0",
		`-0`:                            "0",
		strings.Repeat("9", 4300):       strings.Repeat("9", 4300),
		`"\ud83d\ude00 \u00e9"`:         `"\ud83d\ude00 \u00e9"`,
		`"\\ud800"`:                     `"\\ud800"`,
		`{"b": "\uD83D\uDE00", "a": 1}`: `{"a": 1, "b": "\ud83d\ude00"}`,
	} {
		got, err := Canonical([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("Canonical(%.50s) = %.50s, %v; want %.50s", in, got, err, want)
		}
	}
}

func FuzzCanonical(f *testing.F) {
	f.Add([]byte(`{"b": [1, 2.5, "x\u00e9"], "a": null}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonical(in)
		if err != nil {
			return
		}
		if !json.Valid(out) {
			t.Fatalf("canonical output %q is not JSON", out)
		}
		// The canonical form is itself JSON and a fixed point.
		again, err := Canonical(out)
		if err != nil {
			t.Fatalf("canonical output %q does not re-parse: %v", out, err)
		}
		if string(again) != string(out) {
			t.Fatalf("not a fixed point: %q -> %q", out, again)
		}
	})
}
