package aggregator

import (
	"bytes"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeSite: any request body gets a site or a field error.
func FuzzDecodeSite(f *testing.F) {
	f.Add([]byte(`{"id":"demo","origins":["http://localhost:8080"]}`))
	f.Add([]byte(`{"id":"x","origins":["https://a.example:8443/"]}`))
	f.Add([]byte(`{"id":"","origins":null}`))
	f.Add([]byte(`{"id":"demo","origins":["javascript:alert(1)"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		req := httptest.NewRequest("POST", "/api/v1/sites", bytes.NewReader(body))
		site, err := decodeSite(req, "")
		if err != nil {
			var fe *fieldError
			if !errors.As(err, &fe) || fe.field == "" {
				t.Fatalf("error does not name a field: %v", err)
			}
			return
		}
		if !siteIDPattern.MatchString(site.ID) {
			t.Fatalf("accepted bad id %q", site.ID)
		}
		for _, o := range site.Origins {
			if again, err := NormalizeOrigin(o); err != nil || again != o {
				t.Fatalf("stored origin %q is not normal (%q, %v)", o, again, err)
			}
		}
	})
}

// FuzzParseConfig: any YAML gives a config or an error, never a panic.
func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob("testdata/config/*.yaml")
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := parseConfig(b)
		if err == nil {
			_ = cfg.Validate()
		}
	})
}
