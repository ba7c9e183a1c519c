package protocol

// This file: what a horde validator sends upstream's facilitator, which
// knows none of horde's extensions (see FacilitatorCapabilities): messages
// it has no model for are not sent, and a status update is put in the
// shape upstream's JobStatusUpdate takes.

// FacilitatorCapabilityOf returns the extension a validator → facilitator
// message needs, "" for upstream's own messages.
func FacilitatorCapabilityOf(m Message) string {
	switch m.(type) {
	case *V0JobVolumeResult:
		return CapVolumeMessages
	case *V0ValidatorReport:
		return CapReports
	}
	return ""
}

// UpstreamStatusUpdate returns u as upstream's facilitator takes it.
// Upstream has no cancelled status (nor clients who cancel): a cancelled
// job is reported horde_failed, saying so. streaming_details forbids extra
// keys upstream: the miner's signature goes to horde_streaming_proof (the
// metadata keeps extra keys). Other horde metadata stays: upstream keeps it.
func UpstreamStatusUpdate(u V0JobStatusUpdate) *V0JobStatusUpdate {
	if u.Metadata != nil {
		md := *u.Metadata
		if sd := md.StreamingDetails; sd != nil && sd.MinerSignature != "" {
			c := *sd
			md.StreamingProof, c.MinerSignature = c.MinerSignature, ""
			md.StreamingDetails = &c
		}
		u.Metadata = &md
	}
	if u.Status == StatusCancelled {
		u.Status = StatusHordeFailed
		md := StatusMetadata{}
		if u.Metadata != nil {
			md = *u.Metadata
		}
		md.HordeFailureDetails = &HordeFailureDetails{ReportedBy: ByValidator, Reason: HordeGenericError, Message: "cancelled by the client"}
		u.Metadata = &md
	}
	return &u
}
