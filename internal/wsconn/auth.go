package wsconn

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// MaxAuthAge is how old an auth message may be (either way) before it is refused.
const MaxAuthAge = 10 * time.Second

// Errors an auth check returns; each says why.
var (
	ErrStale      = errors.New("auth message is stale")
	ErrReplayed   = errors.New("auth message was already used")
	ErrBadAuth    = errors.New("auth signature is invalid")
	ErrNotAllowed = errors.New("peer is not allowed")
	ErrWrongPeer  = errors.New("auth message is addressed to someone else")
)

// ReplayGuard remembers the authentications seen while they are fresh, so
// none is used twice. Keys are made from decoded bytes (signature bytes,
// signed messages), never from the text a peer sent, so a re-encoded replay
// ("0x" toggled, upper-case hex) is the same key as the original.
type ReplayGuard struct {
	mu   sync.Mutex
	seen map[string]time.Time // key → when it may be forgotten
}

// NewReplayGuard returns an empty guard.
func NewReplayGuard() *ReplayGuard { return &ReplayGuard{seen: map[string]time.Time{}} }

// Use records key; it fails if key was used within the window.
func (g *ReplayGuard) Use(key string, now time.Time) error {
	return g.useAll(now, now.Add(2*MaxAuthAge), key)
}

// useAll records every key, or none: it fails if any of them was seen.
// Each is remembered until forget, which must be no earlier than the time
// the authentication stops being fresh.
func (g *ReplayGuard) useAll(now, forget time.Time, keys ...string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, t := range g.seen {
		if now.After(t) {
			delete(g.seen, k)
		}
	}
	for _, k := range keys {
		if _, ok := g.seen[k]; ok {
			return ErrReplayed
		}
	}
	for _, k := range keys {
		g.seen[k] = forget
	}
	return nil
}

// forgetAfter is when an auth stamped ts (unix seconds) can no longer pass
// checkAge, whatever the clock said when it was first seen.
func forgetAfter(ts int64, now time.Time) time.Time {
	return later(time.Unix(ts, 0).Add(MaxAuthAge+time.Second), now.Add(2*MaxAuthAge))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func checkAge(ts int64, now time.Time) error {
	age := now.Sub(time.Unix(ts, 0))
	if age > MaxAuthAge || age < -MaxAuthAge {
		return fmt.Errorf("%w: timestamp is %s off (limit %s)", ErrStale, age.Round(time.Second), MaxAuthAge)
	}
	return nil
}

// NewValidatorAuth builds a validator's signed auth message for a miner.
func NewValidatorAuth(k *sig.Hotkey, minerHotkey string, now time.Time) *protocol.ValidatorAuthForMiner {
	m := &protocol.ValidatorAuthForMiner{ValidatorHotkey: k.SS58(), MinerHotkey: minerHotkey, Timestamp: now.Unix()}
	m.Signature = k.SignHex(m.AuthMessage())
	return m
}

// CheckValidatorAuth verifies a validator's auth message on the miner's side.
// pathHotkey is the hotkey in the URL; allowed decides whether that validator may connect.
func CheckValidatorAuth(m *protocol.ValidatorAuthForMiner, pathHotkey, minerHotkey string, allowed func(string) bool, g *ReplayGuard, now time.Time) error {
	if m.MinerHotkey != minerHotkey {
		return fmt.Errorf("%w: miner_hotkey %s, this miner is %s", ErrWrongPeer, m.MinerHotkey, minerHotkey)
	}
	if pathHotkey != "" && m.ValidatorHotkey != pathHotkey {
		return fmt.Errorf("%w: validator_hotkey %s does not match the URL's %s", ErrWrongPeer, m.ValidatorHotkey, pathHotkey)
	}
	if err := checkAge(m.Timestamp, now); err != nil {
		return err
	}
	pub, err := sig.ParseSS58(m.ValidatorHotkey)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	s, err := sig.ParseHex(m.Signature)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if err := s.Verify(pub, m.AuthMessage()); err != nil {
		return fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if !allowed(m.ValidatorHotkey) {
		return fmt.Errorf("%w: validator %s has no permit here", ErrNotAllowed, m.ValidatorHotkey)
	}
	// The key is the signature's bytes, which ParseHex has proven to be the
	// only encoding of that signature, and sr25519 signatures cannot be
	// re-made without the key. The signed message is not a key here: it has
	// one-second resolution and no nonce, and an upstream validator opens a
	// session per job, so two honest sessions may sign the same message.
	return g.useAll(now, forgetAfter(m.Timestamp, now), "miner-auth-sig:"+s.Key())
}

// NewFacilitatorAuth builds a validator's horde auth message for the
// facilitator (protocol.CapAuthV1): timestamped, with a fresh nonce.
func NewFacilitatorAuth(k *sig.Hotkey, now time.Time) *protocol.V0HordeAuthenticationRequest {
	m := &protocol.V0HordeAuthenticationRequest{PublicKey: k.Public().Hex(), Timestamp: now.Unix(), Nonce: Token()}
	b, _ := m.AuthMessage()
	m.Signature = k.SignHex(b)
	return m
}

// CheckFacilitatorAuth verifies a validator's horde auth on the
// facilitator's side and returns the validator's SS58 address.
func CheckFacilitatorAuth(m *protocol.V0HordeAuthenticationRequest, allowed func(string) bool, g *ReplayGuard, now time.Time) (string, error) {
	b, err := m.AuthMessage()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if err := checkAge(m.Timestamp, now); err != nil {
		return "", err
	}
	var pk sig.PublicKey
	copy(pk[:], b) // AuthMessage starts with the 32 raw public-key bytes
	s, err := sig.ParseHex(m.Signature)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if err := s.Verify(pk, b); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if !allowed(pk.SS58()) {
		return "", fmt.Errorf("%w: validator %s", ErrNotAllowed, pk.SS58())
	}
	// Keyed on the signature's bytes and on the signed message (public key,
	// timestamp and nonce): neither a re-encoded nor a re-signed copy passes.
	return pk.SS58(), g.useAll(now, forgetAfter(m.Timestamp, now), "facilitator-auth-sig:"+s.Key(), "facilitator-auth-msg:"+string(b))
}

// NewUpstreamFacilitatorAuth builds upstream's auth message for the
// facilitator: the hotkey's signature over its raw public key.
func NewUpstreamFacilitatorAuth(k *sig.Hotkey) *protocol.V0AuthenticationRequest {
	pk := k.Public()
	return &protocol.V0AuthenticationRequest{PublicKey: pk.Hex(), Signature: k.SignHex(pk[:])}
}

// UpstreamAuthMemory is how long the facilitator remembers an upstream
// auth's signature to refuse its replay. Upstream's auth has no time in it,
// so a captured one could be replayed forever; remembering its signature
// refuses the exact replay (re-encodings are refused by the strict
// decoding), but only while remembered: after this long, or after the
// facilitator restarts, a captured auth passes again. Only a connected
// validator is safe from it: its second session is refused.
const UpstreamAuthMemory = 7 * 24 * time.Hour

// CheckUpstreamFacilitatorAuth verifies upstream's auth message on the
// facilitator's side and returns the validator's SS58 address. The message
// carries no time: see UpstreamAuthMemory for what a replay can do.
func CheckUpstreamFacilitatorAuth(m *protocol.V0AuthenticationRequest, allowed func(string) bool, g *ReplayGuard, now time.Time) (string, error) {
	pk, err := m.PublicKeyBytes()
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	s, err := sig.ParseHex(m.Signature)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if err := s.Verify(pk, pk[:]); err != nil {
		return "", fmt.Errorf("%w: %w", ErrBadAuth, err)
	}
	if !allowed(pk.SS58()) {
		return "", fmt.Errorf("%w: validator %s", ErrNotAllowed, pk.SS58())
	}
	return pk.SS58(), g.useAll(now, now.Add(UpstreamAuthMemory), "facilitator-upstream-auth-sig:"+s.Key())
}

// Token returns a random 128-bit hex token.
func Token() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Tokens hands out one-time tokens (for executors) and redeems each once.
type Tokens struct {
	mu     sync.Mutex
	issued map[string]string
}

// NewTokens returns an empty token set.
func NewTokens() *Tokens { return &Tokens{issued: map[string]string{}} }

// Issue returns a new token bound to value (a job id).
func (t *Tokens) Issue(value string) string {
	tok := Token()
	t.mu.Lock()
	t.issued[tok] = value
	t.mu.Unlock()
	return tok
}

// Redeem returns the value bound to tok and forgets tok.
func (t *Tokens) Redeem(tok string) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	v, ok := t.issued[tok]
	delete(t.issued, tok)
	return v, ok
}

// Revoke forgets tok without redeeming it.
func (t *Tokens) Revoke(tok string) {
	t.mu.Lock()
	delete(t.issued, tok)
	t.mu.Unlock()
}

// FacilitatorSession is a validator's authenticated session with a
// facilitator.
type FacilitatorSession struct {
	*Conn
	// Capabilities are the extensions both ends advertised: none with an
	// upstream facilitator. Send horde-only messages only when listed.
	Capabilities []string
}

// Has reports whether both ends speak the extension.
func (s *FacilitatorSession) Has(capability string) bool {
	for _, c := range s.Capabilities {
		if c == capability {
			return true
		}
	}
	return false
}

// ErrRefused is a facilitator's refusal of the authentication.
var ErrRefused = errors.New("facilitator refused the authentication")

// DialFacilitator opens a validator's session with the facilitator at url
// as upstream's and horde's facilitators expect it: it advertises caps on
// the upgrade; when the facilitator's 101 advertises protocol.CapAuthV1 it
// sends horde's auth, else upstream's (or, with requireHorde, gives up:
// upstream's auth can be replayed); it returns once the facilitator
// answered success. Frames decode with protocol.DecodeFacilitatorFrame and
// bad ones are not answered (the facilitator link has no GenericError).
func DialFacilitator(ctx context.Context, url string, k *sig.Hotkey, caps []string, requireHorde bool, log *slog.Logger) (*FacilitatorSession, error) {
	conn, err := DialWith(ctx, url, Options{Capabilities: caps, Decode: protocol.DecodeFacilitatorFrame, BadFrame: NoAnswer}, log)
	if err != nil {
		return nil, err
	}
	common := protocol.CommonCapabilities(caps, conn.PeerCapabilities())
	var auth protocol.Message = NewUpstreamFacilitatorAuth(k)
	if (&FacilitatorSession{Capabilities: common}).Has(protocol.CapAuthV1) {
		auth = NewFacilitatorAuth(k, time.Now())
	} else if requireHorde {
		conn.Close("horde auth required")
		return nil, fmt.Errorf("%w: the facilitator does not offer %s and upstream's auth is not allowed", ErrRefused, protocol.CapAuthV1)
	}
	if err := conn.Send(ctx, auth); err != nil {
		conn.Close("")
		return nil, err
	}
	m, err := conn.Recv(ctx)
	if err != nil {
		return nil, err
	}
	r, ok := m.(*protocol.Response)
	if !ok || r.Status != "success" {
		conn.Close("refused")
		return nil, fmt.Errorf("%w: %+v", ErrRefused, m)
	}
	return &FacilitatorSession{Conn: conn, Capabilities: common}, nil
}
