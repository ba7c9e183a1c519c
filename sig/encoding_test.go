package sig

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"strings"
	"testing"
)

// testSig signs msg with a fixed key and returns the signature with its three wire forms.
func testSig(t testing.TB, msg []byte) (*Hotkey, Signature) {
	t.Helper()
	k, err := FromSeed(make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	var s Signature
	copy(s[:], k.Sign(msg))
	return k, s
}

// lowBitsSet flips the unused low bits of the last base64 character before
// the padding: the bytes decode the same under a lenient decoder.
func lowBitsSet(b64 string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	i := strings.IndexByte(b64, '=') - 1
	v := strings.IndexByte(alphabet, b64[i])
	return b64[:i] + string(alphabet[v|0x0f]) + b64[i+1:]
}

// nonCanonicalS returns s with its scalar s replaced by s+ℓ: the same
// signature to a verifier that reduces s, another encoding of it otherwise.
func nonCanonicalS(s Signature) Signature {
	l, _ := new(big.Int).SetString("7237005577332262213973186563042994240857116359379907606001950938285454250989", 10)
	le := make([]byte, 32)
	copy(le, s[32:])
	le[31] &= 0x7f
	for i, j := 0, 31; i < j; i, j = i+1, j-1 {
		le[i], le[j] = le[j], le[i]
	}
	v := new(big.Int).Add(new(big.Int).SetBytes(le), l)
	be := v.FillBytes(make([]byte, 32))
	out := s
	for i := 0; i < 32; i++ {
		out[32+i] = be[31-i]
	}
	out[63] |= 0x80
	return out
}

// TestReEncodedSignaturesRefused is issue #15 rows 4–6: every re-encoding of
// a valid signature is refused with a clear error, by the parser of its wire
// place and by the verifier.
func TestReEncodedSignaturesRefused(t *testing.T) {
	msg := []byte("5Validator:5Miner:1700000000")
	k, s := testSig(t, msg)
	hx, bare, b64 := s.Hex(), s.BareHex(), s.Base64()
	if lowBitsSet(b64) == b64 {
		t.Fatal("test signature has no unused bits to set")
	}
	if lenient, err := base64.StdEncoding.DecodeString(lowBitsSet(b64)); err != nil || string(lenient) != string(s[:]) {
		t.Fatal("the low-bit re-encoding should decode to the same bytes under a lenient decoder (that is the attack)")
	}
	nc := nonCanonicalS(s)
	noMarker := s
	noMarker[63] &= 0x7f
	tests := []struct {
		name, text string
		parse      func(string) (Signature, error)
		want       string // in the error
	}{
		// row 4: "0x" toggled
		{"hex without 0x", bare, ParseHex, `no "0x" prefix`},
		{"bare hex with 0x", hx, ParseBareHex, `"0x" prefix`},
		{"hex with 0X", "0X" + bare, ParseHex, `no "0x" prefix`},
		// row 5: upper case
		{"hex upper case", "0x" + strings.ToUpper(bare), ParseHex, "upper-case digit"},
		{"hex one upper digit", "0xA" + hx[3:], ParseHex, "upper-case digit 'A' at 0"},
		{"bare hex upper case", strings.ToUpper(bare), ParseBareHex, "upper-case digit"},
		// row 6: base64 low bits and other base64 re-encodings
		{"base64 low bits", lowBitsSet(b64), ParseBase64, "unused low bits"},
		{"base64 unpadded", strings.TrimRight(b64, "="), ParseBase64, "86 characters"},
		{"base64 url alphabet", "-" + b64[1:], ParseBase64, "'-' at 0 (not in the standard alphabet)"},
		{"base64 line break", b64[:40] + "\n" + b64[40:87], ParseBase64, `'\n'`},
		{"base64 padding inside", b64[:10] + "=" + b64[11:], ParseBase64, "padding at 10"},
		// the same bytes re-encoded by a lenient encoder
		{"hex with space", hx + " ", ParseHex, "129 digits"},
		{"hex short", hx[:len(hx)-2], ParseHex, "126 digits"},
		{"hex long", hx + "00", ParseHex, "130 digits"},
		// another encoding of the same signature in the bytes themselves
		{"s + l", nc.Hex(), ParseHex, "not a canonical sr25519 signature"},
		{"no schnorrkel marker", noMarker.Hex(), ParseHex, "not a canonical sr25519 signature"},
		{"empty", "", ParseHex, `no "0x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.parse(tt.text)
			if !errors.Is(err, ErrBadSignature) {
				t.Fatalf("parse(%q) err = %v, want ErrBadSignature", tt.text, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}
	// The verifiers refuse the re-encodings too.
	for name, err := range map[string]error{
		"VerifyHex without 0x":    VerifyHex(k.SS58(), msg, bare),
		"VerifyHex upper case":    VerifyHex(k.SS58(), msg, "0x"+strings.ToUpper(bare)),
		"VerifyBareHex with 0x":   VerifyBareHex(k.SS58(), msg, hx),
		"VerifyBase64 low bits":   VerifyBase64(k.SS58(), msg, lowBitsSet(b64)),
		"Verify s + l":            Verify(k.Public(), msg, nc[:]),
		"VerifyHex s + l":         VerifyHex(k.SS58(), msg, nc.Hex()),
		"VerifyBareHex uppercase": VerifyBareHex(k.SS58(), msg, strings.ToUpper(bare)),
	} {
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
		}
	}
}

// TestCanonicalFormsAgree: each wire form of one signature parses to the same
// bytes and the same Key, and verifies.
func TestCanonicalFormsAgree(t *testing.T) {
	msg := []byte("hello")
	k, s := testSig(t, msg)
	if got := k.SignHex(msg); !strings.HasPrefix(got, "0x") || strings.ToLower(got) != got || len(got) != 130 {
		t.Errorf("SignHex = %q, not the canonical form", got)
	}
	var keys []string
	for name, parse := range map[string]func() (Signature, error){
		"hex":      func() (Signature, error) { return ParseHex(s.Hex()) },
		"bare hex": func() (Signature, error) { return ParseBareHex(s.BareHex()) },
		"base64":   func() (Signature, error) { return ParseBase64(s.Base64()) },
	} {
		got, err := parse()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got != s {
			t.Errorf("%s: bytes differ", name)
		}
		if err := got.Verify(k.Public(), msg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		keys = append(keys, got.Key())
	}
	if keys[0] != keys[1] || keys[1] != keys[2] || keys[0] != hex.EncodeToString(s[:]) {
		t.Errorf("keys differ: %q", keys)
	}
	if err := VerifyHex(k.SS58(), msg, s.Hex()); err != nil {
		t.Error(err)
	}
	if err := VerifyBareHex(k.SS58(), msg, s.BareHex()); err != nil {
		t.Error(err)
	}
	if err := VerifyBase64(k.SS58(), msg, s.Base64()); err != nil {
		t.Error(err)
	}
}

// FuzzParseSignature: the three parsers accept only their canonical text,
// which is a fixed point: parse(text).Form() == text.
func FuzzParseSignature(f *testing.F) {
	_, s := testSig(f, []byte("seed"))
	for _, in := range []string{s.Hex(), s.BareHex(), s.Base64(), lowBitsSet(s.Base64()), strings.ToUpper(s.Hex()), "", "0x"} {
		f.Add(in)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if g, err := ParseHex(in); err == nil && g.Hex() != in {
			t.Fatalf("ParseHex accepted %q, canonical %q", in, g.Hex())
		} else if err != nil && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("ParseHex error %v is not ErrBadSignature", err)
		}
		if g, err := ParseBareHex(in); err == nil && g.BareHex() != in {
			t.Fatalf("ParseBareHex accepted %q, canonical %q", in, g.BareHex())
		} else if err != nil && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("ParseBareHex error %v is not ErrBadSignature", err)
		}
		if g, err := ParseBase64(in); err == nil && g.Base64() != in {
			t.Fatalf("ParseBase64 accepted %q, canonical %q", in, g.Base64())
		} else if err != nil && !errors.Is(err, ErrBadSignature) {
			t.Fatalf("ParseBase64 error %v is not ErrBadSignature", err)
		}
	})
}

// FuzzVerify: Verify never panics on any bytes and refuses what does not parse.
func FuzzVerify(f *testing.F) {
	msg := []byte("m")
	k, s := testSig(f, msg)
	f.Add(s[:])
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		err := Verify(k.Public(), msg, b)
		if err == nil && len(b) != SignatureSize {
			t.Fatalf("verified %d bytes", len(b))
		}
		if err == nil {
			var g Signature
			copy(g[:], b)
			if _, perr := ParseHex(g.Hex()); perr != nil {
				t.Fatalf("verified bytes do not parse: %v", perr)
			}
		}
	})
}

// FuzzParseSS58: an address is accepted only in its one text, which is the
// key's SS58; long input is refused before decoding.
func FuzzParseSS58(f *testing.F) {
	f.Add("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
	f.Add("15GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY")
	f.Add(strings.Repeat("z", 100))
	f.Fuzz(func(t *testing.T, s string) {
		pk, err := ParseSS58(s)
		if err != nil {
			if !errors.Is(err, ErrBadAddress) {
				t.Fatalf("error %v is not ErrBadAddress", err)
			}
			return
		}
		if pk.SS58() != s {
			t.Fatalf("accepted %q, canonical %q", s, pk.SS58())
		}
	})
}

// FuzzParseKeyfile: any key file bytes either load a key that agrees with
// what the file says, or are refused with ErrBadKey/ErrEncrypted.
func FuzzParseKeyfile(f *testing.F) {
	for _, p := range []string{"testdata/wallets/validator/hotkeys/default", "testdata/wallets/miner/hotkeys/default"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(`{"secretSeed":"0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"}`))
	f.Add([]byte(`{"privateKey":"0x1f1995bdf3a17b60626a26cfe6f564b337d46056b7a1281b64c649d592ccda0a9cffd34d9fb01cae1fba61aeed184c817442a2186d5172416729a4b54dd4b84e"}`))
	f.Add([]byte(`$NACL`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKeyfile(b, "") // no password: argon2 costs 512 MiB a try
		if err != nil {
			if !errors.Is(err, ErrBadKey) && !errors.Is(err, ErrEncrypted) {
				t.Fatalf("error %v is neither ErrBadKey nor ErrEncrypted", err)
			}
			return
		}
		msg := []byte("m")
		if err := Verify(k.Public(), msg, k.Sign(msg)); err != nil {
			t.Fatalf("loaded key does not sign: %v", err)
		}
	})
}
