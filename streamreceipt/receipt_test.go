package streamreceipt

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestVerifyEvidence(t *testing.T) {
	key, cert, err := NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := PublicKey(cert)
	in, out := []byte("question"), []byte("answer")
	hi, ho := sha256.Sum256(in), sha256.Sum256(out)
	r := &Receipt{JobUUID: "j1", RequestID: "r1", TimestampFrom: time.Now().UTC().Truncate(time.Microsecond),
		TimestampTo: time.Now().UTC().Truncate(time.Microsecond), InputSHA256: hex.EncodeToString(hi[:]), OutputSHA256: hex.EncodeToString(ho[:])}
	blob, sig := Sign(key, r)
	if _, err := VerifyEvidence(pub, "j1", blob, sig, in, out); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		job      string
		in, out  []byte
		contains string
	}{
		"other job":      {"j2", in, out, "not j2"},
		"other request":  {"j1", []byte("other"), out, "input_sha256"},
		"other response": {"j1", in, []byte("other"), "output_sha256"},
	} {
		if _, err := VerifyEvidence(pub, tc.job, blob, sig, tc.in, tc.out); !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), tc.contains) {
			t.Errorf("%s: %v", name, err)
		}
	}
	otherKey, _, _ := NewKeyPair("x", time.Hour)
	_, sig2 := Sign(otherKey, r)
	if _, err := VerifyEvidence(pub, "j1", blob, sig2, in, out); !errors.Is(err, ErrReceipt) {
		t.Errorf("other key: %v", err)
	}
	if _, err := ParseBlob([]byte("horde-streaming-receipt/v1\njob_uuid=x\n")); !errors.Is(err, ErrReceipt) {
		t.Errorf("short blob: %v", err)
	}
}

// A receipt's signature re-encoded (unused low bits of the last base64
// character set, a line break) is refused: each receipt has one text.
func TestReEncodedReceiptRefused(t *testing.T) {
	key, cert, err := NewKeyPair("job", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := PublicKey(cert)
	in, out := []byte("q"), []byte("a")
	hi, ho := sha256.Sum256(in), sha256.Sum256(out)
	r := &Receipt{JobUUID: "j1", RequestID: "r1", TimestampFrom: time.Now().UTC().Truncate(time.Microsecond),
		TimestampTo: time.Now().UTC().Truncate(time.Microsecond), InputSHA256: hex.EncodeToString(hi[:]), OutputSHA256: hex.EncodeToString(ho[:])}
	blob, sig := Sign(key, r)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	i := strings.IndexByte(sig, '=') - 1 // 64 bytes: the last character holds 4 unused bits
	lowBits := sig[:i] + string(alphabet[strings.IndexByte(alphabet, sig[i])|1]) + sig[i+1:]
	for name, tc := range map[string][2]string{
		"signature low bits":    {blob, lowBits},
		"signature line break":  {blob, sig[:10] + "\n" + sig[10:]},
		"blob line break":       {blob[:8] + "\r\n" + blob[8:], sig},
		"blob trailing newline": {blob + "\n", sig},
	} {
		if tc[0] == blob && tc[1] == sig {
			t.Fatalf("%s: not a re-encoding", name)
		}
		if _, err := VerifyEvidence(pub, "j1", tc[0], tc[1], in, out); !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), "canonical") {
			t.Errorf("%s: VerifyEvidence err = %v", name, err)
		}
		want := Expect{JobUUID: "j1", RequestID: "r1", InputSHA256: r.InputSHA256, OutputSHA256: r.OutputSHA256,
			Sent: r.TimestampFrom, Received: r.TimestampTo, Skew: time.Second}
		if _, err := Verify(pub, tc[0], tc[1], want); !errors.Is(err, ErrReceipt) || !strings.Contains(err.Error(), "canonical") {
			t.Errorf("%s: Verify err = %v", name, err)
		}
	}
	if _, err := VerifyEvidence(pub, "j1", blob, sig, in, out); err != nil {
		t.Fatalf("canonical receipt: %v", err)
	}
}

// FuzzParseBlob: a blob is accepted only in its canonical form.
func FuzzParseBlob(f *testing.F) {
	r := &Receipt{JobUUID: "j", RequestID: "r", TimestampFrom: time.Unix(1, 0), TimestampTo: time.Unix(2, 5000), InputSHA256: "aa", OutputSHA256: "bb"}
	v1, _ := r.Blob()
	f.Add(v1)
	f.Add([]byte("horde-streaming-receipt/v1\njob_uuid=x\n"))
	for _, g := range goldenReceipts {
		b, _ := g.r.Blob()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		got, err := ParseBlob(blob)
		if err != nil {
			if !errors.Is(err, ErrReceipt) {
				t.Fatalf("error %v is not ErrReceipt", err)
			}
			return
		}
		if again, err := got.Blob(); err != nil || !bytes.Equal(again, blob) {
			t.Fatalf("accepted a non-canonical blob %q", blob)
		}
	})
}

// FuzzVerifyEvidence: any receipt text and signature text is refused unless
// the job's key signed it; nothing panics.
func FuzzVerifyEvidence(f *testing.F) {
	key, cert, err := NewKeyPair("job", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := PublicKey(cert)
	r := &Receipt{JobUUID: "j", RequestID: "r", TimestampFrom: time.Unix(1, 0), TimestampTo: time.Unix(2, 0)}
	blob, sig := Sign(key, r)
	f.Add(blob, sig)
	f.Add(blob, "")
	f.Fuzz(func(t *testing.T, blob64, sig64 string) {
		if _, err := VerifyEvidence(pub, "j", blob64, sig64, nil, nil); err == nil {
			if !ed25519.Verify(pub, mustB64(t, blob64), mustB64(t, sig64)) {
				t.Fatalf("verified a receipt the key did not sign")
			}
		}
		exp := Expect{JobUUID: "j", RequestID: "r", Sent: time.Unix(0, 0), Received: time.Unix(3, 0), Skew: time.Second}
		if got, err := Verify(pub, blob64, sig64, exp); err == nil && got == nil {
			t.Fatalf("verified without a receipt")
		}
	})
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzPublicKey: any certificate text is refused with an error or gives an
// ed25519 key; nothing panics.
func FuzzPublicKey(f *testing.F) {
	_, cert, err := NewKeyPair("job", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(cert)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, pemBytes []byte) {
		pub, err := PublicKey(pemBytes)
		if err == nil && len(pub) != ed25519.PublicKeySize {
			t.Fatalf("key of %d bytes", len(pub))
		}
	})
}
