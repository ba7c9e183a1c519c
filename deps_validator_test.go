package horde_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// The validator's rooms: arrows only downward (validator → rounds, windows,
// receipts, route → jobrun, scoring, excuse), logic without transport, and no room
// importing the validator package (the rooms live below it). Kept apart
// from deps_test.go's table because a room must not import its parent
// exactly, while it may import its siblings below.
var rooms = []struct {
	pkg string
	// deny are forbidden import prefixes; denyExact forbidden packages (not those below them).
	deny, denyExact []string
	why             string
}{
	{room("jobrun"), append(transport(), room("route"), room("rounds"), room("windows"), room("receipts"), room("scoring")), []string{val},
		"one job's stages are logic: frames go out through an interface"},
	{room("scoring"), append(transport(), room("jobrun"), room("route"), room("rounds"), room("windows"), room("receipts")), []string{val},
		"scoring is a pure function of its inputs"},
	{room("excuse"), append(transport(), sqlite, "github.com/horde-compute/horde/internal/store", room("jobrun"), room("route"), room("rounds"), room("windows"), room("receipts"), room("scoring")), []string{val},
		"judging excuses is a pure function of receipts, the metagraph and the rules"},
	{room("rounds"), []string{wsconn, websocket, sqlite, room("route"), room("windows"), room("receipts")}, []string{val},
		"rounds reach miners, receipts and stores through interfaces"},
	{room("windows"), []string{wsconn, websocket, sqlite, room("route"), room("rounds"), room("receipts"), room("scoring")}, []string{val},
		"windows reach miners and stores through interfaces"},
	{room("receipts"), []string{wsconn, websocket, sqlite, room("route"), room("jobrun"), room("rounds"), room("windows"), room("scoring")}, []string{val},
		"collecting receipts is HTTP and checks, nothing of the pool"},
	{room("route"), []string{sqlite, "github.com/horde-compute/horde/internal/store", room("rounds"), room("windows"), room("receipts"), room("scoring")}, []string{val},
		"the pool knows sessions and leases, not cycles or stores"},
	{val, []string{room("minertest")}, nil, "test helpers stay out of the validator"},
}

const (
	val       = "github.com/horde-compute/horde/internal/validator"
	wsconn    = "github.com/horde-compute/horde/internal/wsconn"
	websocket = "github.com/coder/websocket"
	sqlite    = "github.com/horde-compute/horde/internal/store/sqlite"
)

func room(name string) string { return val + "/" + name }

func transport() []string { return []string{wsconn, websocket, "net/http"} }

func TestValidatorRooms(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "./internal/validator/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := map[string][]string{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		deps[p.ImportPath] = p.Deps
	}
	for _, r := range rooms {
		ds, ok := deps[r.pkg]
		if !ok {
			t.Errorf("rule for %s matches no package: the list is stale", r.pkg)
			continue
		}
		for _, d := range ds {
			for _, deny := range r.deny {
				if d == deny || strings.HasPrefix(d, deny+"/") {
					t.Errorf("%s depends on %s: %s", r.pkg, d, r.why)
				}
			}
			for _, deny := range r.denyExact {
				if d == deny {
					t.Errorf("%s depends on %s: %s", r.pkg, d, r.why)
				}
			}
		}
	}
}
