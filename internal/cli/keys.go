package cli

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/horde-compute/horde/sig"
)

func (e *env) keysNew(args []string) error {
	fs := e.flags("keys new")
	var w walletFlags
	w.register(fs, "default")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	if _, err := os.Stat(w.file()); err == nil {
		return fmt.Errorf("a key file exists at %s; not overwriting it", w.file())
	}
	k, phrase, err := sig.Generate()
	if err != nil {
		return err
	}
	if err := sig.WriteKeyfile(w.file(), k, phrase); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "created hotkey %s\n  file: %s\n  ss58: %s\n", w.hotkey, w.file(), k.SS58())
	fmt.Fprintf(e.stdout, "The key file holds the mnemonic unencrypted; keep it private and back it up.\n")
	return nil
}

func (e *env) keysShow(args []string) error {
	fs := e.flags("keys show")
	var w walletFlags
	w.register(fs, "default")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := e.parseFlags(fs, args); err != nil {
		return err
	}
	k, err := w.load()
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(map[string]string{"ss58Address": k.SS58(), "publicKey": "0x" + k.Public().Hex(), "file": w.file()})
	}
	fmt.Fprintf(e.stdout, "%s\n  public key: 0x%s\n  file: %s\n", k.SS58(), k.Public().Hex(), w.file())
	return nil
}
