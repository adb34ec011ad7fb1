package queue

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPowerLoss is guarantees 1 and 2 under the harshest crash: power loss,
// where everything not fsynced is gone (or, with partial clones, partly
// gone). Appends and seals run concurrently; every sealed batch is "sent" at
// once to a model aggregator that applies it and dedupes by sequence, and
// some are acked. At a random moment the file system is cloned as it would
// survive a crash; the reopened queue then delivers what it still holds.
// Every event whose Append had returned must end up applied, and none
// twice. Without the synced append commit acked events vanish; without the
// synced seal a resealed sequence carries other events than the one the
// aggregator already applied, and those are lost to its dedupe.
func TestPowerLoss(t *testing.T) {
	for round := range 8 {
		t.Run(fmt.Sprint("round", round), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(round), 7))
			fs := vfs.NewCrashableMem()
			q, err := Open(Options{Dir: "q", Budget: 64 << 20, FS: fs})
			if err != nil {
				t.Fatal(err)
			}

			var mu sync.Mutex // held while cloning: no Append may be recorded meanwhile
			acked := map[string]bool{}
			applied := map[uint64][]string{} // the model aggregator: seq → event ids
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						select {
						case <-stop:
							return
						default:
						}
						evs := mkEvents(fmt.Sprintf("w%d-%d", w, i), 1+i%5)
						if err := q.Append(t.Context(), evs); err != nil {
							return
						}
						mu.Lock()
						for _, ev := range evs {
							acked[ev.ID] = true
						}
						mu.Unlock()
					}
				}()
			}
			wg.Add(1)
			go func() { // the forwarder's part: seal, and ack some batches
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					b, err := q.Seal(50)
					if err != nil {
						return
					}
					if b == nil {
						continue
					}
					var ids []string
					for _, ev := range decode(t, b) {
						ids = append(ids, ev.ID)
					}
					mu.Lock()
					applied[b.Seq] = ids
					mu.Unlock()
					if b.Seq%3 == 0 && q.Ack(b.Seq) != nil {
						return
					}
				}
			}()

			// Let the load run, then pull the plug.
			for q.Appends() < uint64(200+rng.IntN(800)) {
				<-q.Appended()
			}
			mu.Lock()
			crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(100), RNG: rng})
			model := make(map[uint64][]string, len(applied))
			for seq, ids := range applied {
				model[seq] = ids
			}
			want := make(map[string]bool, len(acked))
			for id := range acked {
				want[id] = true
			}
			mu.Unlock()
			close(stop)
			wg.Wait()
			q.Close()

			q2, err := Open(Options{Dir: "q", Budget: 64 << 20, FS: crashed})
			if err != nil {
				t.Fatalf("reopening after power loss: %v", err)
			}
			defer q2.Close()
			for {
				b, err := q2.Seal(1000)
				if err != nil {
					t.Fatal(err)
				}
				if b == nil {
					break
				}
			}
			for _, b := range pending(t, q2) {
				if _, dup := model[b.Seq]; dup {
					continue // the aggregator applied this sequence before the crash
				}
				for _, ev := range decode(t, b) {
					model[b.Seq] = append(model[b.Seq], ev.ID)
				}
			}
			got := map[string]int{}
			for _, ids := range model {
				for _, id := range ids {
					got[id]++
				}
			}
			for id, n := range got {
				if n > 1 {
					t.Errorf("event %s applied %d times", id, n)
				}
			}
			lost := 0
			for id := range want {
				if got[id] == 0 {
					lost++
				}
			}
			if lost > 0 {
				t.Fatalf("%d of %d acknowledged events lost by power loss", lost, len(want))
			}
			t.Logf("%d acknowledged events applied exactly once (%d applied in all)", len(want), len(got))
		})
	}
}
