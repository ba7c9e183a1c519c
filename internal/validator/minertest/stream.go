package minertest

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/horde-compute/horde/client"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// JobKey is the key of the streaming jobs an in-process miner serves: set
// Miner.JobCert to its Cert, and Answer signs each call's v2 receipt as the
// job's signing proxy would.
type JobKey struct {
	key  ed25519.PrivateKey
	cert string
	n    atomic.Int64
}

// NewJobKey makes a job key and its certificate.
func NewJobKey(t testing.TB) *JobKey {
	t.Helper()
	key, cert, err := sr.NewKeyPair("job", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &JobKey{key: key, cert: string(cert)}
}

// Cert is the certificate every job serves with (for Miner.JobCert).
func (k *JobKey) Cert(string) string { return k.cert }

// Answer is the result of job's answering q with answer (HTTP 200,
// application/json), with the receipt the job signs for it.
func (k *JobKey) Answer(job string, q client.Request, answer []byte) *client.Result {
	in, out := sha256.Sum256(q.Body), sha256.Sum256(answer)
	now := time.Now().UTC().Truncate(time.Microsecond)
	res := &client.Result{Status: 200, RequestID: fmt.Sprintf("rq%d-%x", k.n.Add(1), in[:4]), Method: q.Method, Target: q.Target,
		ContentType: q.ContentType, ResponseContentType: "application/json"}
	res.Receipt = &sr.Receipt{Version: 2, JobUUID: job, RequestID: res.RequestID, Stamp: sr.StampClient, TimestampFrom: now, TimestampTo: now,
		Method: q.Method, Target: q.Target, RequestContentType: q.ContentType, InputSHA256: hex.EncodeToString(in[:]),
		Status: res.Status, ResponseContentType: res.ResponseContentType, OutputSHA256: hex.EncodeToString(out[:])}
	res.ReceiptB64, res.SignatureB64 = sr.Sign(k.key, res.Receipt)
	return res
}
