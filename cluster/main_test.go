package cluster

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that Pebble, raft and the transport leave no goroutines
// behind once every node is shut down.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
