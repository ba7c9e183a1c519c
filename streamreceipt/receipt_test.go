package streamreceipt

import (
	"crypto/sha256"
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
