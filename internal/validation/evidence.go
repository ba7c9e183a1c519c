package validation

import (
	"encoding/base64"
	"fmt"

	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/sig"
	sr "github.com/horde-compute/horde/streamreceipt"
)

// VerifyPair checks a reported pair as evidence about miner: the miner's
// hotkey signed the job's key (proof), that key signed the receipt, and the
// receipt covers exactly these bodies of this job. The timestamps are the
// caller's to judge.
func VerifyPair(jobUUID, miner string, proof protocol.StreamingServerDetails, p protocol.StreamPair) (*sr.Receipt, error) {
	msg := protocol.StreamingReadyMessage(jobUUID, proof.StreamingServerAddress, proof.StreamingServerPort, proof.StreamingServerCert)
	if err := sig.VerifyHex(miner, msg, proof.MinerSignature); err != nil {
		return nil, fmt.Errorf("the miner's signature of the job's key does not verify: %w", err)
	}
	pub, err := sr.PublicKey([]byte(proof.StreamingServerCert))
	if err != nil {
		return nil, fmt.Errorf("job certificate: %w", err)
	}
	req, err1 := base64.StdEncoding.DecodeString(p.RequestB64)
	resp, err2 := base64.StdEncoding.DecodeString(p.ResponseB64)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("bodies must be base64")
	}
	return sr.VerifyEvidence(pub, jobUUID, p.ReceiptB64, p.SignatureB64, req, resp)
}
