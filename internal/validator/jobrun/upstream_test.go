package jobrun_test

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/horde-compute/horde/internal/schematest"
	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
)

// upstreamSpec is an organic job with a volume of every kind and an output
// upload of several files.
func upstreamSpec(class string) *protocol.JobSpec {
	s := batchSpec()
	s.ExecutorClass = class
	s.ArtifactsDir = "/artifacts"
	s.Volume = &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
		{VolumeType: protocol.VolumeInline, Contents: "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", RelativePath: "a"},
		{VolumeType: protocol.VolumeSingleFile, URL: "http://h/f", RelativePath: "b/f.txt"},
		{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m", AllowPattern: []string{"*.json"}},
		{VolumeType: protocol.VolumeZipURL, Contents: "http://h/a.zip"}}}
	s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadMulti, Uploads: []protocol.OutputUpload{
		{OutputUploadType: protocol.UploadSinglePut, URL: "http://h/put", RelativePath: "out.txt"},
		{OutputUploadType: protocol.UploadSinglePost, URL: "http://h/post", RelativePath: "log.txt", FormFields: map[string]string{"k": "v"}}}}
	return s
}

// An upstream miner (no capabilities) runs an organic job with a volume and
// an output upload: every frame validates against upstream's models, the
// volume goes once (with the offer), the GPU class asks for nvidia_all, and
// no horde field or message goes out.
func TestUpstreamMinerOrganicJob(t *testing.T) {
	for _, class := range []string{protocol.ClassTest, protocol.ClassGPU24} {
		t.Run(class, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				m := minertest.New(t, map[string]int{class: 1})
				m.Upstream = true
				lease := m.Lease()
				n := &notes{}
				p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{},
					Digests: map[string]string{"img": "sha256:d"}, AllowPull: true}
				o := jobrun.New(p, jobrun.Job{UUID: "job-1", Spec: upstreamSpec(class), Organic: true}, lease.Miner(), lease, lease, n).Execute(t.Context())
				if o.Status != protocol.StatusCompleted {
					t.Fatalf("outcome %s: %s", o.Status, o.Reason(""))
				}
				if v := m.Violations(); len(v) > 0 {
					t.Fatalf("upstream refuses:\n%s", strings.Join(v, "\n"))
				}
				if got := o.Meta.MinerResponse.UploadResults; len(got) != 2 {
					t.Errorf("upload results %v", got)
				}
				var types []string
				for _, f := range m.Got() {
					types = append(types, f.MessageType())
					b, _ := protocol.Encode(f)
					if strings.Contains(string(b), "horde_") {
						t.Errorf("horde field sent to an upstream miner: %s", b)
					}
					schematest.Valid(t, "protocol_messages."+f.MessageType(), b)
					switch f := f.(type) {
					case *protocol.V0InitialJobRequest:
						if f.Volume == nil || len(f.Volume.Volumes) != 4 {
							t.Errorf("offer volume %+v", f.Volume)
						}
					case *protocol.V0JobRequest:
						want := protocol.PresetNone
						if class == protocol.ClassGPU24 {
							want = protocol.PresetNvidiaAll
						}
						if f.Volume != nil || f.DockerRunOptionsPreset != want || f.OutputUpload == nil || f.ArtifactsDir != "/artifacts" {
							t.Errorf("job request %+v", f)
						}
					}
				}
				want := "V0InitialJobRequest V0JobAcceptedReceiptRequest V0JobRequest V0JobFinishedReceiptRequest"
				if strings.Join(types, " ") != want {
					t.Errorf("frames %v, want %s", types, want)
				}
			})
		})
	}
}

// A horde miner gets horde's fields: the pull permission and the digest pin.
func TestHordeMinerGetsExtensions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		lease := m.Lease()
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{},
			Digests: map[string]string{"img": "sha256:d"}, AllowPull: true}
		o := jobrun.New(p, jobrun.Job{UUID: "job-1", Spec: upstreamSpec(protocol.ClassTest), Organic: true}, lease.Miner(), lease, lease, &notes{}).Execute(t.Context())
		if o.Status != protocol.StatusCompleted {
			t.Fatalf("outcome %s: %s", o.Status, o.Reason(""))
		}
		in := m.Initial("job-1")
		if !in.AllowPull || in.ImageDigest != "sha256:d" || in.Volume == nil {
			t.Errorf("offer %+v", in)
		}
	})
}

// A streaming job that is cancelled on an upstream miner: the run ends, but
// no V0CancelJobRequest (upstream has none) nor stop/volume request goes out.
func TestUpstreamMinerGetsNoHordeMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		m.Upstream = true
		lease := m.Lease()
		n := &notes{}
		p := jobrun.Params{Hotkey: minertest.Hotkey(t), Timing: jobrun.DefaultTiming(), Receipts: &receipts{}}
		run := jobrun.New(p, jobrun.Job{UUID: "j", Spec: streamSpec(), Organic: true}, lease.Miner(), lease, lease, n)
		ctx, cancel := context.WithCancel(t.Context())
		n.on = func(s protocol.JobStatus) {
			if s == protocol.StatusStreaming {
				if run.Relay(ctx, &protocol.V0StopJobRequest{JobUUID: "j"}) {
					t.Error("stop relayed to an upstream miner")
				}
				cancel()
			}
		}
		o := run.Execute(ctx)
		if o.Status != protocol.StatusCancelled {
			t.Fatalf("outcome %s: %s", o.Status, o.Reason(""))
		}
		for _, f := range m.Got() {
			switch f.(type) {
			case *protocol.V0CancelJobRequest, *protocol.V0StopJobRequest, *protocol.V0VolumeRequest:
				t.Errorf("sent %s to an upstream miner", f.MessageType())
			}
		}
		if v := m.Violations(); len(v) > 0 {
			t.Fatalf("upstream refuses:\n%s", strings.Join(v, "\n"))
		}
	})
}

// The check bites: what horde sent before negotiation, upstream refuses.
func TestUpstreamSchemasBite(t *testing.T) {
	b, _ := protocol.Encode(&protocol.V0JobRequest{JobUUID: "j", ExecutorClass: protocol.ClassTest, DockerImage: "img", DockerRunOptionsPreset: "none"})
	schematest.Invalid(t, "protocol_messages.ValidatorToMinerMessage.union", b) // docker_run_cmd null
	b, _ = protocol.Encode(&protocol.V0CancelJobRequest{JobUUID: "j"})
	schematest.Invalid(t, "protocol_messages.ValidatorToMinerMessage.union", b)
}
