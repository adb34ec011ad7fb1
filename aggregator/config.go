package aggregator

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is everything an aggregator node needs. Flags and the YAML file
// only fill it; Validate reports every problem at once.
type Config struct {
	NodeID    string `yaml:"node_id"`
	DataDir   string `yaml:"data_dir"`
	HTTP      string `yaml:"http"`      // admin API and UI listen address
	Wire      string `yaml:"wire"`      // QUIC listen address for agents (UDP)
	Raft      string `yaml:"raft"`      // Raft TCP bind and advertise address
	Bootstrap bool   `yaml:"bootstrap"` // start a new cluster with this node
	Join      string `yaml:"join"`      // HTTP address of a member to join through
	TLSDir    string `yaml:"tls_dir"`   // ca.crt, node.crt, node.key
	// JoinToken is an admin token of the cluster being joined; the
	// SIGHTLINE_JOIN_TOKEN environment variable fills it when empty.
	JoinToken string `yaml:"join_token"`

	// ApplyTimeout bounds how long a batch waits for its Raft commit.
	ApplyTimeout time.Duration `yaml:"apply_timeout"`
	// ConfigWaitMax bounds an agent's config long poll.
	ConfigWaitMax time.Duration `yaml:"config_wait_max"`
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64 `yaml:"snapshot_threshold"`
	// ShutdownTimeout bounds the graceful part of shutdown.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// DefaultConfig returns the configuration of a demo-sized node.
func DefaultConfig() Config {
	return Config{
		HTTP:              "127.0.0.1:8082",
		Wire:              "127.0.0.1:8443",
		Raft:              "127.0.0.1:8300",
		ApplyTimeout:      10 * time.Second,
		ConfigWaitMax:     30 * time.Second,
		SnapshotThreshold: 8192,
		ShutdownTimeout:   10 * time.Second,
	}
}

// Validate reports every problem of the configuration, each naming its field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if c.NodeID == "" {
		bad("node_id", `required, e.g. "node1"`)
	}
	if c.DataDir == "" {
		bad("data_dir", `required, e.g. "/var/lib/sightline"`)
	}
	if c.TLSDir == "" {
		bad("tls_dir", "required: a directory made by `sightline ca init --dir DIR`")
	}
	for _, a := range []struct{ field, v string }{{"http", c.HTTP}, {"wire", c.Wire}, {"raft", c.Raft}} {
		if a.v == "" {
			bad(a.field, `required, as host:port, e.g. "127.0.0.1:8082"`)
		} else if _, _, err := net.SplitHostPort(a.v); err != nil {
			bad(a.field, "%q is not host:port (%v)", a.v, err)
		}
	}
	if c.Bootstrap == (c.Join != "") {
		bad("bootstrap", "give exactly one of bootstrap (start a new cluster) or join (HTTP address of a member)")
	}
	if c.Join != "" {
		if _, _, err := net.SplitHostPort(c.Join); err != nil {
			bad("join", "%q is not host:port (%v)", c.Join, err)
		}
		if c.JoinToken == "" {
			bad("join_token", "required with join: an admin token of the cluster (or set SIGHTLINE_JOIN_TOKEN)")
		}
	}
	if c.ApplyTimeout <= 0 {
		bad("apply_timeout", "must be positive, e.g. 10s")
	}
	if c.ConfigWaitMax <= 0 {
		bad("config_wait_max", "must be positive, e.g. 30s")
	}
	if c.SnapshotThreshold == 0 {
		bad("snapshot_threshold", "must be at least 1, e.g. 8192")
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive, e.g. 10s")
	}
	return errors.Join(errs...)
}

// LoadConfig overlays the YAML file at path on DefaultConfig. Unknown
// fields are errors, so a typo does not silently keep a default.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return DefaultConfig(), fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(b)
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func parseConfig(b []byte) (Config, error) {
	cfg := DefaultConfig()
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, err
	}
	return cfg, nil
}
