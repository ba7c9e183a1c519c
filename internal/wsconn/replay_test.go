package wsconn

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// reencodings are the ways an attacker re-writes a captured "0x"+hex
// signature so that its text differs and its bytes do not (issue #15 rows 4
// and 5), each as a function of the captured text.
var reencodings = map[string]func(string) string{
	"0x removed": func(s string) string { return strings.TrimPrefix(s, "0x") },
	"0X prefix":  func(s string) string { return "0X" + strings.TrimPrefix(s, "0x") },
	"upper case": func(s string) string { return "0x" + strings.ToUpper(strings.TrimPrefix(s, "0x")) },
	"one digit upper": func(s string) string {
		i := strings.IndexAny(s[2:], "abcdef") + 2 // 128 random digits hold a letter
		return s[:i] + strings.ToUpper(s[i:i+1]) + s[i+1:]
	},
	"0x doubled":     func(s string) string { return "0x" + s },
	"trailing space": func(s string) string { return s + " " },
	"leading zeros":  func(s string) string { return "0x00" + s[2:] },
}

// replayFrame sends a captured auth frame through the wire codec after
// rewriting its signature, as the attacker in issue #15 did.
func replayFrame[M protocol.Message](t *testing.T, captured M, signature func(M) *string, rewrite func(string) string) M {
	t.Helper()
	b, err := protocol.Encode(captured)
	if err != nil {
		t.Fatal(err)
	}
	m, err := protocol.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	out := m.(M)
	*signature(out) = rewrite(*signature(out))
	return out
}

// TestValidatorAuthReplayReEncoded is issue #15 row 5: a validator's auth to a
// miner, captured and replayed with its signature re-encoded, is refused
// however it is re-encoded, and the genuine one is refused as a replay.
func TestValidatorAuthReplayReEncoded(t *testing.T) {
	v := hotkey(t)
	miner := hotkey(t).SS58()
	now := time.Unix(time.Now().Unix(), 0) // on a second, as auth timestamps are
	allow := func(h string) bool { return h == v.SS58() }
	g := NewReplayGuard()
	captured := NewValidatorAuth(v, miner, now)
	if err := CheckValidatorAuth(captured, v.SS58(), miner, allow, g, now); err != nil {
		t.Fatalf("genuine auth refused: %v", err)
	}
	sigOf := func(m *protocol.ValidatorAuthForMiner) *string { return &m.Signature }
	for name, rewrite := range reencodings {
		t.Run(name, func(t *testing.T) {
			replay := replayFrame(t, captured, sigOf, rewrite)
			if replay.Signature == captured.Signature {
				t.Fatal("not a re-encoding")
			}
			// Refused on a guard that has seen the genuine auth and on one
			// that has not: the re-encoding is no second key.
			for _, guard := range []*ReplayGuard{g, NewReplayGuard()} {
				err := CheckValidatorAuth(replay, v.SS58(), miner, allow, guard, now.Add(time.Second))
				if !errors.Is(err, ErrBadAuth) || !errors.Is(err, sig.ErrBadSignature) {
					t.Errorf("err = %v, want a refused signature encoding", err)
				}
			}
		})
	}
	t.Run("verbatim", func(t *testing.T) {
		replay := replayFrame(t, captured, sigOf, func(s string) string { return s })
		if err := CheckValidatorAuth(replay, v.SS58(), miner, allow, g, now.Add(MaxAuthAge)); !errors.Is(err, ErrReplayed) {
			t.Errorf("err = %v, want ErrReplayed", err)
		}
	})
	t.Run("remembered while fresh", func(t *testing.T) {
		// Seen at the start of its window (its timestamp 10 s ahead of the
		// miner's clock), it must still be remembered at the end.
		g := NewReplayGuard()
		early := NewValidatorAuth(v, miner, now.Add(MaxAuthAge))
		if err := CheckValidatorAuth(early, v.SS58(), miner, allow, g, now); err != nil {
			t.Fatal(err)
		}
		end := now.Add(2 * MaxAuthAge)
		// Another auth, later, sweeps the guard.
		if err := CheckValidatorAuth(NewValidatorAuth(v, miner, end), v.SS58(), miner, allow, g, end); err != nil {
			t.Fatal(err)
		}
		if err := CheckValidatorAuth(early, v.SS58(), miner, allow, g, end); !errors.Is(err, ErrReplayed) {
			t.Errorf("err = %v, want ErrReplayed", err)
		}
	})
}

// TestFacilitatorAuthReplayReEncoded is issue #15 row 4: a validator's auth to
// the facilitator, captured and replayed with "0x" toggled (or otherwise
// re-encoded, public key included), is refused; so is a second signature over
// the same message.
func TestFacilitatorAuthReplayReEncoded(t *testing.T) {
	v := hotkey(t)
	now := time.Now()
	all := func(string) bool { return true }
	g := NewReplayGuard()
	captured := NewFacilitatorAuth(v, now)
	if _, err := CheckFacilitatorAuth(captured, all, g, now); err != nil {
		t.Fatalf("genuine auth refused: %v", err)
	}
	sigOf := func(m *protocol.V0HordeAuthenticationRequest) *string { return &m.Signature }
	for name, rewrite := range reencodings {
		t.Run(name, func(t *testing.T) {
			replay := replayFrame(t, captured, sigOf, rewrite)
			for _, guard := range []*ReplayGuard{g, NewReplayGuard()} {
				_, err := CheckFacilitatorAuth(replay, all, guard, now.Add(time.Second))
				if !errors.Is(err, ErrBadAuth) || !errors.Is(err, sig.ErrBadSignature) {
					t.Errorf("err = %v, want a refused signature encoding", err)
				}
			}
		})
	}
	pkOf := func(m *protocol.V0HordeAuthenticationRequest) *string { return &m.PublicKey }
	for name, rewrite := range map[string]func(string) string{
		"public key upper case": strings.ToUpper,
		"public key with 0x":    func(s string) string { return "0x" + s },
	} {
		t.Run(name, func(t *testing.T) {
			replay := replayFrame(t, captured, pkOf, rewrite)
			if _, err := CheckFacilitatorAuth(replay, all, NewReplayGuard(), now); !errors.Is(err, ErrBadAuth) {
				t.Errorf("err = %v, want ErrBadAuth", err)
			}
		})
	}
	t.Run("verbatim", func(t *testing.T) {
		replay := replayFrame(t, captured, sigOf, func(s string) string { return s })
		if _, err := CheckFacilitatorAuth(replay, all, g, now.Add(time.Second)); !errors.Is(err, ErrReplayed) {
			t.Errorf("err = %v, want ErrReplayed", err)
		}
	})
	t.Run("same message signed again", func(t *testing.T) {
		// sr25519 signatures are randomised: the validator (or any flaw that
		// let someone make a second signature) gives other bytes over the
		// same message. The message is a key too.
		again := *captured
		msg, err := again.AuthMessage()
		if err != nil {
			t.Fatal(err)
		}
		again.Signature = v.SignHex(msg)
		if again.Signature == captured.Signature {
			t.Fatal("signatures are not randomised")
		}
		if _, err := CheckFacilitatorAuth(&again, all, g, now.Add(time.Second)); !errors.Is(err, ErrReplayed) {
			t.Errorf("err = %v, want ErrReplayed", err)
		}
	})
}

// Two honest sessions of one validator to one miner within the same second
// (an upstream validator opens one per job) sign the same message with
// different signatures: both are let in.
func TestValidatorAuthSameSecondTwoSessions(t *testing.T) {
	v := hotkey(t)
	miner := hotkey(t).SS58()
	now := time.Now()
	allow := func(string) bool { return true }
	g := NewReplayGuard()
	for i := range 2 {
		if err := CheckValidatorAuth(NewValidatorAuth(v, miner, now), v.SS58(), miner, allow, g, now); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
}
