package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/horde-compute/horde/sig"
)

// TestJobSignatureReEncoded is issue #15 row 6: a job's client signature
// with the unused low bits of its last base64 character set decodes to the
// same bytes under a lenient decoder; Decode refuses it, and the canonical
// text gives the bytes that jobs are deduplicated on.
func TestJobSignatureReEncoded(t *testing.T) {
	k, err := sig.FromSeed(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	spec := JobSpec{ExecutorClass: ClassTest, DockerImage: "img", ExecutionTimeLimit: 60}
	payload, err := spec.SignedBytes()
	if err != nil {
		t.Fatal(err)
	}
	const ts = 1767323045123456789
	var raw sig.Signature
	copy(raw[:], k.Sign(SignedMessage(ts, payload)))
	good := Signature{SignatureType: SignatureTypeBittensor, Signatory: k.SS58(), TimestampNS: ts, Signature: raw.Base64()}
	got, err := good.Decode()
	if err != nil || got != raw {
		t.Fatalf("canonical signature: %v", err)
	}
	if err := got.Verify(k.Public(), SignedMessage(ts, payload)); err != nil {
		t.Fatal(err)
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	keys := map[string]bool{}
	for bits := 1; bits < 16; bits++ { // the 15 copies of issue #15 row 6
		b64 := []byte(good.Signature)
		b64[85] = alphabet[strings.IndexByte(alphabet, b64[85])|bits]
		re := good
		re.Signature = string(b64)
		if _, err := re.Decode(); !errors.Is(err, sig.ErrBadSignature) || !strings.Contains(err.Error(), "unused low bits") {
			t.Errorf("low bits %04b: err = %v, want refused", bits, err)
		}
		keys[re.Signature] = true
	}
	if len(keys) != 15 {
		t.Fatalf("%d distinct re-encodings, want 15", len(keys))
	}
}

// TestAuthMessagePublicKeyCase: the facilitator auth's public key has one text.
func TestAuthMessagePublicKeyCase(t *testing.T) {
	pk := strings.Repeat("ab", 32)
	m := V0HordeAuthenticationRequest{PublicKey: pk, Timestamp: 1, Nonce: "n"}
	if _, err := m.AuthMessage(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{strings.ToUpper(pk), "0x" + pk, pk[:62], pk + "00", strings.Repeat("zz", 32)} {
		m.PublicKey = bad
		if _, err := m.AuthMessage(); err == nil {
			t.Errorf("public_key %q accepted", bad)
		}
	}
}

// FuzzSignedBytes: a spec that decodes has SignedFields; its request body
// parses back to a spec with the same SignedFields, and so does the
// V2JobRequest that carries it: client, facilitator and validator sign and
// verify the same bytes.
func FuzzSignedBytes(f *testing.F) {
	f.Add([]byte(`{"executor_class":"c","docker_image":"i","args":["\u00e9\ud83d\ude00","<&>"],"env":{"b":"1","a":"2"},"execution_time_limit":10}`))
	f.Add([]byte(`{"executor_class":"c","docker_image":"i","volume":{"volume_type":"multi_volume","volumes":[{"volume_type":"huggingface_volume","repo_id":"r","allow_patterns":["*"]}]},"output_upload":{"output_upload_type":"single_file_post","url":"u","relative_path":"p","form_fields":{"z":"1","a":"2"}}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		var spec JobSpec
		if json.Unmarshal(in, &spec) != nil {
			return
		}
		spec.SignedFields = ""
		j, err := spec.SignedFieldsJSON()
		if err != nil {
			return // a volume or upload type that cannot be listed
		}
		if _, err := SignedPayload(j); err != nil {
			t.Fatalf("SignedFields %q has no payload: %v", j, err)
		}
		body, err := spec.RequestBody()
		if err != nil {
			t.Fatalf("no request body: %v", err)
		}
		if jb, err := SignedFieldsOfRequest(body); err != nil || !bytes.Equal(jb, j) {
			t.Fatalf("body's SignedFields %q, %v; spec's %q", jb, err, j)
		}
		if parsed, err := ParseJobRequest(body); err == nil {
			if parsed.SignedFields != string(j) {
				t.Fatalf("parsed SignedFields %q, want %q", parsed.SignedFields, j)
			}
		}
		msg, err := Encode(&V2JobRequest{UUID: "u", JobSpec: spec})
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		back, err := Decode(msg)
		if err != nil {
			t.Fatalf("decode %s: %v", msg, err)
		}
		if got := back.(*V2JobRequest).SignedFields; got != string(j) {
			t.Fatalf("validator's SignedFields %q, want %q", got, j)
		}
	})
}

// FuzzAuthMessage: the facilitator auth's signed bytes are the raw key and
// its timestamp and nonce, and only a canonical key text has them.
func FuzzAuthMessage(f *testing.F) {
	f.Add(strings.Repeat("ab", 32), int64(1700000000), "nonce")
	f.Add(strings.Repeat("AB", 32), int64(-1), "x")
	f.Fuzz(func(t *testing.T, pk string, ts int64, nonce string) {
		m := V0HordeAuthenticationRequest{PublicKey: pk, Timestamp: ts, Nonce: nonce}
		b, err := m.AuthMessage()
		if err != nil {
			return
		}
		if len(b) < 32 || !strings.HasPrefix(string(b[32:]), ":") {
			t.Fatalf("message %q", b)
		}
		var k sig.PublicKey
		copy(k[:], b)
		if k.Hex() != pk {
			t.Fatalf("public_key %q accepted, canonical %q", pk, k.Hex())
		}
	})
}

// FuzzJobSignature: Decode accepts only the canonical text of the bytes it returns.
func FuzzJobSignature(f *testing.F) {
	f.Add(strings.Repeat("A", 85) + "A==")
	f.Add("")
	f.Fuzz(func(t *testing.T, text string) {
		s := Signature{Signature: text}
		got, err := s.Decode()
		if err == nil && got.Base64() != text {
			t.Fatalf("accepted %q, canonical %q", text, got.Base64())
		}
	})
}
