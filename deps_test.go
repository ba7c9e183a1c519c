// Package horde_test guards the architecture: which packages may import which.
package horde_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// forbidden lists, per package pattern, import prefixes it must not use.
var forbidden = []struct {
	pkg   string
	deny  []string
	why   string
	exact bool
}{
	{"github.com/horde-compute/horde/client", []string{"github.com/horde-compute/horde/internal/"}, "the SDK imports no server code", true},
	{"github.com/horde-compute/horde/protocol", []string{"github.com/horde-compute/horde/internal/", "net/http", "github.com/coder/websocket"}, "wire types know no transport", true},
	{"github.com/horde-compute/horde/sig", []string{"github.com/horde-compute/horde/"}, "identities depend on nothing of ours", true},
	{"github.com/horde-compute/horde/receipt", []string{"github.com/horde-compute/horde/internal/", "net/http"}, "receipts are data and signatures", true},
	{"github.com/horde-compute/horde/internal/wsconn", []string{"github.com/horde-compute/horde/internal/validator", "github.com/horde-compute/horde/internal/miner",
		"github.com/horde-compute/horde/internal/facilitator", "github.com/horde-compute/horde/internal/executor", "github.com/horde-compute/horde/internal/store"}, "transport knows no jobs", true},
	{"github.com/horde-compute/horde/internal/blob", []string{"github.com/horde-compute/horde/internal/"}, "data movement knows no roles", true},
	{"github.com/horde-compute/horde/internal/executor/jobdisk", []string{"github.com/horde-compute/horde/"}, "a disk bound knows nothing of horde", true},
	{"github.com/horde-compute/horde/internal/store", []string{"github.com/horde-compute/horde/internal/validator", "github.com/horde-compute/horde/internal/miner",
		"github.com/horde-compute/horde/internal/facilitator", "net/http"}, "stores know no roles", false},
	{"github.com/horde-compute/horde/internal/metrics", []string{"github.com/horde-compute/horde/internal/"}, "metric sets know no roles or stores", true},
	{"github.com/horde-compute/horde/internal/dashboard", []string{"github.com/horde-compute/horde/internal/facilitator", "github.com/horde-compute/horde/internal/store",
		"github.com/horde-compute/horde/internal/validator", "github.com/horde-compute/horde/internal/miner"}, "the dashboard reads through its Source and writes nothing", true},
	{"github.com/horde-compute/horde/internal/miner/decide", []string{"github.com/horde-compute/horde/internal/", "net", "net/http", "github.com/coder/websocket"},
		"a miner's decisions are pure: no transport, store or executor", true},
}

func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "./...").Output()
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	seen := 0
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		for _, rule := range forbidden {
			if p.ImportPath != rule.pkg && (rule.exact || !strings.HasPrefix(p.ImportPath, rule.pkg+"/")) {
				continue
			}
			seen++
			for _, d := range p.Deps {
				for _, deny := range rule.deny {
					if d == deny || strings.HasPrefix(d, deny) && (strings.HasSuffix(deny, "/") || strings.HasPrefix(d, deny+"/")) {
						t.Errorf("%s depends on %s: %s", p.ImportPath, d, rule.why)
					}
				}
			}
		}
	}
	if seen < len(forbidden)-1 {
		t.Errorf("only %d rules matched a package; the list is stale", seen)
	}
}
