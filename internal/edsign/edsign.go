// Package edsign makes Ed25519 signatures for a key that signs many
// messages, for less CPU than crypto/ed25519: the key is expanded once, and
// nonces are made ahead in batches whose points share one field inversion.
//
// The signatures are ordinary Ed25519 signatures (RFC 8032 verification,
// ed25519.Verify, accepts them), but not deterministic: the nonce r is not
// SHA-512(prefix ‖ message), which needs the message, but SHA-512(prefix ‖
// 32 random bytes ‖ counter), made before the message is known. A verifier
// cannot tell the two apart. Signing the same message twice gives two
// different valid signatures. A nonce is used once: it is taken out of the
// batch under a lock, and two nonces are equal only if both the operating
// system's random bytes and the signer's counter repeat.
package edsign

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"sync"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// Batch is how many nonces a signer makes at once: one field inversion
// serves them all (about a quarter of a plain signature's cost each).
const Batch = 16

// Signer signs with one Ed25519 key. It is safe for concurrent use.
type Signer struct {
	pub    []byte
	a      edwards25519.Scalar // the secret scalar
	prefix [32]byte            // the second half of SHA-512(seed)

	mu      sync.Mutex
	counter uint64
	nonces  []nonce
}

// nonce is a secret r and its point R = rB, encoded.
type nonce struct {
	r edwards25519.Scalar
	R [32]byte
}

// New expands key for signing.
func New(key ed25519.PrivateKey) (*Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("edsign: bad private key length")
	}
	h := sha512.Sum512(key.Seed())
	s := &Signer{pub: append([]byte(nil), key[32:]...)}
	if _, err := s.a.SetBytesWithClamping(h[:32]); err != nil {
		return nil, err
	}
	copy(s.prefix[:], h[32:])
	// The public half of key must be the seed's: a key whose halves
	// disagree would sign what its public key does not verify.
	if string((&edwards25519.Point{}).ScalarBaseMult(&s.a).Bytes()) != string(s.pub) {
		return nil, errors.New("edsign: the private key's public half is not its seed's")
	}
	return s, nil
}

// Public returns the signer's public key.
func (s *Signer) Public() ed25519.PublicKey { return ed25519.PublicKey(s.pub) }

// Sign returns an Ed25519 signature of msg.
func (s *Signer) Sign(msg []byte) []byte {
	n := s.take()
	h := sha512.New()
	h.Write(n.R[:])
	h.Write(s.pub)
	h.Write(msg)
	var digest [64]byte
	var k edwards25519.Scalar
	k.SetUniformBytes(h.Sum(digest[:0])) // 64 bytes: cannot fail
	var S edwards25519.Scalar
	S.MultiplyAdd(&k, &s.a, &n.r)
	sig := make([]byte, 0, ed25519.SignatureSize)
	return append(append(sig, n.R[:]...), S.Bytes()...)
}

// take returns an unused nonce, making a batch when none is left (outside
// the lock: other signers keep taking meanwhile).
func (s *Signer) take() nonce {
	s.mu.Lock()
	if k := len(s.nonces); k > 0 {
		n := s.nonces[k-1]
		s.nonces[k-1] = nonce{}
		s.nonces = s.nonces[:k-1]
		s.mu.Unlock()
		return n
	}
	first := s.counter
	s.counter += Batch
	s.mu.Unlock()
	batch := s.makeNonces(first)
	s.mu.Lock()
	s.nonces = append(s.nonces, batch[1:]...)
	s.mu.Unlock()
	n := batch[0]
	clear(batch) // the secrets live only in s.nonces
	return n
}

// makeNonces makes Batch nonces numbered from first: each point computed in
// projective coordinates, and all of them brought to affine ones with one
// inversion (Montgomery's trick).
func (s *Signer) makeNonces(first uint64) []nonce {
	var (
		ns   [Batch]nonce
		pts  [Batch]edwards25519.Point
		xs   [Batch]*field.Element
		ys   [Batch]*field.Element
		zs   [Batch]*field.Element
		acc  [Batch]field.Element // acc[i] = z0·z1·…·zi
		rnd  [32]byte
		ctr  [8]byte
		wide [64]byte
	)
	for i := range ns {
		rand.Read(rnd[:]) // never fails (crypto/rand crashes the program instead)
		binary.BigEndian.PutUint64(ctr[:], first+uint64(i))
		h := sha512.New()
		h.Write(s.prefix[:])
		h.Write(rnd[:])
		h.Write(ctr[:])
		ns[i].r.SetUniformBytes(h.Sum(wide[:0]))
		pts[i].ScalarBaseMult(&ns[i].r)
		xs[i], ys[i], zs[i], _ = pts[i].ExtendedCoordinates()
		if i == 0 {
			acc[0].Set(zs[0])
		} else {
			acc[i].Multiply(&acc[i-1], zs[i])
		}
	}
	var inv, zinv, x, y field.Element
	inv.Invert(&acc[Batch-1]) // 1 / (z0·…·zn)
	for i := Batch - 1; i >= 0; i-- {
		if i > 0 {
			zinv.Multiply(&inv, &acc[i-1]) // 1/zi
			inv.Multiply(&inv, zs[i])      // 1 / (z0·…·z(i-1))
		} else {
			zinv.Set(&inv)
		}
		x.Multiply(xs[i], &zinv)
		y.Multiply(ys[i], &zinv)
		copy(ns[i].R[:], y.Bytes())
		ns[i].R[31] |= byte(x.IsNegative() << 7)
	}
	return ns[:]
}
