// Package sig holds Bittensor hotkeys: sr25519 key pairs addressed by SS58,
// signatures compatible with Python bittensor and polkadot.js, their strict
// text encodings (one per wire place, see ParseHex), and the Bittensor
// wallet files they are stored in.
package sig

import (
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	schnorrkel "github.com/ChainSafe/go-schnorrkel"
)

// SigningContext is the schnorrkel signing context substrate and bittensor use.
const SigningContext = "substrate"

// SignatureSize is the length of an sr25519 signature in bytes.
const SignatureSize = 64

// Errors callers branch on.
var (
	ErrBadSignature = errors.New("invalid signature")
	ErrBadAddress   = errors.New("invalid SS58 address")
	ErrBadKey       = errors.New("invalid key")
)

// PublicKey is a raw sr25519 public key.
type PublicKey [32]byte

// String returns the SS58 address of the key.
func (p PublicKey) String() string { return p.SS58() }

// Hex returns the key as lowercase hex without a 0x prefix.
func (p PublicKey) Hex() string { return hex.EncodeToString(p[:]) }

// Hotkey is an sr25519 key pair that can sign.
type Hotkey struct {
	secret *schnorrkel.SecretKey
	public PublicKey
	// seed is the 32-byte mini secret the pair was expanded from, when known.
	seed []byte
	// nonce is the signing nonce half of the secret, kept to write key files.
	nonce [32]byte
}

// LogValue keeps secrets out of logs: only the address is shown.
func (k *Hotkey) LogValue() slog.Value { return slog.StringValue(k.public.SS58()) }

// Public returns the public key.
func (k *Hotkey) Public() PublicKey { return k.public }

// SS58 returns the SS58 address (prefix 42) of the key.
func (k *Hotkey) SS58() string { return k.public.SS58() }

// Sign signs msg with the "substrate" context, as bittensor's Keypair.sign does.
func (k *Hotkey) Sign(msg []byte) []byte {
	s, err := k.secret.Sign(schnorrkel.NewSigningContext([]byte(SigningContext), msg))
	if err != nil {
		// Sign fails only on a broken random source.
		panic(fmt.Sprintf("sr25519 sign: %v", err))
	}
	out := s.Encode()
	return out[:]
}

// SignHex signs msg and returns "0x"+hex, the encoding of protocol messages.
func (k *Hotkey) SignHex(msg []byte) string { return "0x" + hex.EncodeToString(k.Sign(msg)) }

// FromSeed expands a 32-byte mini secret key the way substrate does (ExpandEd25519).
func FromSeed(seed []byte) (*Hotkey, error) {
	if len(seed) != 32 {
		return nil, fmt.Errorf("%w: seed must be 32 bytes, got %d", ErrBadKey, len(seed))
	}
	var raw [32]byte
	copy(raw[:], seed)
	mini, err := schnorrkel.NewMiniSecretKeyFromRaw(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return fromMini(mini)
}

func fromMini(mini *schnorrkel.MiniSecretKey) (*Hotkey, error) {
	sk := mini.ExpandEd25519()
	pub, err := sk.Public()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	raw := mini.Encode()
	h := sha512.Sum512(raw[:])
	k := &Hotkey{secret: sk, public: pub.Encode(), seed: raw[:]}
	copy(k.nonce[:], h[32:])
	return k, nil
}

// FromPrivateKey loads a 64-byte schnorrkel secret (scalar ‖ nonce) as
// bittensor wallets store it.
func FromPrivateKey(b []byte) (*Hotkey, error) {
	if len(b) != 64 {
		return nil, fmt.Errorf("%w: private key must be 64 bytes, got %d", ErrBadKey, len(b))
	}
	var scalar, nonce [32]byte
	copy(scalar[:], b[:32])
	copy(nonce[:], b[32:])
	sk := schnorrkel.NewSecretKey(scalar, nonce)
	pub, err := sk.Public()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	k := &Hotkey{secret: sk, public: pub.Encode()}
	copy(k.nonce[:], b[32:])
	return k, nil
}

// Generate makes a new random hotkey and returns it with its mnemonic.
func Generate() (*Hotkey, string, error) {
	phrase, err := schnorrkel.GenerateMnemonic()
	if err != nil {
		return nil, "", fmt.Errorf("generate mnemonic: %w", err)
	}
	k, err := FromURI(phrase)
	return k, phrase, err
}

// RandomSeed returns 32 random bytes for FromSeed.
func RandomSeed() []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// FromURI derives a key from a secret URI: a mnemonic (substrate-bip39) or a
// 0x-prefixed 32-byte seed, followed by optional hard junctions ("//Alice").
// Soft junctions and passwords ("///pw") are refused.
func FromURI(uri string) (*Hotkey, error) {
	phrase, path, _ := strings.Cut(uri, "//")
	phrase = strings.TrimSpace(phrase)
	var mini *schnorrkel.MiniSecretKey
	if strings.HasPrefix(phrase, "0x") {
		seed, err := hex.DecodeString(phrase[2:])
		if err != nil || len(seed) != 32 {
			return nil, fmt.Errorf("%w: seed must be 0x and 64 hex digits", ErrBadKey)
		}
		var raw [32]byte
		copy(raw[:], seed)
		if mini, err = schnorrkel.NewMiniSecretKeyFromRaw(raw); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadKey, err)
		}
	} else {
		var err error
		if mini, err = schnorrkel.MiniSecretKeyFromMnemonic(phrase, ""); err != nil {
			return nil, fmt.Errorf("%w: mnemonic: %v", ErrBadKey, err)
		}
	}
	if strings.Contains(uri, "//") {
		for _, j := range strings.Split(path, "//") {
			if j == "" || strings.Contains(j, "/") {
				return nil, fmt.Errorf("%w: only hard junctions (//name) are supported", ErrBadKey)
			}
			next, _, err := mini.HardDeriveMiniSecretKey(nil, chainCode(j))
			if err != nil {
				return nil, fmt.Errorf("%w: derive //%s: %v", ErrBadKey, j, err)
			}
			mini = next
		}
	}
	return fromMini(mini)
}

// chainCode encodes a junction as substrate does: a number as u64 little
// endian, anything else as a SCALE string, padded to 32 bytes.
func chainCode(j string) [32]byte {
	var cc [32]byte
	var n uint64
	numeric := j != ""
	for _, c := range j {
		if c < '0' || c > '9' {
			numeric = false
			break
		}
		n = n*10 + uint64(c-'0')
	}
	if numeric {
		for i := 0; i < 8; i++ {
			cc[i] = byte(n >> (8 * i))
		}
		return cc
	}
	enc := append(scaleCompact(len(j)), j...)
	if len(enc) > 32 {
		return blake2b256(enc)
	}
	copy(cc[:], enc)
	return cc
}

func scaleCompact(n int) []byte {
	switch {
	case n < 1<<6:
		return []byte{byte(n << 2)}
	case n < 1<<14:
		v := uint16(n<<2 | 1)
		return []byte{byte(v), byte(v >> 8)}
	default:
		v := uint32(n<<2 | 2)
		return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	}
}

// Verify checks an sr25519 signature by pub over msg. Like bittensor it also
// accepts a signature over "<Bytes>"+msg+"</Bytes>" (how polkadot.js signs).
func Verify(pub PublicKey, msg, signature []byte) error {
	if len(signature) != SignatureSize {
		return fmt.Errorf("%w: want %d bytes, got %d", ErrBadSignature, SignatureSize, len(signature))
	}
	var raw [64]byte
	copy(raw[:], signature)
	var s schnorrkel.Signature
	if err := s.Decode(raw); err != nil {
		return fmt.Errorf("%w: %v", ErrBadSignature, err)
	}
	return verifyDecoded(pub, msg, &s)
}

// verifyDecoded is Verify of a decoded signature.
func verifyDecoded(pub PublicKey, msg []byte, s *schnorrkel.Signature) error {
	pk, err := schnorrkel.NewPublicKey(pub)
	if err != nil {
		return fmt.Errorf("%w: public key: %v", ErrBadSignature, err)
	}
	if ok, _ := pk.Verify(s, schnorrkel.NewSigningContext([]byte(SigningContext), msg)); ok {
		return nil
	}
	wrapped := make([]byte, 0, len(msg)+15)
	wrapped = append(append(append(wrapped, "<Bytes>"...), msg...), "</Bytes>"...)
	if ok, _ := pk.Verify(s, schnorrkel.NewSigningContext([]byte(SigningContext), wrapped)); ok {
		return nil
	}
	return ErrBadSignature
}

// VerifyHex verifies a protocol or receipt signature ("0x" and lower-case
// hex, see ParseHex; any other text is refused) by the holder of the SS58
// address.
func VerifyHex(address string, msg []byte, sigHex string) error {
	pub, err := ParseSS58(address)
	if err != nil {
		return err
	}
	// The signature's point is decoded once, here, not also by ParseHex.
	var sg Signature
	if len(sigHex) >= 2 && sigHex[:2] == "0x" {
		sg, err = hexDigitsOnly(sigHex[2:])
	}
	var s schnorrkel.Signature
	if err != nil || len(sigHex) < 2 || sigHex[:2] != "0x" || s.Decode(sg) != nil {
		_, err := ParseHex(sigHex) // says why, as ParseHex does
		return err
	}
	return verifyDecoded(pub, msg, &s)
}
