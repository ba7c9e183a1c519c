package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/horde-compute/horde/internal/executor/docker"
	"github.com/horde-compute/horde/internal/images"
	"github.com/horde-compute/horde/sig"
)

// Deployment is the layout of deploy/compose.yaml: its networks' subnets,
// each role's addresses on them, and its hotkeys' wallet names. The fault
// suite (internal/faulttest) builds the same deployment.
var Deployment = DeployLayout{
	Public: "172.28.1.0/24", Validators: "172.28.2.0/24", Miners: "172.28.3.0/24",
	Facilitator: "10", Validator: "5", Trusted: "30", MinerAddrs: []string{"21", "22"}, MinerPort: 8000,
}

// DeployLayout is where the hosts of a deployment are.
type DeployLayout struct {
	// Subnets of the networks: clients reach the facilitator and streaming
	// miners on Public; the facilitator and validators meet on Validators;
	// validators reach miners on Miners.
	Public, Validators, Miners string
	// Addresses: Facilitator on Public and Validators; each miner on Public
	// (streaming) and Miners; the validator on Validators and Miners; the
	// trusted miner on Miners.
	Facilitator, Validator, Trusted string
	MinerAddrs                      []string // last octet on Public and Miners
	MinerPort                       int
}

// DeployWallets are the wallet names 'horde deploy init' creates.
var DeployWallets = []string{"validator", "trusted", "miner1", "miner2", "client"}

// AddrOn is the address with last octet host on the /24 subnet.
func AddrOn(subnet, host string) string {
	return strings.TrimSuffix(subnet, "0/24") + host
}

// DeployInit writes what deploy/compose.yaml mounts into dir: a hotkey per
// role (wallets/), the metagraph naming the validator (with a permit) and
// the two miners at their addresses on the miners' network, and the
// environment files of the validator (its trusted miner) and the trusted
// miner (its validator). Existing hotkeys are kept.
func DeployInit(dir string, d DeployLayout) (map[string]*sig.Hotkey, error) {
	keys := map[string]*sig.Hotkey{}
	root := filepath.Join(dir, "wallets")
	for _, name := range DeployWallets {
		path := sig.HotkeyPath(root, name, "default")
		k, err := sig.LoadKeyfile(path, "")
		if errors.Is(err, os.ErrNotExist) {
			var phrase string
			if k, phrase, err = sig.Generate(); err == nil {
				err = sig.WriteKeyfile(path, k, phrase)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("hotkey %s: %w", name, err)
		}
		keys[name] = k
	}
	type axon struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	}
	type neuron struct {
		UID             int     `json:"uid"`
		Hotkey          string  `json:"hotkey"`
		Active          bool    `json:"active"`
		AxonInfo        axon    `json:"axon_info"`
		Stake           float64 `json:"stake"`
		ValidatorPermit bool    `json:"validator_permit"`
	}
	neurons := map[string]neuron{keys["validator"].SS58(): {UID: 0, Hotkey: keys["validator"].SS58(), Active: true, Stake: 10000, ValidatorPermit: true}}
	for i, a := range d.MinerAddrs {
		k := keys[fmt.Sprintf("miner%d", i+1)].SS58()
		neurons[k] = neuron{UID: i + 1, Hotkey: k, Active: true, AxonInfo: axon{IP: AddrOn(d.Miners, a), Port: d.MinerPort}}
	}
	mg, err := json.MarshalIndent(map[string]any{"block": map[string]int{"number": 1}, "neurons": neurons}, "", "  ")
	if err != nil {
		return nil, err
	}
	files := map[string]string{
		"metagraph.json": string(mg) + "\n",
		"validator.env":  fmt.Sprintf("HORDE_TRUSTED_MINER=%s@%s:%d\n", keys["trusted"].SS58(), AddrOn(d.Miners, d.Trusted), d.MinerPort),
		"trusted.env":    fmt.Sprintf("HORDE_VALIDATOR=%s\n", keys["validator"].SS58()),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	for _, sub := range []string{"jobs/miner1", "jobs/miner2", "jobs/trusted"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

func (e *env) deploy(args []string) error {
	if len(args) > 0 && args[0] == "isolate-image" {
		return e.deployIsolateImage(args[1:])
	}
	if len(args) == 0 || args[0] != "init" {
		return usageErr("horde deploy needs a subcommand: init or isolate-image")
	}
	fs := e.flags("deploy init")
	noImages := fs.Bool("no-images", false, "do not make the images (horde/horde:dev, horde/job:dev, horde/llm:dev) from this binary")
	pos, err := e.parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("horde deploy init DIR")
	}
	dir, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	keys, err := DeployInit(dir, Deployment)
	if err != nil {
		return err
	}
	digest := ""
	if !*noImages {
		dock, err := docker.New("")
		if err != nil {
			return err
		}
		made, err := images.FromSelf(e.ctx, dock)
		if err != nil {
			return err
		}
		digest = made.LLMDigest
	}
	fmt.Fprintf(e.stdout, "deployment files in %s:\n", dir)
	for _, name := range DeployWallets {
		fmt.Fprintf(e.stdout, "  wallets/%-10s %s\n", name, keys[name].SS58())
	}
	fmt.Fprintf(e.stdout, "  metagraph.json, validator.env, trusted.env, jobs/\n")
	if digest != "" {
		fmt.Fprintf(e.stdout, "images made from this binary; %s is %.19s\n", images.LLMImage, digest)
		if err := os.WriteFile(filepath.Join(dir, "validator.env"), fmt.Appendf(nil, "HORDE_TRUSTED_MINER=%s@%s:%d\nHORDE_STREAMING_WHITELIST=%s=%s\nHORDE_COMPARATORS=%s=llm\n",
			keys["trusted"].SS58(), AddrOn(Deployment.Miners, Deployment.Trusted), Deployment.MinerPort, images.LLMImage, digest, images.LLMImage), 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.stdout, "\nNow:\n  export HORDE_DEPLOY=%s\n  docker-compose -f deploy/compose.yaml up -d\n", dir)
	fmt.Fprintf(e.stdout, "  export HORDE_FACILITATOR=http://127.0.0.1:9000 HORDE_WALLET_PATH=%s HORDE_WALLET=client\n", filepath.Join(dir, "wallets"))
	return nil
}
