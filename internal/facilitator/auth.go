package facilitator

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
)

// MaxBody is the default bound of a request body (inline volumes travel inside).
const MaxBody = 64 << 20

// authedRequest is a client request whose signature verified.
type authedRequest struct {
	signatory string
	body      []byte
	sig       protocol.Signature
}

// authed verifies the client's signature headers before calling h.
func (f *Facilitator) authed(h func(http.ResponseWriter, *http.Request, *authedRequest)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, f.cfg.MaxBody+1))
		if err != nil {
			writeError(w, fmt.Errorf("%w: read body: %v", ErrBadRequest, err))
			return
		}
		if int64(len(body)) > f.cfg.MaxBody {
			writeError(w, fmt.Errorf("%w: body over %d bytes", ErrBadRequest, f.cfg.MaxBody))
			return
		}
		ar, err := f.verifyRequest(r, body, time.Now())
		if err != nil {
			writeError(w, err)
			return
		}
		h(w, r, ar)
	}
}

// verifyRequest checks the X-CH-* signature headers of a request: the
// signature covers the job spec's canonical JSON (job creation), the body,
// or "METHOD REQUEST-URI" for bodiless requests.
func (f *Facilitator) verifyRequest(r *http.Request, body []byte, now time.Time) (*authedRequest, error) {
	h := r.Header
	s := protocol.Signature{SignatureType: h.Get(protocol.HeaderSignatureType), Signatory: h.Get(protocol.HeaderSignatory),
		Signature: h.Get(protocol.HeaderSignature), SignatureScope: h.Get(protocol.HeaderSignatureScope)}
	if s.Signatory == "" || s.Signature == "" {
		return nil, fmt.Errorf("%w: sign the request with your hotkey (%s, %s, %s headers)", ErrUnauthorized,
			protocol.HeaderSignatory, protocol.HeaderTimestampNS, protocol.HeaderSignature)
	}
	if s.SignatureType != protocol.SignatureTypeBittensor {
		return nil, fmt.Errorf("%w: %s must be %q", ErrUnauthorized, protocol.HeaderSignatureType, protocol.SignatureTypeBittensor)
	}
	ts, err := strconv.ParseInt(h.Get(protocol.HeaderTimestampNS), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not an integer", ErrUnauthorized, protocol.HeaderTimestampNS)
	}
	s.TimestampNS = ts
	if age := now.Sub(time.Unix(0, ts)); age > f.cfg.MaxSkew || age < -f.cfg.MaxSkew {
		return nil, fmt.Errorf("%w: request signed %s away from the facilitator's clock (limit %s)", ErrUnauthorized, age.Round(time.Second), f.cfg.MaxSkew)
	}
	pub, err := sig.ParseSS58(s.Signatory)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	raw, err := base64.StdEncoding.DecodeString(s.Signature)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64", ErrUnauthorized, protocol.HeaderSignature)
	}
	payload := body
	if r.Method == http.MethodPost && r.URL.Path == protocol.RouteCreateJob {
		var spec protocol.JobSpec
		if err := decodeStrict(body, &spec); err != nil {
			return nil, err
		}
		if payload, err = spec.SignedBytes(); err != nil {
			return nil, err
		}
	} else if len(body) == 0 {
		payload = []byte(r.Method + " " + r.URL.RequestURI())
	}
	if err := sig.Verify(pub, protocol.SignedMessage(ts, payload), raw); err != nil {
		return nil, fmt.Errorf("%w: signature does not verify for %s: %v", ErrUnauthorized, s.Signatory, err)
	}
	return &authedRequest{signatory: s.Signatory, body: body, sig: s}, nil
}

// decodeStrict decodes JSON, refusing unknown fields.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: JSON body: %v", ErrBadRequest, err)
	}
	return nil
}
