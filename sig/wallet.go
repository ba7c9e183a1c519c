package sig

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/nacl/secretbox"
)

// ErrEncrypted is returned when a key file is encrypted and no password was given.
var ErrEncrypted = errors.New("key file is encrypted ($NACL); a password is needed")

// naclSalt is the fixed argon2i salt bittensor uses for $NACL key files.
var naclSalt = []byte("\x13q\x83\xdf\xf1Z\t\xbc\x9c\x90\xb5Q\x879\xe9\xb1")

// Keyfile is the JSON layout of a Bittensor key file.
type Keyfile struct {
	AccountID    string `json:"accountId"`
	PublicKey    string `json:"publicKey"`
	PrivateKey   string `json:"privateKey,omitempty"`
	SecretPhrase string `json:"secretPhrase,omitempty"`
	SecretSeed   string `json:"secretSeed,omitempty"`
	SS58Address  string `json:"ss58Address"`
}

// HotkeyPath is where bittensor keeps a hotkey: <root>/<wallet>/hotkeys/<hotkey>.
func HotkeyPath(root, wallet, hotkey string) string {
	return filepath.Join(root, wallet, "hotkeys", hotkey)
}

// DefaultWalletRoot is ~/.bittensor/wallets.
func DefaultWalletRoot() string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".bittensor", "wallets")
	}
	return filepath.Join(home, ".bittensor", "wallets")
}

// LoadKeyfile reads a key file; password is used only for $NACL files.
func LoadKeyfile(path, password string) (*Hotkey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load key file: %w", err)
	}
	k, err := ParseKeyfile(b, password)
	if err != nil {
		return nil, fmt.Errorf("load key file %s: %w", path, err)
	}
	return k, nil
}

// ParseKeyfile decodes key file contents: the first present of secretPhrase,
// secretSeed and privateKey wins, and publicKey/ss58Address must agree with it.
func ParseKeyfile(b []byte, password string) (*Hotkey, error) {
	if strings.HasPrefix(string(b), "$NACL") {
		if password == "" {
			return nil, ErrEncrypted
		}
		plain, err := DecryptNACL(b, password)
		if err != nil {
			return nil, err
		}
		b = plain
	}
	var kf Keyfile
	if err := json.Unmarshal(b, &kf); err != nil {
		return nil, fmt.Errorf("%w: not a key file: %v", ErrBadKey, err)
	}
	var k *Hotkey
	var err error
	switch {
	case kf.SecretPhrase != "":
		k, err = FromURI(kf.SecretPhrase)
	case kf.SecretSeed != "":
		k, err = FromURI(kf.SecretSeed)
	case kf.PrivateKey != "":
		raw, herr := hex.DecodeString(strings.TrimPrefix(kf.PrivateKey, "0x"))
		if herr != nil {
			return nil, fmt.Errorf("%w: privateKey is not hex: %v", ErrBadKey, herr)
		}
		k, err = FromPrivateKey(raw)
	default:
		return nil, fmt.Errorf("%w: key file holds no secret (public key only)", ErrBadKey)
	}
	if err != nil {
		return nil, err
	}
	if kf.PublicKey != "" && strings.TrimPrefix(kf.PublicKey, "0x") != k.public.Hex() {
		return nil, fmt.Errorf("%w: publicKey does not match the secret", ErrBadKey)
	}
	if kf.SS58Address != "" && kf.SS58Address != k.SS58() {
		return nil, fmt.Errorf("%w: ss58Address does not match the secret", ErrBadKey)
	}
	return k, nil
}

// DecryptNACL opens a "$NACL" key file: nonce(24) ‖ secretbox, keyed by
// argon2i(password) with libsodium's "sensitive" limits (8 passes, 512 MiB).
func DecryptNACL(b []byte, password string) ([]byte, error) {
	body := b[len("$NACL"):]
	if len(body) < 24+secretbox.Overhead {
		return nil, fmt.Errorf("%w: $NACL file too short", ErrBadKey)
	}
	key := NACLKey(password)
	var nonce [24]byte
	copy(nonce[:], body[:24])
	plain, ok := secretbox.Open(nil, body[24:], &nonce, &key)
	if !ok {
		return nil, fmt.Errorf("%w: wrong password or corrupt $NACL file", ErrBadKey)
	}
	return plain, nil
}

// NACLKey derives the secretbox key from a password (costs ~5 s and 512 MiB).
func NACLKey(password string) [32]byte {
	var key [32]byte
	copy(key[:], argon2.Key([]byte(password), naclSalt, 8, 512*1024, 1, 32))
	return key
}

// Keyfile returns the key file form of k; phrase may be empty.
func (k *Hotkey) Keyfile(phrase string) Keyfile {
	kf := Keyfile{
		AccountID:    "0x" + k.public.Hex(),
		PublicKey:    "0x" + k.public.Hex(),
		SS58Address:  k.SS58(),
		SecretPhrase: phrase,
	}
	kf.PrivateKey = "0x" + hex.EncodeToString(k.privateKey())
	if k.seed != nil {
		kf.SecretSeed = "0x" + hex.EncodeToString(k.seed)
	}
	return kf
}

// WriteKeyfile writes k (unencrypted, mode 0600) to path, refusing to overwrite.
func WriteKeyfile(path string, k *Hotkey, phrase string) error {
	b, err := json.Marshal(k.Keyfile(phrase))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	return f.Close()
}

// privateKey returns scalar ‖ nonce, the 64-byte form wallets store.
func (k *Hotkey) privateKey() []byte {
	scalar := k.secret.Encode()
	return append(scalar[:], k.nonce[:]...)
}
