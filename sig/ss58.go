package sig

import (
	"bytes"
	"fmt"
	"math/big"
	"sync"

	"golang.org/x/crypto/blake2b"
)

// SS58Prefix is the network prefix bittensor uses (generic substrate).
const SS58Prefix = 42

// maxSS58Len bounds the text of an address (48 for 35 bytes; some slack).
const maxSS58Len = 64

const b58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// SS58 encodes the key as base58(prefix ‖ key ‖ checksum[0:2]).
func (p PublicKey) SS58() string {
	payload := make([]byte, 0, 35)
	payload = append(payload, SS58Prefix)
	payload = append(payload, p[:]...)
	sum := ss58Checksum(payload)
	payload = append(payload, sum[0], sum[1])
	return base58Encode(payload)
}

// parsed remembers recently parsed addresses: receipts are checked by the
// thousand against a few hotkeys, and decoding one is a big-number
// conversion and a blake2b-512. It is emptied when it holds parsedMax.
var parsed struct {
	sync.Mutex
	m map[string]PublicKey
}

const parsedMax = 4096

// ParseSS58 decodes an SS58 address with prefix 42, checking length and checksum.
func ParseSS58(s string) (PublicKey, error) {
	parsed.Lock()
	pk, ok := parsed.m[s]
	parsed.Unlock()
	if ok {
		return pk, nil
	}
	pk, err := parseSS58(s)
	if err == nil {
		parsed.Lock()
		if parsed.m == nil || len(parsed.m) >= parsedMax {
			parsed.m = make(map[string]PublicKey)
		}
		parsed.m[s] = pk
		parsed.Unlock()
	}
	return pk, err
}

func parseSS58(s string) (PublicKey, error) {
	var pk PublicKey
	// 35 bytes are at most 48 base58 characters; refuse long input before
	// the (quadratic) big-number decoding.
	if len(s) > maxSS58Len {
		return pk, fmt.Errorf("%w: %d characters, an address has at most %d", ErrBadAddress, len(s), maxSS58Len)
	}
	raw, err := base58Decode(s)
	if err != nil {
		return pk, fmt.Errorf("%w %q: %v", ErrBadAddress, s, err)
	}
	if len(raw) != 35 {
		return pk, fmt.Errorf("%w %q: decoded length %d, want 35", ErrBadAddress, s, len(raw))
	}
	if raw[0] != SS58Prefix {
		return pk, fmt.Errorf("%w %q: prefix %d, want %d", ErrBadAddress, s, raw[0], SS58Prefix)
	}
	sum := ss58Checksum(raw[:33])
	if !bytes.Equal(sum[:2], raw[33:]) {
		return pk, fmt.Errorf("%w %q: bad checksum", ErrBadAddress, s)
	}
	copy(pk[:], raw[1:33])
	return pk, nil
}

func ss58Checksum(payload []byte) [64]byte {
	return blake2b.Sum512(append([]byte("SS58PRE"), payload...))
}

func blake2b256(b []byte) [32]byte { return blake2b.Sum256(b) }

func base58Encode(b []byte) string {
	n := new(big.Int).SetBytes(b)
	var out []byte
	mod := new(big.Int)
	base := big.NewInt(58)
	for n.Sign() > 0 {
		n.DivMod(n, base, mod)
		out = append(out, b58Alphabet[mod.Int64()])
	}
	for _, c := range b {
		if c != 0 {
			break
		}
		out = append(out, '1')
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return string(out)
}

func base58Decode(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("empty")
	}
	n := new(big.Int)
	base := big.NewInt(58)
	for _, c := range s {
		i := bytes.IndexRune([]byte(b58Alphabet), c)
		if i < 0 {
			return nil, fmt.Errorf("character %q is not base58", c)
		}
		n.Mul(n, base)
		n.Add(n, big.NewInt(int64(i)))
	}
	out := n.Bytes()
	zeros := 0
	for zeros < len(s) && s[zeros] == '1' {
		zeros++
	}
	return append(make([]byte, zeros), out...), nil
}
