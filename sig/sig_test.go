package sig

import (
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/blake2b"
)

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDerivation(t *testing.T) {
	const dev = "bottom drive obey lake curtain smoke basket hold race lonely fit walk"
	tests := []struct{ name, uri, ss58, pub string }{
		{"alice seed", "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a",
			"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"},
		{"alice phrase", dev + "//Alice", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY", ""},
		{"bob phrase", dev + "//Bob", "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty", ""},
		{"mnemonic", "old leopard transfer rib spatial phone calm indicate online fire caution review",
			"5HDvhV6WDCjCKyrXqGQSDYqQAzkzabNhctmiDYEqgBC66BsX", ""},
		{"seed 2", "0x5cb9063bc28a07f7444dbb29b6fc15b802b141a4e7dd5c932f2981be69e127e7", "",
			"9c4189297ad2140c85861f64656d1d1318994599130d98b75ff094176d2ca31e"},
		{"seed 3", "0x7caadbb21966e5e268945005488a3c9be64a37b949d4691a367e477ed9e57995", "",
			"26db25c52b007221331a844e5335e59874e45b03e81c3d76ff007377c2c17965"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := FromURI(tt.uri)
			if err != nil {
				t.Fatal(err)
			}
			if tt.ss58 != "" && k.SS58() != tt.ss58 {
				t.Errorf("ss58 = %s, want %s", k.SS58(), tt.ss58)
			}
			if tt.pub != "" && k.Public().Hex() != tt.pub {
				t.Errorf("public = %s, want %s", k.Public().Hex(), tt.pub)
			}
		})
	}
}

func TestPrivateKey(t *testing.T) {
	k, err := FromPrivateKey(mustHex(t, "1f1995bdf3a17b60626a26cfe6f564b337d46056b7a1281b64c649d592ccda0a9cffd34d9fb01cae1fba61aeed184c817442a2186d5172416729a4b54dd4b84e"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := k.Public().Hex(), "e4359ad3e2716c539a1d663ebd0a51bdc5c98a12e663bb4c4402db47828c9446"; got != want {
		t.Fatalf("public = %s, want %s", got, want)
	}
	// The mnemonic of the same key writes the same private key bytes.
	m, err := FromURI("old leopard transfer rib spatial phone calm indicate online fire caution review")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(m.privateKey()); got != "1f1995bdf3a17b60626a26cfe6f564b337d46056b7a1281b64c649d592ccda0a9cffd34d9fb01cae1fba61aeed184c817442a2186d5172416729a4b54dd4b84e" {
		t.Errorf("ed25519 bytes = %s", got)
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	k, err := FromSeed(RandomSeed())
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("validator:miner:1700000000")
	s := k.Sign(msg)
	if err := Verify(k.Public(), msg, s); err != nil {
		t.Fatalf("verify own signature: %v", err)
	}
	if err := VerifyHex(k.SS58(), msg, k.SignHex(msg)); err != nil {
		t.Fatalf("verify hex: %v", err)
	}
	if err := Verify(k.Public(), []byte("other"), s); !errors.Is(err, ErrBadSignature) {
		t.Errorf("other message: err = %v", err)
	}
	bad := append([]byte(nil), s...)
	bad[5] ^= 1
	if err := Verify(k.Public(), msg, bad); !errors.Is(err, ErrBadSignature) {
		t.Errorf("flipped bit: err = %v", err)
	}
	if err := Verify(k.Public(), msg, s[:10]); !errors.Is(err, ErrBadSignature) {
		t.Errorf("short: err = %v", err)
	}
}

func TestPolkadotJSVectors(t *testing.T) {
	b, err := os.ReadFile("testdata/sr25519_polkadotjs_signed.json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []map[string]string
	if err := json.Unmarshal(b, &rows); err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatal("no vectors")
	}
	w, err := LoadKeyfile("testdata/wallets/validator/hotkeys/default", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r["address"] != w.SS58() {
			t.Errorf("vector address %s is not the wallet's %s", r["address"], w.SS58())
		}
		// polkadot.js writes "0x" and lower-case hex; the vectors keep bare hex.
		if err := VerifyHex(r["address"], mustHex(t, r["msg_hex"]), "0x"+r["sig_hex"]); err != nil {
			t.Errorf("msg of %d bytes: %v", len(r["msg_hex"])/2, err)
		}
	}
	// A polkadot.js signature of "test message\n".
	if err := VerifyHex("5Gv8YYFu8H1btvmrJy9FjjAWfb99wrhV3uhPFoNEr918utyR", []byte("test message\n"),
		"0x22f91b41ba12f8663ddce26bfc90dbfe6a51683fd3782ad679ab2a5fdbe7d44c2a119f22c74eea22555e5483eb7f42b828f189a38379d59c3b607d2461f0858e"); err != nil {
		t.Errorf("test message: %v", err)
	}
}

func TestBittensorWalletSignature(t *testing.T) {
	h, _ := blake2b.New512(nil)
	var ts [8]byte
	binary.BigEndian.PutUint64(ts[:], 1718845323456788992)
	h.Write(ts[:])
	h.Write([]byte(`{"array": [1, 2, 3], "b": 2, "dict": {"subdict:": {"null": null}}}`))
	msg := h.Sum(nil)
	if got := hex.EncodeToString(msg); got != "2a22a1498ee1ce0fc6ee7414dd61d2a635790346ec02ea3acb761cfb0353aa2ab895eea87a70148ac7cf2b185367b8d387ab8b22c5e0eed955409078a1d2e3a8" {
		t.Fatalf("message = %s", got)
	}
	if err := VerifyBareHex("5FUJCuGtQPonu8B9JKH4BwsKzEdtyBTpyvbBk2beNZ4iX8sk", msg,
		"0426e2194361e82df8ff34c2f1c220b367f532f5d7f74ab503ed850a209efe7c685ed080aab063bda7100311f8f369b84df03f481c3c18c2eb4ee5ac2173b682"); err != nil {
		t.Fatal(err)
	}
}

func TestSS58(t *testing.T) {
	if _, err := ParseSS58("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ", "0OIl", "5Grwva", "1111111111111111111111111111111111111111111111"} {
		if _, err := ParseSS58(bad); !errors.Is(err, ErrBadAddress) {
			t.Errorf("ParseSS58(%q) err = %v, want ErrBadAddress", bad, err)
		}
	}
}

func TestWalletFiles(t *testing.T) {
	for _, tt := range []struct{ path, ss58 string }{
		{"validator/hotkeys/default", "5CDYBwxDZwXnYSp7E39Vy92MVbCMtcK2i953oRxDm9Veko7M"},
		{"miner/hotkeys/default", "5FYwNgYu5Wj7Vv49KtC3gXa1W1dn2BnMBGNKGrLy8pX9i4T7"},
		{"validator/coldkey", "5Dr4WexBJE5kNGDYZsei8ar8X2pQPMDjhSBEWxZHhVQwgYnS"},
		{"miner/coldkey", "5E9bVhKxm3xF1mxTUtMKmH4fpyekAstR9G2cp3jf3fVwyvLM"},
	} {
		path := filepath.Join("testdata/wallets", tt.path)
		k, err := LoadKeyfile(path, "")
		if err != nil {
			t.Fatalf("%s: %v", tt.path, err)
		}
		if k.SS58() != tt.ss58 {
			t.Errorf("%s: ss58 %s, want %s", tt.path, k.SS58(), tt.ss58)
		}
		// Every secret form in the file gives the same key.
		var kf Keyfile
		b, _ := os.ReadFile(path)
		json.Unmarshal(b, &kf)
		for name, only := range map[string]Keyfile{
			"seed":    {SecretSeed: kf.SecretSeed},
			"private": {PrivateKey: kf.PrivateKey},
		} {
			ob, _ := json.Marshal(only)
			k2, err := ParseKeyfile(ob, "")
			if err != nil {
				t.Fatalf("%s %s: %v", tt.path, name, err)
			}
			if k2.SS58() != tt.ss58 {
				t.Errorf("%s from %s: %s", tt.path, name, k2.SS58())
			}
		}
	}
}

func TestWriteKeyfileRoundTrip(t *testing.T) {
	k, phrase, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	path := HotkeyPath(t.TempDir(), "w", "default")
	if err := WriteKeyfile(path, k, phrase); err != nil {
		t.Fatal(err)
	}
	if err := WriteKeyfile(path, k, phrase); err == nil {
		t.Error("overwrote an existing key file")
	}
	b, _ := os.ReadFile(path)
	var kf Keyfile
	json.Unmarshal(b, &kf)
	for _, only := range []Keyfile{{SecretPhrase: kf.SecretPhrase}, {SecretSeed: kf.SecretSeed}, {PrivateKey: kf.PrivateKey}} {
		ob, _ := json.Marshal(only)
		k2, err := ParseKeyfile(ob, "")
		if err != nil {
			t.Fatal(err)
		}
		if k2.SS58() != k.SS58() {
			t.Errorf("reloaded %s, want %s", k2.SS58(), k.SS58())
		}
	}
}

func TestKeyfileMismatch(t *testing.T) {
	b := []byte(`{"secretSeed":"0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a","ss58Address":"5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"}`)
	if _, err := ParseKeyfile(b, ""); !errors.Is(err, ErrBadKey) {
		t.Errorf("mismatched address: err = %v", err)
	}
	if _, err := ParseKeyfile([]byte(`{"publicKey":"0x00"}`), ""); !errors.Is(err, ErrBadKey) {
		t.Errorf("public only: err = %v", err)
	}
	if _, err := ParseKeyfile([]byte("$NACLxxxx"), ""); !errors.Is(err, ErrEncrypted) {
		t.Errorf("encrypted without password: err = %v", err)
	}
}

func TestEncryptedKeyfile(t *testing.T) {
	if testing.Short() {
		t.Skip("argon2i with 512 MiB takes seconds")
	}
	key := NACLKey("thisisafakepassword")
	if got := hex.EncodeToString(key[:]); got != "a17c46ecafdd501ecb1da0651d35abfecf60df14bffa8e949f58aaecd75cb3c8" {
		t.Fatalf("argon2i key = %s", got)
	}
	k, err := LoadKeyfile("testdata/wallets/enc/coldkey", "thisisafakepassword")
	if err != nil {
		t.Fatal(err)
	}
	if k.SS58() != "5E9bVhKxm3xF1mxTUtMKmH4fpyekAstR9G2cp3jf3fVwyvLM" {
		t.Errorf("ss58 = %s", k.SS58())
	}
	if _, err := LoadKeyfile("testdata/wallets/enc/coldkey", "wrong"); !errors.Is(err, ErrBadKey) {
		t.Errorf("wrong password: err = %v", err)
	}
}
