package validator

import (
	"strings"
	"testing"
	"testing/synctest"

	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/protocol"
)

// A client's job with a volume and an output upload, end to end through the
// validator on an upstream miner: the miner gets upstream's exact messages
// (the volume once), the job completes and the facilitator hears it.
func TestUpstreamMinerEndToEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := minertest.New(t, map[string]int{protocol.ClassTest: 1})
		m.Upstream = true
		h := newHarness(t, Config{}, m)
		defer h.stop()
		s := spec()
		s.Volume = &protocol.Volume{VolumeType: protocol.VolumeMulti, Volumes: []protocol.Volume{
			{VolumeType: protocol.VolumeSingleFile, URL: "http://h/f", RelativePath: "in/f.txt"},
			{VolumeType: protocol.VolumeHuggingFace, RepoID: "org/m", AllowPattern: []string{"*.json"}}}}
		s.OutputUpload = &protocol.OutputUpload{OutputUploadType: protocol.UploadSinglePut, URL: "http://h/put", RelativePath: "out.txt"}
		s.ArtifactsDir = "/artifacts"
		h.fac.send(h.job(t, "j1", s))
		synctest.Wait()
		got := statusList(h.fac.statuses("j1"))
		want := []protocol.JobStatus{protocol.StatusReceived, protocol.StatusAccepted, protocol.StatusExecutorReady, protocol.StatusVolumesReady,
			protocol.StatusExecutionDone, protocol.StatusCompleted}
		if strings.Join(asStrings(got), ",") != strings.Join(asStrings(want), ",") {
			t.Fatalf("statuses %v", got)
		}
		fin := last(t, h.fac.statuses("j1"))
		if r := fin.Metadata.MinerResponse; r == nil || r.DockerProcessStdout != "hi\n" || r.UploadResults["out.txt"] == "" {
			t.Errorf("final %+v", fin.Metadata.MinerResponse)
		}
		if v := m.Violations(); len(v) > 0 {
			t.Fatalf("upstream refuses:\n%s", strings.Join(v, "\n"))
		}
		in := m.Initial("j1")
		if in == nil || in.Volume == nil || len(in.Volume.Volumes) != 2 {
			t.Fatalf("offer %+v", in)
		}
		for _, f := range m.Got() {
			if jr, ok := f.(*protocol.V0JobRequest); ok && (jr.Volume != nil || jr.OutputUpload == nil || jr.ArtifactsDir != "/artifacts") {
				t.Errorf("job request %+v", jr)
			}
		}
	})
}
