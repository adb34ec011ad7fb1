package agent

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"time"

	"github.com/sightline/sightline/wire"
	"go.yaml.in/yaml/v3"
)

// Config is everything an agent needs; flags and files only fill it.
type Config struct {
	DataDir     string   `yaml:"data_dir"`
	HTTP        string   `yaml:"http"`        // listen address for the collect API
	Aggregators []string `yaml:"aggregators"` // aggregator wire addresses (host:port)
	TLSDir      string   `yaml:"tls_dir"`     // agent certificate and cluster CA
	// AgentID names this agent towards the aggregators ("agent" when empty).
	// Each new queue adds a random incarnation to it ("name~hex"), kept in
	// the queue, so a data dir lost and recreated never reuses sequences.
	AgentID string `yaml:"agent_id"`

	DiskBudget   int64   `yaml:"disk_budget"`   // bytes the queue may fill before answering 503
	ShedFraction float64 `yaml:"shed_fraction"` // past this share of the budget, rrweb events are shed

	MaxBodyBytes        int64 `yaml:"max_body_bytes"` // also bounds the gunzipped body
	MaxEventsPerRequest int   `yaml:"max_events_per_request"`

	BatchMaxEvents int           `yaml:"batch_max_events"`
	BatchLinger    time.Duration `yaml:"batch_linger"` // longest an accepted event waits to be sealed
	MaxInFlight    int           `yaml:"max_in_flight"`
	RetryMin       time.Duration `yaml:"retry_min"`
	RetryMax       time.Duration `yaml:"retry_max"`

	// MemoryLimit is the soft Go memory limit of the agent process (bytes;
	// 0 leaves the runtime's default or GOMEMLIMIT). The agent sits beside
	// the web app, so it trades some GC CPU for a small footprint.
	MemoryLimit int64 `yaml:"memory_limit"`

	MaxClockSkew time.Duration `yaml:"max_clock_skew"` // how far in the future an event ts may be
	MaxEventAge  time.Duration `yaml:"max_event_age"`  // how far in the past an event ts may be
}

// DefaultConfig returns the defaults; the addresses and directories have
// none and must be set.
func DefaultConfig() Config {
	return Config{
		DiskBudget:          1 << 30,
		ShedFraction:        0.8,
		MaxBodyBytes:        1 << 20,
		MaxEventsPerRequest: 1000,
		BatchMaxEvents:      1000,
		BatchLinger:         100 * time.Millisecond,
		MaxInFlight:         4,
		RetryMin:            100 * time.Millisecond,
		RetryMax:            5 * time.Second,
		MaxClockSkew:        10 * time.Minute,
		MaxEventAge:         7 * 24 * time.Hour,
		MemoryLimit:         32 << 20,
	}
}

// maxBodyLimit keeps one request (and so one queued record) well inside a
// wire frame and the aggregator's decode limit.
const maxBodyLimit = 8 << 20

var agentIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)

// Validate reports every problem at once, each naming the yaml field and
// how to fix it.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if c.DataDir == "" {
		bad("data_dir", `required, e.g. "/var/lib/sightline/agent"`)
	}
	if c.HTTP == "" {
		bad("http", `required, e.g. "127.0.0.1:8081"`)
	} else if _, _, err := net.SplitHostPort(c.HTTP); err != nil {
		bad("http", `%q is not host:port, e.g. "127.0.0.1:8081"`, c.HTTP)
	}
	if len(c.Aggregators) == 0 {
		bad("aggregators", `required, at least one wire address, e.g. ["127.0.0.1:8443"]`)
	}
	for i, a := range c.Aggregators {
		if host, port, err := net.SplitHostPort(a); err != nil || host == "" || port == "" {
			bad(fmt.Sprintf("aggregators[%d]", i), `%q is not host:port, e.g. "127.0.0.1:8443"`, a)
		}
	}
	if c.TLSDir == "" {
		bad("tls_dir", `required, the directory "sightline ca init" wrote, e.g. "/etc/sightline/tls"`)
	}
	if c.AgentID != "" && !agentIDPattern.MatchString(c.AgentID) {
		bad("agent_id", "%q must be 1 to 128 of A-Z a-z 0-9 . _ -, or empty for a generated id", c.AgentID)
	}
	if c.MemoryLimit < 0 {
		bad("memory_limit", "%d is negative; use 0 for no limit or bytes, e.g. 33554432", c.MemoryLimit)
	}
	if c.MaxBodyBytes <= 0 {
		bad("max_body_bytes", "must be positive, e.g. 1048576")
	} else if c.MaxBodyBytes > maxBodyLimit {
		bad("max_body_bytes", "%d is over %d (8 MiB): one request must fit in one batch the aggregator accepts", c.MaxBodyBytes, maxBodyLimit)
	}
	if c.DiskBudget <= 0 {
		bad("disk_budget", "must be positive, e.g. 1073741824 (1 GiB)")
	} else if c.MaxBodyBytes > 0 && c.DiskBudget < 2*c.MaxBodyBytes {
		bad("disk_budget", "%d is less than twice max_body_bytes (%d); raise it so a full request fits", c.DiskBudget, c.MaxBodyBytes)
	}
	if !(c.ShedFraction > 0 && c.ShedFraction <= 1) {
		bad("shed_fraction", "%v must be above 0 and at most 1, e.g. 0.8", c.ShedFraction)
	}
	if c.MaxEventsPerRequest <= 0 {
		bad("max_events_per_request", "must be positive, e.g. 1000")
	}
	if c.BatchMaxEvents <= 0 || c.BatchMaxEvents > wire.MaxBatchEvents {
		bad("batch_max_events", "%d must be between 1 and %d, e.g. 1000", c.BatchMaxEvents, wire.MaxBatchEvents)
	}
	if c.BatchLinger < 0 || c.BatchLinger > time.Minute {
		bad("batch_linger", "%v must be between 0s and 1m, e.g. 100ms", c.BatchLinger)
	}
	if c.MaxInFlight < 1 || c.MaxInFlight > 256 {
		bad("max_in_flight", "%d must be between 1 and 256, e.g. 4", c.MaxInFlight)
	}
	if c.RetryMin <= 0 {
		bad("retry_min", "must be positive, e.g. 100ms")
	}
	if c.RetryMax < c.RetryMin {
		bad("retry_max", "%v must be at least retry_min (%v), e.g. 5s", c.RetryMax, c.RetryMin)
	}
	if c.MaxClockSkew < 0 {
		bad("max_clock_skew", "must not be negative, e.g. 10m")
	}
	if c.MaxEventAge <= 0 {
		bad("max_event_age", "must be positive, e.g. 168h")
	}
	return errors.Join(errs...)
}

// LoadConfig starts from DefaultConfig and overlays the yaml file at path.
// Unknown fields are errors. It does not validate, so that flags can still
// be applied on top; call Validate after.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	f, err := os.Open(path)
	if err != nil {
		return cfg, fmt.Errorf("agent config: %w", err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("agent config %s: %w", path, err)
	}
	return cfg, nil
}
