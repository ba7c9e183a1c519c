package receipt

import (
	"bytes"
	"strconv"
	"time"

	"github.com/horde-compute/horde/pyjson"
)

// The canonical bytes of each payload type, written directly: the same
// bytes as pyjson.Marshal (keys sorted by code point, ", " and ": "
// separators, Python's string escaping), without encoding to JSON, parsing
// it back and encoding again. TestCanonicalMatchesPyjson and FuzzReceipt
// hold the two ways equal.

// canonical writes the payload's canonical bytes, or says why it cannot.
func canonical(p Payload) ([]byte, error) {
	var c canon
	c.buf.Grow(512)
	switch p := p.(type) {
	case *StartedPayload:
		c.str("executor_class", p.ExecutorClass)
		c.key("is_organic")
		c.buf.WriteString(strconv.FormatBool(p.IsOrganic))
		c.str("job_uuid", p.JobUUID)
		c.str("miner_hotkey", p.MinerHotkey)
		c.str("receipt_type", string(p.ReceiptType))
		c.time("timestamp", p.Timestamp.Time)
		c.int("ttl", int64(p.TTL))
		c.str("validator_hotkey", p.ValidatorHotkey)
	case *AcceptedPayload:
		c.str("job_uuid", p.JobUUID)
		c.str("miner_hotkey", p.MinerHotkey)
		c.str("receipt_type", string(p.ReceiptType))
		c.time("time_accepted", p.TimeAccepted.Time)
		c.time("timestamp", p.Timestamp.Time)
		c.int("ttl", int64(p.TTL))
		c.str("validator_hotkey", p.ValidatorHotkey)
	case *FinishedPayload:
		c.key("block_numbers")
		c.buf.WriteByte('[')
		for i, n := range p.BlockNumbers {
			if i > 0 {
				c.buf.WriteString(", ")
			}
			c.buf.WriteString(strconv.FormatInt(n, 10))
		}
		c.buf.WriteByte(']')
		c.str("job_uuid", p.JobUUID)
		c.str("miner_hotkey", p.MinerHotkey)
		c.str("receipt_type", string(p.ReceiptType))
		c.str("score_str", p.ScoreStr)
		c.time("time_started", p.TimeStarted.Time)
		c.int("time_took_us", p.TimeTookUS)
		c.time("timestamp", p.Timestamp.Time)
		c.str("validator_hotkey", p.ValidatorHotkey)
	default:
		return pyjson.Marshal(p)
	}
	if c.err != nil {
		return nil, c.err
	}
	c.buf.WriteByte('}')
	return c.buf.Bytes(), nil
}

// canon writes one canonical JSON object, key by key in sorted order.
type canon struct {
	buf bytes.Buffer
	err error
}

func (c *canon) key(k string) {
	if c.buf.Len() == 0 {
		c.buf.WriteByte('{')
	} else {
		c.buf.WriteString(", ")
	}
	c.buf.WriteByte('"')
	c.buf.WriteString(k)
	c.buf.WriteString(`": `)
}

func (c *canon) str(k, v string) {
	c.key(k)
	pyjson.WriteString(&c.buf, v)
}

func (c *canon) int(k string, v int64) {
	c.key(k)
	c.buf.WriteString(strconv.FormatInt(v, 10))
}

func (c *canon) time(k string, t time.Time) {
	if err := pyjson.TimeInRange(t); err != nil && c.err == nil {
		c.err = err
	}
	c.str(k, pyjson.Time(t))
}
