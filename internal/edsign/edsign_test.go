package edsign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
)

func newSigner(t testing.TB) (*Signer, ed25519.PublicKey) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Public(), pub) {
		t.Fatal("Public is not the key's")
	}
	return s, pub
}

// Every signature verifies with crypto/ed25519, across several batches, and
// a changed message or signature does not.
func TestSignaturesVerify(t *testing.T) {
	s, pub := newSigner(t)
	for i := range 5*Batch + 3 {
		msg := fmt.Appendf(nil, "horde-streaming-receipt/v2\nrequest_id=%d\n", i)
		sig := s.Sign(msg)
		if len(sig) != ed25519.SignatureSize {
			t.Fatalf("signature of %d bytes", len(sig))
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatalf("signature %d does not verify", i)
		}
		if ed25519.Verify(pub, append(msg, 'x'), sig) {
			t.Fatalf("signature %d verifies another message", i)
		}
		bad := bytes.Clone(sig)
		bad[40] ^= 1
		if ed25519.Verify(pub, msg, bad) {
			t.Fatalf("a changed signature %d verifies", i)
		}
	}
	if !ed25519.Verify(pub, nil, s.Sign(nil)) {
		t.Fatal("the empty message's signature does not verify")
	}
}

// A nonce is never used twice, also when many goroutines sign at once: two
// signatures sharing R would give the key away.
func TestNoncesNeverRepeat(t *testing.T) {
	s, pub := newSigner(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 * Batch / 8 {
				msg := fmt.Appendf(nil, "%d-%d", g, i)
				sig := s.Sign(msg)
				if !ed25519.Verify(pub, msg, sig) {
					t.Errorf("signature %d-%d does not verify", g, i)
				}
				mu.Lock()
				if seen[string(sig[:32])] {
					t.Errorf("R repeated at %d-%d", g, i)
				}
				seen[string(sig[:32])] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if a, b := s.Sign([]byte("same")), s.Sign([]byte("same")); bytes.Equal(a, b) {
		t.Fatal("the same message signed twice gave the same signature: nonces are not fresh")
	}
}

// A private key whose public half is not its seed's is refused.
func TestMismatchedKeyRefused(t *testing.T) {
	_, k1, _ := ed25519.GenerateKey(rand.Reader)
	pub2, _, _ := ed25519.GenerateKey(rand.Reader)
	bad := append(bytes.Clone(k1[:32]), pub2...)
	if _, err := New(bad); err == nil {
		t.Fatal("a key with another key's public half was accepted")
	}
	if _, err := New(k1[:10]); err == nil {
		t.Fatal("a short key was accepted")
	}
}

// BenchmarkSign compares a signature of a receipt-sized message by Signer
// and by crypto/ed25519.
func BenchmarkSign(b *testing.B) {
	s, _ := newSigner(b)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	msg := bytes.Repeat([]byte("r"), 400)
	b.Run("edsign", func(b *testing.B) {
		for b.Loop() {
			s.Sign(msg)
		}
	})
	b.Run("crypto-ed25519", func(b *testing.B) {
		for b.Loop() {
			ed25519.Sign(key, msg)
		}
	})
}
