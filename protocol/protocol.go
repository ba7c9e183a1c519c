// Package protocol holds every wire message of horde: the V0 messages of
// ComputeHorde's validator↔miner and miner↔executor links, the
// validator↔facilitator link and the client HTTP API. One file per link.
//
// Messages are JSON objects discriminated by "message_type". Unknown fields
// are ignored; an unknown message type decodes to ErrUnknownType, which the
// receiver answers with GenericError.
package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// MaxMessageSize bounds one decoded message (inline volumes travel inside).
const MaxMessageSize = 64 << 20

// Errors callers branch on.
var (
	ErrUnknownType = errors.New("unknown message type")
	ErrMalformed   = errors.New("malformed message")
)

// Message is any wire message.
type Message interface{ MessageType() string }

var registry = map[string]reflect.Type{}

func register(ms ...Message) {
	for _, m := range ms {
		t := reflect.TypeOf(m).Elem()
		registry[m.MessageType()] = t
	}
}

// bareMessage is a message written without message_type (upstream's
// Response is one).
type bareMessage interface {
	Message
	bare()
}

// Encode writes m as a JSON object with its message_type first (a bare
// message, such as UpstreamResponse, without one).
func Encode(m Message) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", m.MessageType(), err)
	}
	if _, ok := m.(bareMessage); ok {
		return body, nil
	}
	var buf bytes.Buffer
	buf.Grow(len(body) + 40)
	buf.WriteString(`{"message_type":`)
	tb, _ := json.Marshal(m.MessageType())
	buf.Write(tb)
	if len(body) > 2 {
		buf.WriteByte(',')
		buf.Write(body[1:])
	} else {
		buf.WriteByte('}')
	}
	return buf.Bytes(), nil
}

// Decode reads one message. An unknown message_type yields ErrUnknownType
// (with the type name in the error); bad JSON yields ErrMalformed.
func Decode(b []byte) (Message, error) {
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds %d", ErrMalformed, len(b), MaxMessageSize)
	}
	var head struct {
		MessageType *string `json:"message_type"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if head.MessageType == nil {
		return nil, fmt.Errorf("%w: no message_type", ErrMalformed)
	}
	t, ok := registry[*head.MessageType]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownType, *head.MessageType)
	}
	m := reflect.New(t).Interface().(Message)
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, *head.MessageType, err)
	}
	if v, ok := m.(interface{ validate() error }); ok {
		if err := v.validate(); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, *head.MessageType, err)
		}
	}
	return m, nil
}

// JobUUIDOf returns the job_uuid a message carries, or "".
func JobUUIDOf(m Message) string {
	v := reflect.ValueOf(m)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return ""
	}
	if f := v.FieldByName("JobUUID"); f.IsValid() && f.Kind() == reflect.String {
		return f.String()
	}
	return ""
}

// GenericError is sent by either side when a message cannot be handled.
type GenericError struct {
	Details string `json:"details"`
}

func (*GenericError) MessageType() string { return "GenericError" }

// UnauthorizedError refuses a session's authentication.
type UnauthorizedError struct {
	Code    string `json:"code"`
	Details string `json:"details"`
}

func (*UnauthorizedError) MessageType() string { return "UnauthorizedError" }

func init() { register(&GenericError{}, &UnauthorizedError{}) }
