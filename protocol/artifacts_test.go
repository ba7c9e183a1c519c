package protocol

import (
	"strings"
	"testing"
)

func TestCheckArtifactsDir(t *testing.T) {
	for _, ok := range []string{"/artifacts", "/a/b", "/volume/out", "/output/artifacts", "/procx"} {
		if err := CheckArtifactsDir(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for dir, why := range map[string]string{
		"artifacts":                    "absolute",
		"":                             "absolute",
		"/a/../b":                      "clean",
		"/a/":                          "clean",
		"//a":                          "clean",
		"/a/./b":                       "clean",
		"/a:rw":                        "mount options",
		"/a,z":                         "mount options",
		"/host:/etc":                   "mount options",
		"/a\nb":                        "control",
		"/":                            "reserved",
		"/volume":                      "reserved",
		"/output":                      "reserved",
		"/tmp":                         "reserved",
		"/proc/self":                   "reserved",
		"/sys":                         "reserved",
		"/dev/shm":                     "reserved",
		"/" + strings.Repeat("a", 300): "255",
	} {
		err := CheckArtifactsDir(dir)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%q: %v, want an error saying %q", dir, err, why)
		}
	}
	s := JobSpec{ExecutorClass: "c", DockerImage: "i", ExecutionTimeLimit: 1, ArtifactsDir: "/a:ro"}
	if err := s.Validate(); err == nil {
		t.Error("a job spec with a bad artifacts_dir validates")
	}
}
