package route_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/horde-compute/horde/internal/chain"
	"github.com/horde-compute/horde/internal/validator/minertest"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/internal/wsconn"
	"github.com/horde-compute/horde/protocol"
)

// The WebSocket dialer is the one part of the pool on a real socket
// (loopback): it authenticates and takes the manifest, or says why not.
func TestWSDialer(t *testing.T) {
	v := minertest.Hotkey(t)
	m := minertest.Hotkey(t)
	for _, tt := range []struct {
		name  string
		first protocol.Message
		want  string
		caps  protocol.Capabilities
	}{
		{"manifest", &protocol.V0ExecutorManifestRequest{Manifest: map[string]int{class: 3}}, "", nil},
		{"horde manifest", &protocol.V0ExecutorManifestRequest{Manifest: map[string]int{class: 3}, Capabilities: protocol.MinerCapabilities},
			"", protocol.MinerCapabilities},
		{"refused", &protocol.UnauthorizedError{Code: "unauthorized", Details: "no permit"}, "refused us: no permit", nil},
		{"confused", &protocol.V0MainHotkeyMessage{MainHotkey: "x"}, "expected manifest, got V0MainHotkeyMessage", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c, first, err := wsconn.AcceptAuth(w, r, nil)
				if err != nil {
					return
				}
				defer c.Close("")
				auth, ok := first.(*protocol.ValidatorAuthForMiner)
				hk := strings.TrimPrefix(r.URL.Path, protocol.ValidatorAuthPath)
				if !ok || wsconn.CheckValidatorAuth(auth, hk, m.SS58(), func(string) bool { return true }, wsconn.NewReplayGuard(), time.Now()) != nil {
					t.Errorf("bad auth %+v", first)
					return
				}
				c.Send(r.Context(), tt.first)
				c.Recv(r.Context()) // until the validator closes
			}))
			defer srv.Close()
			host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
			p, _ := strconv.Atoi(port)
			c, manifest, err := route.WSDialer{Hotkey: v}.Dial(t.Context(), chain.Neuron{Hotkey: m.SS58(), AxonInfo: chain.AxonInfo{IP: host, Port: p}})
			if tt.want == "" {
				if err != nil || manifest[class] != 3 {
					t.Fatalf("dial: %v %v", manifest, err)
				}
				// An upstream miner's manifest has no capabilities: upstream mode.
				if got := c.(route.Capable).Capabilities(); strings.Join(got, ",") != strings.Join(tt.caps, ",") {
					t.Errorf("capabilities %v, want %v", got, tt.caps)
				}
				c.Close("")
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want %q", err, tt.want)
			}
		})
	}
	// Port 0 cannot be dialled: nothing answers, whatever else runs here.
	if _, _, err := (route.WSDialer{Hotkey: v}).Dial(t.Context(), chain.Neuron{Hotkey: m.SS58(), AxonInfo: chain.AxonInfo{IP: "127.0.0.1", Port: 0}}); err == nil {
		t.Error("dialled nothing")
	}
}
