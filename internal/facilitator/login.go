package facilitator

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// This file: upstream's SDK login. GET (or POST) /auth/nonce gives a nonce;
// POST /auth/login {hotkey, signature, nonce} with the hotkey's signature
// (bare lower-case hex) over the nonce's UTF-8 bytes gives a bearer token.
//
// Both are stateless MACs under the facilitator's TokenKey, so handing out
// nonces costs no memory:
//
//	nonce: "<32 hex random>:<unix seconds>:<base64url HMAC-SHA256("horde-nonce/v1:" random ":" seconds)>"
//	token: "horde1.<ss58>.<expiry unix seconds>.<base64url HMAC-SHA256("horde-token/v1:" ss58 ":" expiry)>"
//
// A nonce is good for NonceLifetime and for one login (upstream's may be
// used again within its life): the MACs of used nonces are remembered
// until they expire. A token is bound to its hotkey and good until its
// expiry; the SDK treats it as opaque. Unknown, malformed or expired tokens
// are answered 401 with "Token expired" in the body, the words on which
// upstream's SDK logs in again.

// maxUsedNonces bounds the used nonces remembered at once; past it, logins
// are refused (503) until old ones expire.
const maxUsedNonces = 1 << 18

type logins struct {
	key       []byte
	nonceLife time.Duration
	tokenLife time.Duration
	used      *replayGuard
}

func newLogins(key []byte, nonceLife, tokenLife time.Duration) *logins {
	return &logins{key: key, nonceLife: nonceLife, tokenLife: tokenLife, used: newReplayGuard(maxUsedNonces)}
}

func (l *logins) mac(parts ...string) []byte {
	m := hmac.New(sha256.New, l.key)
	m.Write([]byte(strings.Join(parts, ":")))
	return m.Sum(nil)
}

var b64url = base64.RawURLEncoding.Strict()

// nonce returns a new nonce.
func (l *logins) nonce(now time.Time) string {
	r := make([]byte, 16)
	if _, err := rand.Read(r); err != nil {
		panic(err) // crypto/rand does not fail
	}
	random, ts := hex.EncodeToString(r), strconv.FormatInt(now.Unix(), 10)
	return random + ":" + ts + ":" + b64url.EncodeToString(l.mac("horde-nonce/v1", random, ts))
}

// checkNonce checks that n is a nonce of ours, still fresh, and returns
// the key that marks it used.
func (l *logins) checkNonce(n string, now time.Time) (string, error) {
	parts := strings.Split(n, ":")
	if len(parts) != 3 || len(parts[0]) != 32 || strings.ToLower(parts[0]) != parts[0] {
		return "", errors.New("invalid nonce")
	}
	if _, err := hex.DecodeString(parts[0]); err != nil {
		return "", errors.New("invalid nonce")
	}
	ts, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || strconv.FormatInt(ts, 10) != parts[1] {
		return "", errors.New("invalid nonce")
	}
	mac, err := b64url.DecodeString(parts[2])
	if err != nil || b64url.EncodeToString(mac) != parts[2] || !hmac.Equal(mac, l.mac("horde-nonce/v1", parts[0], parts[1])) {
		return "", errors.New("invalid nonce")
	}
	if age := now.Sub(time.Unix(ts, 0)); age > l.nonceLife || age < -time.Minute {
		return "", errors.New("nonce expired")
	}
	return parts[0], nil
}

// token returns a bearer token for hotkey.
func (l *logins) token(hotkey string, now time.Time) string {
	exp := strconv.FormatInt(now.Add(l.tokenLife).Unix(), 10)
	return "horde1." + hotkey + "." + exp + "." + b64url.EncodeToString(l.mac("horde-token/v1", hotkey, exp))
}

// errTokenExpired is what every refused token gets: upstream's SDK logs in
// again on a 401 whose body says "Token expired".
var errTokenExpired = fmt.Errorf("%w: Token expired or not valid here: log in again (%s)", ErrUnauthorized, protocol.RouteLogin)

// checkToken returns the hotkey a token was given to.
func (l *logins) checkToken(t string, now time.Time) (string, error) {
	parts := strings.Split(t, ".")
	if len(parts) != 4 || parts[0] != "horde1" {
		return "", errTokenExpired
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || strconv.FormatInt(exp, 10) != parts[2] {
		return "", errTokenExpired
	}
	mac, err := b64url.DecodeString(parts[3])
	if err != nil || !hmac.Equal(mac, l.mac("horde-token/v1", parts[1], parts[2])) {
		return "", errTokenExpired
	}
	if !now.Before(time.Unix(exp, 0)) {
		return "", errTokenExpired
	}
	return parts[1], nil
}

func (f *Facilitator) handleNonce(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, protocol.NonceResponse{Nonce: f.logins.nonce(time.Now())})
}

// maxLoginBody bounds a login body (three short strings).
const maxLoginBody = 4 << 10

// handleLogin answers as upstream does: 400 {"error": …} for a missing
// field, a bad or expired nonce, a malformed hotkey or signature or a hotkey
// not allowed; 401 for a signature that does not verify.
func (f *Facilitator) handleLogin(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err != nil {
		writeError(w, fmt.Errorf("%w: login body over %d bytes", ErrTooLarge, maxLoginBody))
		return
	}
	var req protocol.LoginRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, fmt.Errorf("%w: login body: %v", ErrBadRequest, err))
		return
	}
	switch {
	case req.Hotkey == "":
		writeError(w, fmt.Errorf("%w: Missing hotkey", ErrBadRequest))
		return
	case req.Signature == "":
		writeError(w, fmt.Errorf("%w: Missing signature", ErrBadRequest))
		return
	case req.Nonce == "":
		writeError(w, fmt.Errorf("%w: Missing nonce", ErrBadRequest))
		return
	}
	key, err := f.logins.checkNonce(req.Nonce, now)
	if err != nil {
		writeError(w, fmt.Errorf("%w: %v", ErrBadRequest, err))
		return
	}
	pub, err := sig.ParseSS58(req.Hotkey)
	if err != nil {
		writeError(w, fmt.Errorf("%w: hotkey: %v", ErrBadRequest, err))
		return
	}
	s, err := sig.ParseBareHex(req.Signature)
	if err != nil {
		writeError(w, fmt.Errorf("%w: signature: %v", ErrBadRequest, err))
		return
	}
	if err := s.Verify(pub, []byte(req.Nonce)); err != nil {
		writeError(w, fmt.Errorf("%w: Invalid signature", ErrUnauthorized))
		return
	}
	if !f.cfg.AllowClient(req.Hotkey) {
		writeError(w, fmt.Errorf("%w: Hotkey not allowed", ErrBadRequest))
		return
	}
	if err := f.logins.used.use(key, now.Add(f.cfg.NonceLifetime+time.Minute), now); err != nil {
		if errors.Is(err, ErrReplayed) {
			err = fmt.Errorf("%w: Nonce already used: get a new one (%s)", ErrBadRequest, protocol.RouteNonce)
		}
		writeError(w, err)
		return
	}
	f.log.Info("client logged in", "client", req.Hotkey)
	writeJSON(w, http.StatusOK, protocol.LoginResponse{Token: f.logins.token(req.Hotkey, now)})
}
