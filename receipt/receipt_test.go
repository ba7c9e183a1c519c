package receipt

import (
	"encoding/json"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

func key(t *testing.T, path string) *sig.Hotkey {
	t.Helper()
	k, err := sig.LoadKeyfile("../sig/testdata/wallets/"+path+"/hotkeys/default", "")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// The payload of the Python vector, built from Go types, gives Python's bytes.
func TestStartedBytesMatchPython(t *testing.T) {
	p := &StartedPayload{
		Base: Base{JobUUID: "3342460e-4a99-438b-8757-795f4cb348dd",
			MinerHotkey:     "5FYwNgYu5Wj7Vv49KtC3gXa1W1dn2BnMBGNKGrLy8pX9i4T7",
			ValidatorHotkey: "5CDYBwxDZwXnYSp7E39Vy92MVbCMtcK2i953oRxDm9Veko7M",
			Timestamp:       At(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))},
		ExecutorClass: "always_on.llm.a6000", TTL: 30,
	}
	b, err := Bytes(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"executor_class": "always_on.llm.a6000", "is_organic": false, "job_uuid": "3342460e-4a99-438b-8757-795f4cb348dd", "miner_hotkey": "5FYwNgYu5Wj7Vv49KtC3gXa1W1dn2BnMBGNKGrLy8pX9i4T7", "receipt_type": "JobStartedReceipt", "timestamp": "2020-01-01T00:00:00Z", "ttl": 30, "validator_hotkey": "5CDYBwxDZwXnYSp7E39Vy92MVbCMtcK2i953oRxDm9Veko7M"}`
	if string(b) != want {
		t.Errorf("bytes\n got %s\nwant %s", b, want)
	}
}

func TestFinishedBytes(t *testing.T) {
	p := &FinishedPayload{
		Base:        Base{JobUUID: "u", MinerHotkey: "m", ValidatorHotkey: "v", Timestamp: At(time.Date(2020, 1, 1, 0, 0, 0, 120000000, time.UTC))},
		TimeStarted: At(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)), TimeTookUS: 1500000, ScoreStr: "1.5",
	}
	b, err := Bytes(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"block_numbers": [], "job_uuid": "u", "miner_hotkey": "m", "receipt_type": "JobFinishedReceipt", "score_str": "1.5", "time_started": "2020-01-01T00:00:00Z", "time_took_us": 1500000, "timestamp": "2020-01-01T00:00:00.120000Z", "validator_hotkey": "v"}`
	if string(b) != want {
		t.Errorf("bytes\n got %s\nwant %s", b, want)
	}
}

func TestSignVerify(t *testing.T) {
	v, m := key(t, "validator"), key(t, "miner")
	p := &AcceptedPayload{Base: Base{JobUUID: "j1", MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: At(time.Now())},
		TimeAccepted: At(time.Now()), TTL: 300}
	vs, err := Sign(v, p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(p, vs)
	if err != nil {
		t.Fatal(err)
	}
	if r.MinerSignature, err = Sign(m, p); err != nil {
		t.Fatal(err)
	}
	if err := r.Verify(); err != nil {
		t.Fatalf("valid receipt: %v", err)
	}
	swapped := r
	swapped.MinerSignature = vs
	if err := swapped.Verify(); !errors.Is(err, ErrInvalid) {
		t.Errorf("miner signature by validator key: err = %v", err)
	}
	altered := r
	altered.Payload = []byte(string(r.Payload[:len(r.Payload)-4]) + "301}")
	if err := altered.Verify(); !errors.Is(err, ErrInvalid) {
		t.Errorf("altered ttl: err = %v", err)
	}
}

// benchReceipt is a stored finished receipt signed by a validator and a
// miner, with the keys and the signed bytes.
func benchReceipt(b *testing.B) (Receipt, []byte, [2]sig.PublicKey, [2][]byte) {
	v, _ := sig.FromSeed(sig.RandomSeed())
	m, _ := sig.FromSeed(sig.RandomSeed())
	p := &FinishedPayload{Base: Base{JobUUID: "j", MinerHotkey: m.SS58(), ValidatorHotkey: v.SS58(), Timestamp: At(time.Now())},
		TimeStarted: At(time.Now()), TimeTookUS: 1000, ScoreStr: "1"}
	vs, _ := Sign(v, p)
	r, _ := New(p, vs)
	r.MinerSignature, _ = Sign(m, p)
	msg, err := Bytes(p)
	if err != nil {
		b.Fatal(err)
	}
	return r, msg, [2]sig.PublicKey{v.Public(), m.Public()}, [2][]byte{v.Sign(msg), m.Sign(msg)}
}

// BenchmarkRawVerify is the floor of BenchmarkVerifyReceipt: the two raw
// sr25519 verifications of a receipt's signed bytes, nothing else.
func BenchmarkRawVerify(b *testing.B) {
	_, msg, pubs, sigs := benchReceipt(b)
	start, cpu := time.Now(), cpuTime()
	for b.Loop() {
		for i := range pubs {
			if err := sig.Verify(pubs[i], msg, sigs[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportRate(b, start, cpu)
}

// BenchmarkVerifyReceipt measures how many stored receipts (validator and
// miner signatures, sr25519) one core verifies per second: decoding the
// payload, its canonical bytes, both addresses and signatures, and the two
// verifications (compare BenchmarkRawVerify).
func BenchmarkVerifyReceipt(b *testing.B) {
	r, _, _, _ := benchReceipt(b)
	start, cpu := time.Now(), cpuTime()
	for b.Loop() {
		if err := r.Verify(); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, start, cpu)
}

// BenchmarkVerifyVsRaw alternates the two, receipt by receipt, so that a
// busy machine slows both alike, and reports their rates and ratio.
func BenchmarkVerifyVsRaw(b *testing.B) {
	r, msg, pubs, sigs := benchReceipt(b)
	var raw, full time.Duration
	for b.Loop() {
		t0 := time.Now()
		for i := range pubs {
			if err := sig.Verify(pubs[i], msg, sigs[i]); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		if err := r.Verify(); err != nil {
			b.Fatal(err)
		}
		raw, full = raw+t1.Sub(t0), full+time.Since(t1)
	}
	b.ReportMetric(float64(b.N)/raw.Seconds(), "raw-receipts/s")
	b.ReportMetric(float64(b.N)/full.Seconds(), "receipts/s")
	b.ReportMetric(raw.Seconds()/full.Seconds(), "ratio")
}

// reportRate reports receipts per second of wall time and per second of
// the process's CPU time (steadier on a shared machine).
func reportRate(b *testing.B, start time.Time, cpu time.Duration) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "receipts/s")
	b.ReportMetric(float64(b.N)/(cpuTime()-cpu).Seconds(), "receipts/cpu-s")
}

// cpuTime is the process's CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// FuzzReceipt: any stored receipt that decodes has signing bytes; they are
// canonical JSON and a fixed point (decoding them gives the same bytes), and
// verifying it never panics nor passes with a signature that was not made.
func FuzzReceipt(f *testing.F) {
	f.Add([]byte(`{"receipt_type":"JobStartedReceipt","payload":{"job_uuid":"j","miner_hotkey":"m","validator_hotkey":"v","timestamp":"2020-01-01T00:00:00Z","executor_class":"c","is_organic":true,"ttl":30},"validator_signature":"0x00"}`))
	f.Add([]byte(`{"receipt_type":"JobFinishedReceipt","payload":{"job_uuid":"j","timestamp":"2020-01-01T00:00:00.120000+02:00","time_started":"2020-01-01T00:00:00Z","time_took_us":1,"score_str":"1.5","block_numbers":[1,2]},"validator_signature":"","miner_signature":"0x"}`))
	// testdata/fuzz/FuzzReceipt holds what found bugs: a time that is year
	// 10000 in UTC made signing bytes no one could read back.
	f.Fuzz(func(t *testing.T, line []byte) {
		var r Receipt
		if json.Unmarshal(line, &r) != nil {
			return
		}
		p, err := r.Decode()
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("decode error %v is not ErrInvalid", err)
			}
			return
		}
		b, err := Bytes(p)
		if err != nil {
			if _, refErr := pyjson.Marshal(p); refErr == nil {
				t.Fatalf("Bytes refused what pyjson writes: %v", err)
			}
			return // refused, with an error, is fine
		}
		if ref, err := pyjson.Marshal(p); err != nil || string(ref) != string(b) {
			t.Fatalf("signing bytes %s are not pyjson's %s (%v)", b, ref, err)
		}
		if c, err := pyjson.Canonical(b); err != nil || string(c) != string(b) {
			t.Fatalf("signing bytes %s are not canonical: %v", b, err)
		}
		again, err := Receipt{Type: r.Type, Payload: b}.Decode()
		if err != nil {
			t.Fatalf("signing bytes %s do not decode: %v", b, err)
		}
		b2, err := Bytes(again)
		if err != nil || string(b2) != string(b) {
			t.Fatalf("signing bytes are not a fixed point:\n%s\n%s (%v)", b, b2, err)
		}
		if err := r.Verify(); err == nil {
			t.Fatalf("a fuzzed receipt verified: %s", line)
		}
	})
}

// The directly written canonical bytes are pyjson's, for every payload type
// and awkward strings and times.
func TestCanonicalMatchesPyjson(t *testing.T) {
	at := At(time.Date(2024, 2, 29, 23, 59, 59, 123456000, time.FixedZone("x", 3600)))
	whole := At(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))
	odd := "q\"\\\n\t\x01<>&é€😀\xff"
	for name, p := range map[string]Payload{
		"started":         &StartedPayload{Base: Base{JobUUID: "j", MinerHotkey: odd, ValidatorHotkey: "v", Timestamp: at}, ExecutorClass: "c", IsOrganic: true, TTL: -3},
		"accepted":        &AcceptedPayload{Base: Base{JobUUID: odd, Timestamp: whole}, TimeAccepted: at, TTL: 0},
		"finished":        &FinishedPayload{Base: Base{ValidatorHotkey: odd, Timestamp: at}, TimeStarted: whole, TimeTookUS: 1 << 60, ScoreStr: "1.5", BlockNumbers: []int64{1, -2, 3}},
		"finished, empty": &FinishedPayload{},
	} {
		p.base()
		want, err := pyjson.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		got, err := canonical(p)
		if err != nil || string(got) != string(want) {
			t.Errorf("%s:\n got %s (%v)\nwant %s", name, got, err, want)
		}
	}
	if _, err := canonical(&StartedPayload{Base: Base{Timestamp: Time{time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}}); err == nil {
		t.Error("year 10000 has canonical bytes")
	}
}
