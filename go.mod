module github.com/horde-compute/horde

go 1.26.8

require (
	github.com/ChainSafe/go-schnorrkel v1.1.0
	golang.org/x/crypto v0.59.0
)

require (
	github.com/cosmos/go-bip39 v0.0.0-20180819234021-555e2067c45d // indirect
	github.com/gtank/merlin v0.1.1-0.20191105220539-8318aed1a79f // indirect
	github.com/gtank/ristretto255 v0.1.2 // indirect
	github.com/mimoo/StrobeGo v0.0.0-20181016162300-f8f6d4d2b643 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
