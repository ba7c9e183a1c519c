package facilitator

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/horde-compute/horde/internal/store"
	"github.com/horde-compute/horde/protocol"
)

// Errors of the facilitator that callers branch on; statusOf maps them (and
// the store's) to HTTP statuses and stable codes.
var (
	// ErrBadRequest: the request is malformed or asks for what the job's
	// state does not allow.
	ErrBadRequest = errors.New("bad request")
	// ErrUnauthorized: the request's signature is missing, stale or wrong.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrUnavailable: what the request needs (the job's validator, the
	// facilitator itself) is not there now; trying later may succeed.
	ErrUnavailable = errors.New("unavailable")
	// ErrTimeout: a streaming job did not answer in time.
	ErrTimeout = errors.New("timed out")
	// ErrForbidden: the caller is authenticated but not allowed.
	ErrForbidden = errors.New("forbidden")
	// ErrReplayed: the request's signature was used before.
	ErrReplayed = errors.New("replayed")
	// ErrTooLarge: the request's body is over the route's limit.
	ErrTooLarge = errors.New("request too large")
)

// statusOf maps an error to its HTTP status and stable code: the one place
// it happens.
func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, "bad_request"
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized"
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden, "forbidden"
	case errors.Is(err, ErrReplayed):
		return http.StatusConflict, "replayed"
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, store.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, store.ErrDuplicate):
		return http.StatusConflict, "duplicate"
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable, "unavailable"
	case errors.Is(err, ErrTimeout):
		return http.StatusGatewayTimeout, "timeout"
	}
	return http.StatusInternalServerError, "internal"
}

func writeError(w http.ResponseWriter, err error) {
	status, code := statusOf(err)
	writeJSON(w, status, protocol.APIError{Error: err.Error(), Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
