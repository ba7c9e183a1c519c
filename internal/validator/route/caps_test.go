package route_test

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/horde-compute/horde/internal/validator/jobrun"
	"github.com/horde-compute/horde/internal/validator/route"
	"github.com/horde-compute/horde/protocol"
)

// A lease knows what its miner advertised: from the session, then from each
// manifest the miner sends.
func TestLeaseCapabilities(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		caps := func(hk string) protocol.Capabilities {
			l, err := f.pool.LeaseOn(hk, "j-"+hk, class)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release(false)
			return l.(jobrun.Capable).Capabilities()
		}
		horde := f.miners[0].Hotkey.SS58()
		if !caps(horde).Has(protocol.MinerCapCancel) {
			t.Error("horde miner without its capabilities")
		}
		// The miner sends a new manifest without capabilities: upstream now.
		f.net.Conns(f.miners[0])[0].Push(&protocol.V0ExecutorManifestRequest{Manifest: map[string]int{class: 1}})
		synctest.Wait()
		if caps(horde).Horde() {
			t.Error("capabilities kept after a manifest without them")
		}
	})
}

// A blacklisted miner is picked for no job until its time is up.
func TestBlacklist(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 1)
		defer f.pool.Close()
		f.pool.Blacklist(f.miners[0].Hotkey.SS58(), time.Now().Add(time.Hour))
		w := want("j")
		w.Until = time.Now()
		if _, err := f.pool.Acquire(t.Context(), w); !errors.Is(err, route.ErrNoMiner) {
			t.Fatalf("blacklisted miner leased: %v", err)
		}
		time.Sleep(time.Hour)
		l, err := f.pool.Acquire(t.Context(), want("j"))
		if err != nil {
			t.Fatalf("after the blacklist: %v", err)
		}
		l.Release(false)
	})
}
