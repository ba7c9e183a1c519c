package chain

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakePylon serves the two Pylon routes horde uses and records weight settings.
func fakePylon(t *testing.T) (*httptest.Server, *[]map[string]float64) {
	var set []map[string]float64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/api/v1/subnet/12/block/latest/neurons":
			io.WriteString(w, `{"block": {"number": 99, "hash": "0x1"}, "neurons": {"5M": {"uid": 3, "axon_info": {"ip": "127.0.0.1", "port": 8000}, "stake": 1}}}`)
		case r.Method == http.MethodPut && r.URL.Path == "/api/v1/identity/sn12/subnet/12/weights":
			var body struct{ Weights map[string]float64 }
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Weights) == 0 {
				http.Error(w, "bad weights", http.StatusUnprocessableEntity)
				return
			}
			set = append(set, body.Weights)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &set
}

func TestPylon(t *testing.T) {
	srv, set := fakePylon(t)
	p := &Pylon{BaseURL: srv.URL, Identity: "sn12", NetUID: 12, Token: "tok"}
	mg, err := p.Metagraph(t.Context())
	if err != nil || mg.Block != 99 || len(mg.Miners()) != 1 || mg.Neurons[0].Hotkey != "5M" {
		t.Fatalf("metagraph = %+v, %v", mg, err)
	}
	if err := p.SetWeights(t.Context(), map[string]float64{"5M": 1}); err != nil {
		t.Fatal(err)
	}
	if len(*set) != 1 || (*set)[0]["5M"] != 1 {
		t.Errorf("weights set = %v", *set)
	}
	bad := &Pylon{BaseURL: srv.URL, Identity: "sn12", NetUID: 12, Token: "wrong"}
	if err := bad.SetWeights(t.Context(), map[string]float64{"5M": 1}); err == nil || !strings.Contains(err.Error(), "401") {
		t.Errorf("bad token: %v", err)
	}
	if err := p.SetWeights(t.Context(), map[string]float64{}); err == nil || !strings.Contains(err.Error(), "422") {
		t.Errorf("empty weights: %v", err)
	}
}

func TestWeightsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w", "weights.jsonl")
	f := WeightsFile{Path: path}
	f.SetWeights(t.Context(), map[string]float64{"a": 0.5, "b": 0.5})
	f.SetWeights(t.Context(), map[string]float64{"a": 1})
	b, _ := os.ReadFile(path)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) != 2 || !strings.Contains(lines[1], `"a":1`) {
		t.Errorf("file = %s", b)
	}
}
