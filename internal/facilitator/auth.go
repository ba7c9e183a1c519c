package facilitator

import (
	"container/heap"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/pyjson"
	"github.com/horde-compute/horde/sig"
)

// This file: who is asking. Every API request is authenticated before its
// body is read: by a bearer token (upstream's SDK, after /auth/login) or by
// a signature in the X-CH-* headers (see protocol/client.go for the scopes
// and their exact bytes). Everything that can be checked without the body
// is checked first — the token, the signature's type, encoding, signatory,
// scope and freshness, and that it was not used before — and a request
// that fails is answered without reading a byte of its body. Then at most
// the route's body limit is read, the signature is verified over it, and
// the signature is remembered (by its bytes) until it is too old to pass
// the freshness check anyway.

// Body limits.
const (
	// MaxBody is the default bound of a job creation or volume message body
	// (inline volumes travel inside).
	MaxBody = 64 << 20
	// MaxSmallBody is the default bound of every other request's body.
	MaxSmallBody = 1 << 20
)

// route says how a route authenticates.
type route struct {
	// scope is the signature scope the route requires ("": a bearer token
	// or a ScopeHordeRequest signature, either).
	scope   string
	maxBody int64
}

// caller is an authenticated request.
type caller struct {
	hotkey string
	// sdk: authenticated by a bearer token, as upstream's SDK is; it gets
	// answers upstream's SDK can parse.
	sdk  bool
	body []byte
	sig  *protocol.Signature // the verified X-CH signature, if any
}

// authed authenticates a request for the route before calling h.
func (f *Facilitator) authed(rt route, h func(http.ResponseWriter, *http.Request, *caller)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		c, s, raw, err := f.checkHeaders(r, rt, now)
		if err != nil {
			writeError(w, err)
			return
		}
		if r.ContentLength > rt.maxBody {
			writeError(w, fmt.Errorf("%w: body of %d bytes is over this route's %d", ErrTooLarge, r.ContentLength, rt.maxBody))
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, rt.maxBody))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeError(w, fmt.Errorf("%w: body over this route's %d bytes", ErrTooLarge, rt.maxBody))
			} else {
				writeError(w, fmt.Errorf("%w: read body: %v", ErrBadRequest, err))
			}
			return
		}
		c.body = body
		if s != nil {
			if err := f.verifyBody(r, s, raw, body); err != nil {
				writeError(w, err)
				return
			}
			// Remembered only once verified: a forged request cannot use up
			// a genuine signature.
			if err := f.requests.use(raw.Key(), time.Unix(0, s.TimestampNS).Add(f.cfg.MaxSkew+time.Second), now); err != nil {
				writeError(w, err)
				return
			}
			c.sig = s
		}
		h(w, r, c)
	}
}

// checkHeaders does every check that needs no body and returns the caller
// (body not yet read) and, when the request is signed, its signature.
func (f *Facilitator) checkHeaders(r *http.Request, rt route, now time.Time) (*caller, *protocol.Signature, sig.Signature, error) {
	c := &caller{}
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return nil, nil, sig.Signature{}, fmt.Errorf("%w: Authorization must be \"Bearer <token>\"", ErrUnauthorized)
		}
		hotkey, err := f.logins.checkToken(token, now)
		if err != nil {
			return nil, nil, sig.Signature{}, err
		}
		c.hotkey, c.sdk = hotkey, true
	}
	s, raw, err := f.signatureHeaders(r, rt, now)
	if err != nil {
		return nil, nil, sig.Signature{}, err
	}
	switch {
	case s == nil && rt.scope != "":
		return nil, nil, sig.Signature{}, fmt.Errorf("%w: sign this request with your hotkey (%s, %s, %s, %s headers, scope %s)", ErrUnauthorized,
			protocol.HeaderSignatureType, protocol.HeaderSignatory, protocol.HeaderTimestampNS, protocol.HeaderSignature, rt.scope)
	case s == nil && c.hotkey == "":
		return nil, nil, sig.Signature{}, fmt.Errorf("%w: log in (%s) and send \"Authorization: Bearer <token>\", or sign the request (scope %s)",
			ErrUnauthorized, protocol.RouteLogin, protocol.ScopeHordeRequest)
	case s != nil && c.hotkey != "" && c.hotkey != s.Signatory:
		return nil, nil, sig.Signature{}, fmt.Errorf("%w: the request is signed by %s but the token is %s's", ErrUnauthorized, s.Signatory, c.hotkey)
	case s != nil:
		c.hotkey = s.Signatory
	}
	if !f.cfg.AllowClient(c.hotkey) {
		return nil, nil, sig.Signature{}, fmt.Errorf("%w: hotkey %s is not allowed here", ErrForbidden, c.hotkey)
	}
	return c, s, raw, nil
}

// signatureHeaders reads and checks the X-CH-* headers, if any: everything
// but the signature's verification, which needs the body.
func (f *Facilitator) signatureHeaders(r *http.Request, rt route, now time.Time) (*protocol.Signature, sig.Signature, error) {
	h := r.Header
	s := &protocol.Signature{SignatureType: h.Get(protocol.HeaderSignatureType), Signatory: h.Get(protocol.HeaderSignatory),
		Signature: h.Get(protocol.HeaderSignature), SignatureScope: h.Get(protocol.HeaderSignatureScope)}
	if s.Signatory == "" && s.Signature == "" && h.Get(protocol.HeaderTimestampNS) == "" {
		return nil, sig.Signature{}, nil
	}
	bad := func(format string, args ...any) (*protocol.Signature, sig.Signature, error) {
		return nil, sig.Signature{}, fmt.Errorf("%w: "+format, append([]any{ErrUnauthorized}, args...)...)
	}
	if s.SignatureType != protocol.SignatureTypeBittensor {
		return bad("%s must be %q", protocol.HeaderSignatureType, protocol.SignatureTypeBittensor)
	}
	if s.SignatureScope == "" {
		s.SignatureScope = protocol.ScopeSignedFields // upstream's default
	}
	switch want := rt.scope; {
	case want != "" && s.SignatureScope != want:
		return bad("this route takes signatures of scope %s, not %s", want, s.SignatureScope)
	case want == "" && s.SignatureScope != protocol.ScopeHordeRequest:
		return bad("this route takes signatures of scope %s (method, path, query and body), not %s", protocol.ScopeHordeRequest, s.SignatureScope)
	}
	tsText := h.Get(protocol.HeaderTimestampNS)
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil || strconv.FormatInt(ts, 10) != tsText {
		return bad("%s must be an integer (nanoseconds since 1970)", protocol.HeaderTimestampNS)
	}
	s.TimestampNS = ts
	if age := now.Sub(time.Unix(0, ts)); age > f.cfg.MaxSkew || age < -f.cfg.MaxSkew {
		return bad("request signed %s away from the facilitator's clock (limit %s)", age.Round(time.Second), f.cfg.MaxSkew)
	}
	if _, err := sig.ParseSS58(s.Signatory); err != nil {
		return bad("%s: %v", protocol.HeaderSignatory, err)
	}
	raw, err := s.Decode()
	if err != nil {
		return bad("%s: %v", protocol.HeaderSignature, err)
	}
	if f.requests.seen(raw.Key(), now) {
		return nil, sig.Signature{}, fmt.Errorf("%w: this signature was used before", ErrReplayed)
	}
	return s, raw, nil
}

// verifyBody verifies the request's signature over its scope's payload.
func (f *Facilitator) verifyBody(r *http.Request, s *protocol.Signature, raw sig.Signature, body []byte) error {
	var payload []byte
	switch s.SignatureScope {
	case protocol.ScopeSignedFields:
		j, err := protocol.SignedFieldsOfRequest(body)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
		if payload, err = protocol.SignedPayload(j); err != nil {
			return fmt.Errorf("%w: %v", ErrBadRequest, err)
		}
	case protocol.ScopeFullRequest:
		var err error
		if payload, err = pyjson.Canonical(body); err != nil {
			return fmt.Errorf("%w: JSON body: %v", ErrBadRequest, err)
		}
	default:
		payload = protocol.RequestPayload(r.Method, requestURI(r), body)
	}
	pub, _ := sig.ParseSS58(s.Signatory) // checked in signatureHeaders
	if err := raw.Verify(pub, protocol.SignedMessage(s.TimestampNS, payload)); err != nil {
		return fmt.Errorf("%w: signature (scope %s) does not verify for %s", ErrUnauthorized, s.SignatureScope, s.Signatory)
	}
	return nil
}

// requestURI is the request target as the client wrote it.
func requestURI(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI() // absolute-form or a request made in-process
}

// maxRemembered bounds the signatures a facilitator remembers at once; past
// it, signed requests are refused (503) until old ones are forgotten.
const maxRemembered = 1 << 20

// replayGuard remembers request signatures, by their bytes, until a time
// after which the freshness check refuses them anyway.
type replayGuard struct {
	mu    sync.Mutex
	max   int
	until map[string]time.Time
	order expiries
}

func newReplayGuard(max int) *replayGuard {
	return &replayGuard{max: max, until: map[string]time.Time{}}
}

type expiry struct {
	key string
	at  time.Time
}

// expiries is a min-heap by time.
type expiries []expiry

func (e expiries) Len() int           { return len(e) }
func (e expiries) Less(i, j int) bool { return e[i].at.Before(e[j].at) }
func (e expiries) Swap(i, j int)      { e[i], e[j] = e[j], e[i] }
func (e *expiries) Push(x any)        { *e = append(*e, x.(expiry)) }
func (e *expiries) Pop() any {
	old := *e
	x := old[len(old)-1]
	*e = old[:len(old)-1]
	return x
}

func (g *replayGuard) forget(now time.Time) {
	for len(g.order) > 0 && !g.order[0].at.After(now) {
		x := heap.Pop(&g.order).(expiry)
		if t, ok := g.until[x.key]; ok && !t.After(now) {
			delete(g.until, x.key)
		}
	}
}

// seen reports whether key is remembered.
func (g *replayGuard) seen(key string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forget(now)
	_, ok := g.until[key]
	return ok
}

// use remembers key until the given time; it fails if key is remembered.
func (g *replayGuard) use(key string, until, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.forget(now)
	if _, ok := g.until[key]; ok {
		return fmt.Errorf("%w: this signature was used before", ErrReplayed)
	}
	if len(g.until) >= g.max {
		return fmt.Errorf("%w: too many recent signed requests; try again shortly", ErrUnavailable)
	}
	g.until[key] = until
	heap.Push(&g.order, expiry{key, until})
	return nil
}
