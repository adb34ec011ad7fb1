package wiretest

import (
	"path/filepath"
	"testing"

	"github.com/sightline/sightline/wire"
)

// CertDir creates a fresh cluster CA with node and agent certificates (see
// wire.InitCA) in a temporary directory removed after the test, and returns
// the directory.
func CertDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := wire.InitCA(dir, nil); err != nil {
		t.Fatalf("wiretest: creating certificates: %v", err)
	}
	return dir
}
