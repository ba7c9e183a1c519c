package kubecluster

import "testing"

func TestNormalizeRef(t *testing.T) {
	for in, want := range map[string]string{
		"horde/job:dev":                 "docker.io/horde/job:dev",
		"busybox":                       "docker.io/library/busybox:latest",
		"busybox:1":                     "docker.io/library/busybox:1",
		"localhost/x:y":                 "localhost/x:y",
		"localhost:5000/a/b":            "localhost:5000/a/b:latest",
		"registry.example/ns/img:v1":    "registry.example/ns/img:v1",
		"horde/job@sha256:0123456789ab": "docker.io/horde/job@sha256:0123456789ab",
	} {
		if got := normalizeRef(in); got != want {
			t.Errorf("normalizeRef(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescape(`/var/tmp/a\040b\011c`); got != "/var/tmp/a b\tc" {
		t.Errorf("got %q", got)
	}
	if got := unescape(`/plain`); got != "/plain" {
		t.Errorf("got %q", got)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{Dir: "relative"},
		{Dir: "/"},
		{NodeIP: "127.0.0.1"},
		{NodeIP: "::1"},
		{NodeIP: "nonsense"},
		{PodSubnet: "10.0.0.1"},
		{Bridge: "a-name-longer-than-15"},
	} {
		o.setDefaults()
		if err := o.Validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	var o Options
	o.setDefaults()
	if err := o.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}
