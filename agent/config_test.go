package agent

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestConfigGolden loads every testdata/config/*.yaml, validates it and
// compares the outcome with the .golden file beside it: the settings for a
// good file, the exact error text for a bad one.
func TestConfigGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/config/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no config files: %v", err)
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		t.Run(name, func(t *testing.T) {
			cfg, err := LoadConfig(path)
			if err == nil {
				err = cfg.Validate()
			}
			var got string
			switch {
			case strings.HasPrefix(name, "good-"):
				if err != nil {
					t.Fatalf("good config refused:\n%v", err)
				}
				got = renderConfig(cfg)
			case strings.HasPrefix(name, "bad-"):
				if err == nil {
					t.Fatal("bad config accepted")
				}
				got = err.Error() + "\n"
			default:
				t.Fatalf("name %s must start with good- or bad-", name)
			}
			golden := strings.TrimSuffix(path, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestConfigGolden -update)", err)
			}
			if got != string(want) {
				t.Fatalf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// renderConfig prints one "yaml_field: value" line per field.
func renderConfig(c Config) string {
	var b strings.Builder
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		val := v.Field(i).Interface()
		if d, ok := val.(time.Duration); ok {
			val = d.String()
		}
		fmt.Fprintf(&b, "%s: %v\n", f.Tag.Get("yaml"), val)
	}
	return b.String()
}

func TestDefaultConfigValidOnceAddressed(t *testing.T) {
	c := DefaultConfig()
	c.DataDir, c.HTTP, c.Aggregators, c.TLSDir = "/d", "127.0.0.1:8081", []string{"127.0.0.1:8443"}, "/t"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadConfigMissingFile(t *testing.T) {
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "absent.yaml")); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Fatalf("err = %v", err)
	}
}
