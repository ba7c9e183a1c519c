package metrics

import (
	"strings"

	"github.com/horde-compute/horde/protocol"
)

// Reason is the reason a status's metadata gives, for a label: the
// rejection's, the job failure's or the horde failure's; "" for none. A
// reason that is not a short snake_case word (a peer can send anything)
// becomes "other", so labels stay bounded.
func Reason(m *protocol.StatusMetadata) string {
	if m == nil {
		return ""
	}
	var r string
	switch {
	case m.JobRejectionDetails != nil:
		r = string(m.JobRejectionDetails.Reason)
	case m.JobFailureDetails != nil:
		r = string(m.JobFailureDetails.Reason)
	case m.HordeFailureDetails != nil:
		r = string(m.HordeFailureDetails.Reason)
	}
	return Word(r)
}

// Word is s if it is a short snake_case word (a bounded label value),
// else "other"; "" stays "".
func Word(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 48 || strings.IndexFunc(s, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.') }) >= 0 {
		return "other"
	}
	return s
}

// Stages are the stages of a job's run that the validator times (its
// status metadata's timings, as "validator:<stage>").
var Stages = []string{"reserve", "startup", "download", "streaming", "execute", "upload"}
