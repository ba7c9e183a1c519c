package jobrun_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
	"github.com/horde-compute/horde/receipt"
)

// receipts is an in-memory jobrun.Receipts.
type receipts struct {
	mu          sync.Mutex
	rs          []receipt.Receipt
	failStarted error
}

func (s *receipts) PutReceipt(_ context.Context, r receipt.Receipt) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Type == receipt.JobStarted && s.failStarted != nil {
		return s.failStarted
	}
	s.rs = append(s.rs, r)
	return nil
}

func (s *receipts) ReceiptsForJob(_ context.Context, uuid string) ([]receipt.Receipt, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []receipt.Receipt
	for _, r := range s.rs {
		if p, err := r.Decode(); err == nil && baseOf(p).JobUUID == uuid {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *receipts) types() []receipt.Type {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []receipt.Type
	for _, r := range s.rs {
		out = append(out, r.Type)
	}
	return out
}

func baseOf(p receipt.Payload) receipt.Base {
	switch p := p.(type) {
	case *receipt.StartedPayload:
		return p.Base
	case *receipt.AcceptedPayload:
		return p.Base
	case *receipt.FinishedPayload:
		return p.Base
	}
	return receipt.Base{}
}

// notes records what a run or a driver tells; on, if set, hears each status.
type notes struct {
	mu       sync.Mutex
	statuses []protocol.StatusEntry
	volumes  []*protocol.V0VolumeResult
	on       func(protocol.JobStatus)
}

func (n *notes) Status(s protocol.JobStatus, meta *protocol.StatusMetadata) {
	n.mu.Lock()
	n.statuses = append(n.statuses, protocol.StatusEntry{Status: s, Metadata: meta})
	on := n.on
	n.mu.Unlock()
	if on != nil {
		on(s)
	}
}

func (n *notes) VolumeResult(r *protocol.V0VolumeResult) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.volumes = append(n.volumes, r)
}

func (n *notes) list() []protocol.JobStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []protocol.JobStatus
	for _, e := range n.statuses {
		out = append(out, e.Status)
	}
	return out
}

func (n *notes) last() protocol.StatusEntry {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.statuses[len(n.statuses)-1]
}

// script answers honestly until the message of type cut would go out;
// then it sends what then returns instead and stops (or drops the session).
type script struct {
	cut   string
	then  func(uuid string) []protocol.Message
	close bool
}

func (s script) reply(m *minertest.Miner) func(minertest.Peer, protocol.Message) {
	var mu sync.Mutex
	cut := false
	return func(p minertest.Peer, f protocol.Message) {
		var seq []protocol.Message
		uuid := protocol.JobUUIDOf(f)
		switch f := f.(type) {
		case *protocol.V0InitialJobRequest:
			seq = []protocol.Message{&protocol.V0AcceptJobRequest{JobUUID: uuid}, &protocol.V0ExecutorReadyRequest{JobUUID: uuid}}
		case *protocol.V0JobRequest:
			seq = []protocol.Message{&protocol.V0VolumesReadyRequest{JobUUID: uuid}}
			if in := m.Initial(uuid); in != nil && in.StreamingDetails != nil {
				seq = append(seq, m.StreamingReady(uuid))
			} else {
				seq = append(seq, &protocol.V0ExecutionDoneRequest{JobUUID: uuid}, minertest.Finished(f))
			}
		case *protocol.V0StopJobRequest:
			seq = []protocol.Message{&protocol.V0ExecutionDoneRequest{JobUUID: uuid}, &protocol.V0JobFinishedRequest{JobUUID: uuid, DockerProcessStdout: "stopped\n"}}
		case *protocol.V0VolumeRequest:
			seq = []protocol.Message{&protocol.V0VolumeResult{JobUUID: uuid, MessageID: f.MessageID, Success: true}}
		}
		mu.Lock()
		defer mu.Unlock()
		for _, msg := range seq {
			if cut {
				return
			}
			if msg.MessageType() == s.cut {
				cut = true
				if s.then != nil {
					for _, alt := range s.then(uuid) {
						p.Send(alt)
					}
				}
				if s.close {
					p.Close()
				}
				return
			}
			p.Send(msg)
		}
	}
}

func batchSpec() *protocol.JobSpec {
	return &protocol.JobSpec{ExecutorClass: protocol.ClassTest, DockerImage: "img", Args: []string{"echo", "hi"},
		DownloadTimeLimit: 10, ExecutionTimeLimit: 20, UploadTimeLimit: 30}
}

func streamSpec() *protocol.JobSpec {
	s := batchSpec()
	s.StreamingDetails = &protocol.StreamingDetails{PublicKey: "client-cert"}
	return s
}

const exitCode = 3

// With the default timing and batchSpec's limits, each stage's deadline
// (cumulative) falls at: reserve 7s, startup 7+5, download 12+5+10,
// streaming 27+5+60, execute 27(+65 streaming)+20, upload +30.
func TestRun(t *testing.T) {
	code := exitCode
	all := []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusExecutorReady, protocol.StatusVolumesReady, protocol.StatusExecutionDone}
	tests := []struct {
		name      string
		streaming bool
		script    script
		// cancelOn cancels the run's context when the run tells this status;
		// stopOn relays a stop request then.
		cancelOn, stopOn protocol.JobStatus
		status           protocol.JobStatus
		reason           string // horde failure or rejection reason
		retry            bool
		took             time.Duration // -1: not checked
		statuses         []protocol.JobStatus
		finished         bool     // a job-finished receipt was signed and sent
		sent             []string // extra frames the miner must have got
	}{
		{name: "completed", status: protocol.StatusCompleted, took: 0, statuses: all, finished: true},
		{name: "declined", script: script{cut: "V0AcceptJobRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0DeclineJobRequest{JobUUID: u, Reason: protocol.RejectUnknown, Message: "no"}}
		}}, status: protocol.StatusRejected, reason: string(protocol.RejectUnknown), retry: true, took: 0},
		{name: "reserve timeout", script: script{cut: "V0AcceptJobRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeInitialTimeout), retry: true, took: 7 * time.Second, finished: true},
		{name: "startup timeout", script: script{cut: "V0ExecutorReadyRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeReadinessTimeout), took: 12 * time.Second, statuses: all[:1], finished: true},
		{name: "download timeout", script: script{cut: "V0VolumesReadyRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeVolumesTimeout), took: 27 * time.Second, statuses: all[:2], finished: true},
		{name: "execute timeout", script: script{cut: "V0ExecutionDoneRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeExecutionTimeout), took: 47 * time.Second, statuses: all[:3], finished: true},
		{name: "upload timeout", script: script{cut: "V0JobFinishedRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeFinalTimeout), took: 77 * time.Second, statuses: all, finished: true},
		{name: "streaming timeout", streaming: true, script: script{cut: "V0StreamingJobReadyRequest"},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeStreamingReadyTimeout), took: 92 * time.Second, statuses: all[:3], finished: true},
		{name: "lost during reserve", script: script{cut: "V0AcceptJobRequest", close: true},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeMinerConnectionFailed), retry: true, took: 0, finished: true},
		{name: "lost during startup", script: script{cut: "V0ExecutorReadyRequest", close: true},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeMinerConnectionFailed), retry: true, took: 0, statuses: all[:1], finished: true},
		{name: "lost during execute", script: script{cut: "V0ExecutionDoneRequest", close: true},
			status: protocol.StatusHordeFailed, reason: string(protocol.HordeMinerConnectionFailed), took: 0, statuses: all[:3], finished: true},
		{name: "job failed", script: script{cut: "V0ExecutionDoneRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0JobFailedRequest{JobUUID: u, Reason: protocol.JobFailureReason("nonzero_exit_code"), Message: "exit 3",
				DockerProcessExitStatus: &code, Context: map[string]any{"horde_reason": "nonzero_exit"}}}
		}}, status: protocol.StatusFailed, took: 0, statuses: all[:3], finished: true},
		{name: "horde failed", script: script{cut: "V0VolumesReadyRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0HordeFailedRequest{JobUUID: u, ReportedBy: protocol.ByMiner, Reason: protocol.HordeExecutorDisconnected, Message: "gone"}}
		}}, status: protocol.StatusHordeFailed, reason: string(protocol.HordeExecutorDisconnected), took: 0, statuses: all[:2], finished: true},
		{name: "executor failed", script: script{cut: "V0ExecutorReadyRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0ExecutorFailedRequest{JobUUID: u}}
		}}, status: protocol.StatusHordeFailed, reason: string(protocol.HordeSpinupFailed), took: 0, statuses: all[:1], finished: true},
		{name: "streaming not ready", streaming: true, script: script{cut: "V0StreamingJobReadyRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0StreamingJobNotReadyRequest{JobUUID: u}}
		}}, status: protocol.StatusHordeFailed, reason: string(protocol.HordeStreamingFailed), took: 0, statuses: all[:3], finished: true},
		{name: "streaming bad signature", streaming: true, script: script{cut: "V0StreamingJobReadyRequest", then: func(u string) []protocol.Message {
			return []protocol.Message{&protocol.V0StreamingJobReadyRequest{JobUUID: u, IP: "192.0.2.1", Port: 8443, PublicKey: "k", MinerSignature: "0x00"}}
		}}, status: protocol.StatusHordeFailed, reason: string(protocol.HordeSecurityCheckFailed), took: 0, statuses: all[:3], finished: true,
			sent: []string{"V0CancelJobRequest"}},
		{name: "streaming served and stopped", streaming: true, stopOn: protocol.StatusStreaming, status: protocol.StatusCompleted, took: 0,
			statuses: []protocol.JobStatus{protocol.StatusAccepted, protocol.StatusExecutorReady, protocol.StatusVolumesReady, protocol.StatusStreaming, protocol.StatusExecutionDone},
			finished: true, sent: []string{"V0StopJobRequest"}},
		{name: "cancelled", script: script{cut: "V0ExecutionDoneRequest"}, cancelOn: protocol.StatusVolumesReady,
			status: protocol.StatusCancelled, took: 0, statuses: all[:3], finished: true, sent: []string{"V0CancelJobRequest"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				st := &receipts{}
				m := minertest.New(t, nil)
				if tt.script.cut != "" {
					m.Reply = tt.script.reply(m)
				}
				lease := m.Lease()
				spec := batchSpec()
				if tt.streaming {
					spec = streamSpec()
				}
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: st, Digests: map[string]string{"img": "sha256:d"}, AllowPull: true}
				n := &notes{}
				run := jobrun.New(p, jobrun.Job{UUID: "job-1", Spec: spec, Organic: true}, lease.Miner(), lease, lease, n)
				n.on = func(s protocol.JobStatus) {
					if s == tt.cancelOn {
						cancel()
					}
					if s == tt.stopOn && !run.Relay(ctx, &protocol.V0StopJobRequest{JobUUID: "job-1"}) {
						t.Error("relay refused while the job serves")
					}
				}
				start := time.Now()
				o := run.Execute(ctx)
				if o.Status != tt.status {
					t.Fatalf("status %s, want %s: %s", o.Status, tt.status, o.Reason(""))
				}
				if got := reasonOf(o); got != tt.reason {
					t.Errorf("reason %q, want %q (%s)", got, tt.reason, o.Reason(""))
				}
				if o.Retry != tt.retry {
					t.Errorf("retry %v, want %v", o.Retry, tt.retry)
				}
				if took := time.Since(start); tt.took >= 0 && took != tt.took {
					t.Errorf("ended after %s, want %s", took, tt.took)
				}
				if got := n.list(); !equal(got, tt.statuses) {
					t.Errorf("statuses %v, want %v", got, tt.statuses)
				}
				types := frameTypes(m.Got())
				if signed := contains(st.types(), receipt.JobFinished); signed != tt.finished {
					t.Errorf("finished receipt signed: %v, want %v", signed, tt.finished)
				}
				if sent := contains(types, "V0JobFinishedReceiptRequest"); sent && !tt.finished {
					t.Errorf("finished receipt sent for a job that did not run (frames %v)", types)
				}
				for _, want := range tt.sent {
					if !contains(types, want) {
						t.Errorf("miner did not get %s (got %v)", want, types)
					}
				}
				if run.Relay(ctx, &protocol.V0StopJobRequest{JobUUID: "job-1"}) {
					t.Error("relay accepted after the run ended")
				}
				// The offer names the digest and carries a receipt the miner can verify.
				in := m.Initial("job-1")
				if in == nil || in.ImageDigest != "sha256:d" || !in.AllowPull || in.ExecutorTiming.ExecutionTimeLimit != 20 {
					t.Fatalf("offer %+v", in)
				}
				var sp receipt.StartedPayload
				if err := jsonUnmarshal(in.JobStartedReceiptPayload, &sp); err != nil || receipt.VerifyBy(p.Hotkey.SS58(), &sp, in.JobStartedReceiptSignature) != nil {
					t.Errorf("started receipt does not verify: %v", err)
				}
				if sp.TTL != 7+5+5+10+20+30 || !sp.IsOrganic || sp.ExecutorClass != protocol.ClassTest {
					t.Errorf("started receipt %+v", sp)
				}
				checkCompleted(t, o, st, tt.status)
			})
		})
	}
}

func checkCompleted(t *testing.T, o jobrun.Outcome, st *receipts, status protocol.JobStatus) {
	t.Helper()
	if status == protocol.StatusRejected {
		if o.Meta.Timings != nil {
			t.Errorf("a declined job has timings %v", o.Meta.Timings)
		}
		return
	}
	if status != protocol.StatusCompleted {
		return
	}
	if o.Meta.MinerResponse == nil || o.Meta.MinerResponse.DockerProcessStdout != "hi\n" && o.Meta.MinerResponse.DockerProcessStdout != "stopped\n" {
		t.Errorf("miner response %+v", o.Meta.MinerResponse)
	}
	for _, k := range []string{"validator:reserve", "validator:startup", "validator:download", "validator:execute", "validator:upload"} {
		if _, ok := o.Meta.Timings[k]; !ok {
			t.Errorf("timings lack %s: %v", k, o.Meta.Timings)
		}
	}
	if got := st.types(); !equal(got, []receipt.Type{receipt.JobStarted, receipt.JobAccepted, receipt.JobFinished}) {
		t.Errorf("stored receipts %v", got)
	}
}

func reasonOf(o jobrun.Outcome) string {
	switch {
	case o.Meta == nil:
		return ""
	case o.Meta.HordeFailureDetails != nil:
		return string(o.Meta.HordeFailureDetails.Reason)
	case o.Meta.JobRejectionDetails != nil:
		return string(o.Meta.JobRejectionDetails.Reason)
	}
	return ""
}

func frameTypes(ms []protocol.Message) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.MessageType())
	}
	return out
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A busy miner's decline carries its excuses through to the outcome.
func TestRunBusyDeclineKeepsExcuses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, nil)
		excuse := []byte(`{"receipt_type":"JobStartedReceipt"}`)
		m.Reply = func(p minertest.Peer, f protocol.Message) {
			if in, ok := f.(*protocol.V0InitialJobRequest); ok {
				p.Send(&protocol.V0DeclineJobRequest{JobUUID: in.JobUUID, Reason: protocol.RejectBusy, Message: "full", Receipts: []json.RawMessage{excuse}})
			}
		}
		lease := m.Lease()
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{}}
		o := jobrun.New(p, jobrun.Job{UUID: "j", Spec: batchSpec()}, lease.Miner(), lease, lease, &notes{}).Execute(t.Context())
		if !o.Busy() || !o.Retry || len(o.Excuses) != 1 || string(o.Excuses[0]) != string(excuse) {
			t.Fatalf("outcome %+v", o)
		}
		if got := o.Reason("m"); got != "miner m declined (busy): full" {
			t.Errorf("reason %q", got)
		}
	})
}

// Volume results the miner reports while the job serves reach the notes;
// messages no stage waits for are ignored.
func TestRunPassesVolumeResults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, nil)
		lease := m.Lease()
		n := &notes{}
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{}}
		run := jobrun.New(p, jobrun.Job{UUID: "j", Spec: streamSpec()}, lease.Miner(), lease, lease, n)
		n.on = func(s protocol.JobStatus) {
			if s != protocol.StatusStreaming {
				return
			}
			lease.Push(&protocol.V0MachineSpecsRequest{JobUUID: "j"})
			for _, id := range []string{"v1", "v2"} {
				run.Relay(t.Context(), &protocol.V0VolumeRequest{JobUUID: "j", MessageID: id, Volume: &protocol.Volume{VolumeType: protocol.VolumeInline, Contents: "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="}})
			}
			run.Relay(t.Context(), &protocol.V0StopJobRequest{JobUUID: "j"})
		}
		if o := run.Execute(t.Context()); o.Status != protocol.StatusCompleted {
			t.Fatalf("status %s: %s", o.Status, o.Reason(""))
		}
		if len(n.volumes) != 2 || n.volumes[0].MessageID != "v1" || n.volumes[1].MessageID != "v2" || !n.volumes[0].Success {
			t.Errorf("volume results %+v", n.volumes)
		}
	})
}

// A job-started receipt that cannot be stored fails the job before the
// miner hears of it: no receipt the validator cannot show is ever handed out.
func TestRunFailsWhenStartedReceiptIsNotStored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, nil)
		lease := m.Lease()
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{failStarted: errors.New("disk full")}}
		o := jobrun.New(p, jobrun.Job{UUID: "j", Spec: batchSpec()}, lease.Miner(), lease, lease, &notes{}).Execute(t.Context())
		d := o.Meta.HordeFailureDetails
		if o.Status != protocol.StatusHordeFailed || o.Retry || d.Reason != protocol.HordeGenericError || !strings.Contains(d.Message, "could not store the job started receipt: disk full") {
			t.Fatalf("outcome %s retry=%v %+v", o.Status, o.Retry, d)
		}
		if got := m.Got(); len(got) != 0 {
			t.Errorf("miner got %v", frameTypes(got))
		}
	})
}

// An offer that cannot be sent is a lost miner, worth another try; the
// miner never saw it, so no receipt follows.
func TestRunOfferNotSent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, nil)
		lease := m.Lease()
		lease.FailSends(errors.New("broken pipe"))
		st := &receipts{}
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: st}
		o := jobrun.New(p, jobrun.Job{UUID: "j", Spec: batchSpec()}, lease.Miner(), lease, lease, &notes{}).Execute(t.Context())
		if o.Status != protocol.StatusHordeFailed || !o.Retry || o.Meta.HordeFailureDetails.Reason != protocol.HordeMinerConnectionFailed {
			t.Fatalf("outcome %+v", o)
		}
		if got := st.types(); !equal(got, []receipt.Type{receipt.JobStarted}) {
			t.Errorf("stored receipts %v", got)
		}
	})
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
