package wsconn

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

func hotkey(t *testing.T) *sig.Hotkey {
	t.Helper()
	k, err := sig.FromSeed(sig.RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestValidatorAuth(t *testing.T) {
	v, other := hotkey(t), hotkey(t)
	miner := hotkey(t).SS58()
	now := time.Now()
	allow := func(h string) bool { return h == v.SS58() }
	g := NewReplayGuard()

	good := NewValidatorAuth(v, miner, now)
	if err := CheckValidatorAuth(good, v.SS58(), miner, allow, g, now); err != nil {
		t.Fatalf("good auth refused: %v", err)
	}
	tampered := *NewValidatorAuth(v, miner, now)
	tampered.Signature = other.SignHex(tampered.AuthMessage())
	unsigned := *NewValidatorAuth(v, miner, now)
	unsigned.Signature = ""
	tests := []struct {
		name string
		m    *protocol.ValidatorAuthForMiner
		path string
		want error
	}{
		{"replayed", good, v.SS58(), ErrReplayed},
		{"stale", NewValidatorAuth(v, miner, now.Add(-11*time.Second)), v.SS58(), ErrStale},
		{"future", NewValidatorAuth(v, miner, now.Add(time.Minute)), v.SS58(), ErrStale},
		{"other miner", NewValidatorAuth(v, hotkey(t).SS58(), now), v.SS58(), ErrWrongPeer},
		{"path mismatch", NewValidatorAuth(v, miner, now), other.SS58(), ErrWrongPeer},
		{"wrong key", &tampered, v.SS58(), ErrBadAuth},
		{"unsigned", &unsigned, v.SS58(), ErrBadAuth},
		{"no permit", NewValidatorAuth(other, miner, now), other.SS58(), ErrNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckValidatorAuth(tt.m, tt.path, miner, allow, g, now); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestFacilitatorAuth(t *testing.T) {
	v := hotkey(t)
	now := time.Now()
	g := NewReplayGuard()
	all := func(string) bool { return true }
	m := NewFacilitatorAuth(v, now)
	got, err := CheckFacilitatorAuth(m, all, g, now)
	if err != nil || got != v.SS58() {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := CheckFacilitatorAuth(m, all, g, now); !errors.Is(err, ErrReplayed) {
		t.Errorf("replay: %v", err)
	}
	if _, err := CheckFacilitatorAuth(NewFacilitatorAuth(v, now.Add(-time.Minute)), all, g, now); !errors.Is(err, ErrStale) {
		t.Errorf("stale: %v", err)
	}
	noNonce := NewFacilitatorAuth(v, now)
	noNonce.Nonce = ""
	if _, err := CheckFacilitatorAuth(noNonce, all, g, now); !errors.Is(err, ErrBadAuth) {
		t.Errorf("no nonce: %v", err)
	}
	forged := NewFacilitatorAuth(v, now)
	forged.Nonce = "other"
	if _, err := CheckFacilitatorAuth(forged, all, g, now); !errors.Is(err, ErrBadAuth) {
		t.Errorf("forged: %v", err)
	}
}

func TestTokensAreOneTime(t *testing.T) {
	ts := NewTokens()
	tok := ts.Issue("job")
	if v, ok := ts.Redeem(tok); !ok || v != "job" {
		t.Fatalf("redeem = %q %v", v, ok)
	}
	if _, ok := ts.Redeem(tok); ok {
		t.Error("token redeemed twice")
	}
}

// A real WebSocket session: messages round-trip, and bad frames are answered
// with GenericError without ending the session.
func TestConnBadFrames(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		for {
			m, err := c.Recv(r.Context())
			if err != nil {
				return
			}
			c.Send(r.Context(), m) // echo
		}
	}))
	defer srv.Close()
	ctx := t.Context()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	raw, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.CloseNow()
	for _, bad := range []string{`{"message_type":"V9Whatever"}`, `{{{`, `{"message_type":"V0AcceptJobRequest","job_uuid":[]}`} {
		raw.Write(ctx, websocket.MessageText, []byte(bad))
		_, b, err := raw.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m, err := protocol.Decode(b)
		if _, ok := m.(*protocol.GenericError); err != nil || !ok {
			t.Fatalf("answer to %s: %s", bad, b)
		}
	}
	good, _ := protocol.Encode(&protocol.V0AcceptJobRequest{JobUUID: "j"})
	raw.Write(ctx, websocket.MessageText, good)
	_, b, err := raw.Read(ctx)
	if err != nil || string(b) != string(good) {
		t.Fatalf("echo = %s, %v", b, err)
	}
}

// A frame over MaxMessageSize ends the session (status 1009) without the
// receiver reading it into memory or crashing.
func TestOversizedMessage(t *testing.T) {
	got := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		_, err = c.Recv(r.Context())
		got <- err
	}))
	defer srv.Close()
	ctx := t.Context()
	raw, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.CloseNow()
	big := make([]byte, protocol.MaxMessageSize+1)
	raw.Write(ctx, websocket.MessageText, big)
	if err := <-got; !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "read limited") {
		t.Errorf("receiver: %v", err)
	}
}

// Upstream's facilitator auth (a signature over the public key alone) is
// accepted once per signature: a verbatim replay is refused while it is
// remembered, a re-encoded one always, a fresh signature (the validator
// reconnecting) is not a replay. Once forgotten, the replay passes: that is
// why upstream auth is off unless the operator allows it.
func TestUpstreamFacilitatorAuth(t *testing.T) {
	v := hotkey(t)
	now := time.Now()
	g := NewReplayGuard()
	all := func(string) bool { return true }
	captured := NewUpstreamFacilitatorAuth(v)
	b, _ := protocol.Encode(captured)
	if string(b) != `{"message_type":"V0AuthenticationRequest","public_key":"`+v.Public().Hex()+`","signature":"`+captured.Signature+`"}` {
		t.Fatalf("not upstream's shape: %s", b)
	}
	if got, err := CheckUpstreamFacilitatorAuth(captured, all, g, now); err != nil || got != v.SS58() {
		t.Fatalf("genuine: %q, %v", got, err)
	}
	if _, err := CheckUpstreamFacilitatorAuth(captured, all, g, now.Add(time.Hour)); !errors.Is(err, ErrReplayed) {
		t.Errorf("replay: %v", err)
	}
	for name, rewrite := range reencodings {
		re := *captured
		re.Signature = rewrite(re.Signature)
		if _, err := CheckUpstreamFacilitatorAuth(&re, all, NewReplayGuard(), now); !errors.Is(err, ErrBadAuth) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := CheckUpstreamFacilitatorAuth(NewUpstreamFacilitatorAuth(v), all, g, now); err != nil {
		t.Errorf("reconnect with a fresh signature: %v", err)
	}
	if _, err := CheckUpstreamFacilitatorAuth(captured, func(string) bool { return false }, NewReplayGuard(), now); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("not allowed: %v", err)
	}
	if _, err := CheckUpstreamFacilitatorAuth(captured, all, g, now.Add(UpstreamAuthMemory+time.Minute)); err != nil {
		t.Errorf("after UpstreamAuthMemory the replay passes (documented): %v", err)
	}
	horde := NewFacilitatorAuth(v, now)
	asUpstream := &protocol.V0AuthenticationRequest{PublicKey: horde.PublicKey, Signature: horde.Signature}
	if _, err := CheckUpstreamFacilitatorAuth(asUpstream, all, NewReplayGuard(), now); !errors.Is(err, ErrBadAuth) {
		t.Errorf("a horde auth's signature passed as upstream's: %v", err)
	}
}

// Capabilities travel on the upgrade both ways; a session's frames decode
// with its decoder, and bad frames get the session's answer (here: none,
// as on the facilitator link).
func TestOptionsOnTheUpgrade(t *testing.T) {
	server := make(chan *Conn, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := AcceptWith(w, r, Options{Capabilities: []string{"a", "b"}}, nil)
		if err != nil {
			return
		}
		server <- c
		c.Recv(r.Context()) // reads pings and pongs until the client goes
	}))
	defer srv.Close()
	ctx := t.Context()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	c, err := DialWith(ctx, url, Options{Capabilities: []string{"B", "c"}, Decode: protocol.DecodeFacilitatorFrame, BadFrame: NoAnswer}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close("done")
	s := <-server
	if got := strings.Join(s.PeerCapabilities(), ","); got != "b,c" {
		t.Errorf("server saw %q", got)
	}
	if got := strings.Join(c.PeerCapabilities(), ","); got != "a,b" {
		t.Errorf("client saw %q", got)
	}
	plain, err := Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close("done")
	if s2 := <-server; len(s2.PeerCapabilities()) != 0 || len(plain.PeerCapabilities()) != 2 {
		t.Errorf("no header: server saw %q", s2.PeerCapabilities())
	}
	// A bare Response and a frame that does not decode: the first is read,
	// the second is dropped without an answer.
	pinged := make(chan error, 1)
	go func() {
		pinged <- s.Ping(ctx) // answered by the client's Recv below
		s.Send(ctx, &protocol.GenericError{})
		s.ws.Write(ctx, websocket.MessageText, []byte(`{"message_type":"Nope"}`))
		s.Send(ctx, &protocol.UpstreamResponse{Status: "success"})
	}()
	m, err := c.Recv(ctx)
	if _, ok := m.(*protocol.GenericError); err != nil || !ok {
		t.Fatalf("first: %T %v", m, err)
	}
	m, err = c.Recv(ctx)
	if r, ok := m.(*protocol.Response); err != nil || !ok || r.Status != "success" {
		t.Fatalf("second: %T %v", m, err)
	}
	if err := <-pinged; err != nil {
		t.Errorf("ping: %v", err)
	}
}

// DialFacilitator against an upstream facilitator (no capabilities in its
// 101, Response without message_type): upstream's auth, in upstream's
// shape; with requireHorde nothing is sent.
func TestDialFacilitatorUpstream(t *testing.T) {
	v := hotkey(t)
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		_, b, err := ws.Read(r.Context())
		if err != nil {
			got <- nil
			return
		}
		got <- b
		ws.Write(r.Context(), websocket.MessageText, []byte(`{"status": "success", "errors": []}`))
		ws.Read(r.Context()) // until the client goes
	}))
	defer srv.Close()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	s, err := DialFacilitator(t.Context(), url, v, protocol.FacilitatorCapabilities, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close("done")
	if len(s.Capabilities) != 0 || s.Has(protocol.CapResponses) {
		t.Errorf("capabilities with an upstream facilitator: %q", s.Capabilities)
	}
	pk := v.Public()
	if b := <-got; !strings.HasPrefix(string(b), `{"message_type":"V0AuthenticationRequest","public_key":"`+pk.Hex()+`","signature":"0x`) || strings.Count(string(b), ":") != 3 {
		t.Errorf("auth sent: %s", b)
	}
	if _, err := DialFacilitator(t.Context(), url, v, protocol.FacilitatorCapabilities, true, nil); !errors.Is(err, ErrRefused) {
		t.Errorf("requireHorde: %v", err)
	}
	if b := <-got; b != nil {
		t.Errorf("requireHorde sent %s", b)
	}
}
