package sig

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"

	schnorrkel "github.com/ChainSafe/go-schnorrkel"
)

// Signature encodings are strict: each wire place has exactly one text form
// for a given signature, and anything else is refused, so that no one can
// make a "new" signature out of an old one by re-encoding it (toggling "0x",
// upper-casing hex digits, setting the unused low bits of base64).
//
// Upstream ComputeHorde emits exactly these forms, and nothing else, so being
// strict costs no interoperability (checked against its source at 32fa9d14):
//   - protocol messages and receipts: f"0x{keypair.sign(blob).hex()}", that is
//     "0x" and lower-case hex (compute_horde/utils.py sign_blob, the miner's
//     validator_interface.py, fv_protocol V0AuthenticationRequest);
//   - X-CH-Signature: base64.b64encode(signature), standard padded base64
//     (compute_horde_core/signature.py), whose unused bits are always zero;
//   - the facilitator login: hotkey.sign(nonce).hex(), bare lower-case hex
//     (compute_horde_sdk sdk.py).
//
// Parsing also decodes the signature as schnorrkel does (the sr25519 marker
// bit, a canonical ristretto point R and a canonical scalar s < ℓ), so the 64
// bytes are the only encoding of that signature: a Signature, or its Key, is
// a sound replay and dedup key. Verification never needs the text again.

// Signature is a decoded sr25519 signature. It is comparable: remember
// signatures (replay guards, dedup columns) by value or by Key, never by text.
type Signature [SignatureSize]byte

// Key returns a text determined by the signature's bytes alone (lower-case
// hex without "0x"), for maps and database columns that dedupe signatures.
func (s Signature) Key() string { return hex.EncodeToString(s[:]) }

// Hex returns the protocol and receipt form: "0x" and lower-case hex.
func (s Signature) Hex() string { return "0x" + hex.EncodeToString(s[:]) }

// BareHex returns the facilitator login form: lower-case hex without "0x".
func (s Signature) BareHex() string { return hex.EncodeToString(s[:]) }

// Base64 returns the X-CH-Signature form: standard padded base64.
func (s Signature) Base64() string { return base64.StdEncoding.EncodeToString(s[:]) }

// Verify checks the signature by pub over msg (see the package function Verify).
func (s Signature) Verify(pub PublicKey, msg []byte) error { return Verify(pub, msg, s[:]) }

// hexDigits is the length of a signature in hex.
const hexDigits = 2 * SignatureSize

// ParseHex decodes a signature of a protocol message or receipt: "0x" and
// exactly 128 lower-case hex digits.
func ParseHex(s string) (Signature, error) {
	if len(s) < 2 || s[:2] != "0x" {
		return Signature{}, fmt.Errorf(`%w: want "0x" and %d lower-case hex digits, got no "0x" prefix`, ErrBadSignature, hexDigits)
	}
	sg, err := parseHexDigits(s[2:])
	if err != nil {
		return Signature{}, fmt.Errorf(`%w: want "0x" and %d lower-case hex digits, got %s`, ErrBadSignature, hexDigits, err)
	}
	return sg, nil
}

// ParseBareHex decodes a facilitator login signature: exactly 128 lower-case
// hex digits, no "0x".
func ParseBareHex(s string) (Signature, error) {
	if len(s) >= 2 && (s[:2] == "0x" || s[:2] == "0X") {
		return Signature{}, fmt.Errorf(`%w: want %d lower-case hex digits without "0x", got a "0x" prefix`, ErrBadSignature, hexDigits)
	}
	sg, err := parseHexDigits(s)
	if err != nil {
		return Signature{}, fmt.Errorf(`%w: want %d lower-case hex digits without "0x", got %s`, ErrBadSignature, hexDigits, err)
	}
	return sg, nil
}

func parseHexDigits(s string) (Signature, error) {
	sg, err := hexDigitsOnly(s)
	if err != nil {
		return sg, err
	}
	return sg, canonical(sg)
}

// hexDigitsOnly decodes the digits without checking that they are a
// canonical signature.
func hexDigitsOnly(s string) (Signature, error) {
	var sg Signature
	if len(s) != hexDigits {
		return sg, fmt.Errorf("%d digits", len(s))
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case '0' <= c && c <= '9', 'a' <= c && c <= 'f':
		case 'A' <= c && c <= 'F':
			return sg, fmt.Errorf("upper-case digit %q at %d", c, i)
		default:
			return sg, fmt.Errorf("non-hex character %q at %d", c, i)
		}
	}
	if _, err := hex.Decode(sg[:], []byte(s)); err != nil {
		return sg, err // unreachable: checked above
	}
	return sg, nil
}

// base64Len is the length of a signature in padded base64.
const base64Len = (SignatureSize + 2) / 3 * 4

// ParseBase64 decodes an X-CH-Signature: standard padded base64 of exactly
// 64 bytes (88 characters ending "=="), the unused low bits of the last
// character zero, no line breaks.
func ParseBase64(s string) (Signature, error) {
	var sg Signature
	bad := func(format string, args ...any) (Signature, error) {
		return Signature{}, fmt.Errorf("%w: want standard padded base64 of %d bytes (%d characters), got "+format,
			append([]any{ErrBadSignature, SignatureSize, base64Len}, args...)...)
	}
	if len(s) != base64Len {
		return bad("%d characters", len(s))
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '+', c == '/':
			if i >= base64Len-2 {
				return bad(`%q where padding "=" belongs, at %d`, c, i)
			}
		case c == '=':
			if i < base64Len-2 {
				return bad("padding at %d", i)
			}
		default:
			return bad("character %q at %d (not in the standard alphabet)", c, i)
		}
	}
	n, err := base64.StdEncoding.Strict().Decode(sg[:], []byte(s))
	if err != nil || n != SignatureSize {
		// The only strict-mode failure left is a non-zero unused bit.
		return bad("non-zero unused low bits in the last character %q (a re-encoded signature)", s[base64Len-3])
	}
	return sg, canonical(sg)
}

// canonical refuses bytes that are not a schnorrkel signature in its only
// encoding: the marker bit, a canonical point R and a canonical scalar s.
func canonical(sg Signature) error {
	var s schnorrkel.Signature
	if err := s.Decode(sg); err != nil {
		return fmt.Errorf("%w: not a canonical sr25519 signature: %v", ErrBadSignature, err)
	}
	return nil
}

// VerifyBareHex verifies a facilitator login signature (bare lower-case hex)
// by the holder of the SS58 address.
func VerifyBareHex(address string, msg []byte, sigHex string) error {
	pub, err := ParseSS58(address)
	if err != nil {
		return err
	}
	s, err := ParseBareHex(sigHex)
	if err != nil {
		return err
	}
	return s.Verify(pub, msg)
}

// VerifyBase64 verifies an X-CH-Signature (standard padded base64) by the
// holder of the SS58 address.
func VerifyBase64(address string, msg []byte, sigB64 string) error {
	pub, err := ParseSS58(address)
	if err != nil {
		return err
	}
	s, err := ParseBase64(sigB64)
	if err != nil {
		return err
	}
	return s.Verify(pub, msg)
}
