package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/horde-compute/horde/internal/chain"
)

// deploy init writes what deploy/compose.yaml mounts; run again, it keeps
// the hotkeys. The compose file puts the hosts where the layout says.
func TestDeployInit(t *testing.T) {
	dir := t.TempDir()
	keys, err := DeployInit(dir, Deployment)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DeployInit(dir, Deployment)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range DeployWallets {
		if keys[name] == nil || again[name].SS58() != keys[name].SS58() {
			t.Errorf("wallet %s not kept across runs", name)
		}
	}
	mg, err := chain.File{Path: filepath.Join(dir, "metagraph.json")}.Metagraph(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !mg.IsValidator(keys["validator"].SS58()) {
		t.Error("the validator has no permit in the metagraph")
	}
	miners := mg.Miners()
	if len(miners) != 2 || miners[0].Hotkey != keys["miner1"].SS58() || miners[0].AxonInfo.IP != "172.28.3.21" || miners[1].AxonInfo.Port != 8000 {
		t.Errorf("miners %+v", miners)
	}
	for file, want := range map[string]string{"validator.env": "HORDE_TRUSTED_MINER=" + keys["trusted"].SS58() + "@172.28.3.30:8000",
		"trusted.env": "HORDE_VALIDATOR=" + keys["validator"].SS58()} {
		if b, _ := os.ReadFile(filepath.Join(dir, file)); !strings.Contains(string(b), want) {
			t.Errorf("%s = %q, want %q", file, b, want)
		}
	}
	compose, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	L := Deployment
	for _, addr := range []string{AddrOn(L.Public, L.Facilitator), AddrOn(L.Validators, L.Facilitator), AddrOn(L.Validators, L.Validator),
		AddrOn(L.Miners, L.Validator), AddrOn(L.Miners, L.Trusted), AddrOn(L.Public, L.MinerAddrs[0]), AddrOn(L.Miners, L.MinerAddrs[1]),
		L.Public, L.Validators, L.Miners} {
		if !bytes.Contains(compose, []byte(addr)) {
			t.Errorf("deploy/compose.yaml does not use %s", addr)
		}
	}
}

// 'horde program job' is the job image's program, with its exit code and
// nothing more on stderr.
func TestProgram(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Run(context.Background(), []string{"program", "job", "echo", "hi", "there"}, &out, &errb); err != nil || out.String() != "hi there\n" {
		t.Errorf("program job echo: %q, %v", out.String(), err)
	}
	err := Run(context.Background(), []string{"program", "job", "exit", "3"}, &out, &errb)
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 3 || !errors.Is(err, ErrQuiet) {
		t.Errorf("program job exit 3: %v, want exit code 3, quietly", err)
	}
	if err := Run(context.Background(), []string{"program", "nope"}, &out, &errb); !errors.Is(err, ErrUsage) {
		t.Errorf("unknown program: %v", err)
	}
}
