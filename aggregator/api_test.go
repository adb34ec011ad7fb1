package aggregator

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sightline/sightline/wire"
	"github.com/sightline/sightline/wire/wiretest"
)

func freeAddr(t *testing.T, network string) string {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(10 * time.Millisecond)
	}
}

// startNode runs a bootstrapped single node and returns it with its admin token.
func startNode(t *testing.T) (*Node, string) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir, cfg.Bootstrap = "n1", t.TempDir(), wiretest.CertDir(t), true
	cfg.HTTP, cfg.Wire, cfg.Raft = "127.0.0.1:0", "127.0.0.1:0", freeAddr(t, "tcp")
	n, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node stopped with %v", err)
		}
	})
	var token string
	waitFor(t, 20*time.Second, "admin token", func() bool {
		b, err := os.ReadFile(filepath.Join(cfg.DataDir, AdminTokenFile))
		token = strings.TrimSpace(string(b))
		if err != nil || token == "" {
			return false
		}
		_, err = n.store.TokenByHash(HashToken(token))
		return err == nil
	})
	if fi, _ := os.Stat(filepath.Join(cfg.DataDir, AdminTokenFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode %v, want 0600", fi.Mode().Perm())
	}
	return n, token
}

func call(t *testing.T, n *Node, token, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+n.HTTPAddr()+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestAPISitesStatsAndErrors(t *testing.T) {
	n, token := startNode(t)
	tests := []struct {
		name, method, path, body, token string
		want                            int
		code, field                     string
	}{
		{"no token", "GET", "/api/v1/stats?site=demo", "", "", 401, "unauthorized", ""},
		{"wrong token", "GET", "/api/v1/stats?site=demo", "", "sl_nope", 401, "unauthorized", ""},
		{"create site", "POST", "/api/v1/sites", `{"id":"demo","origins":["http://localhost:8080/"]}`, token, 201, "", ""},
		{"create again", "POST", "/api/v1/sites", `{"id":"demo","origins":[]}`, token, 409, "site_exists", ""},
		{"bad id", "POST", "/api/v1/sites", `{"id":"Demo Site","origins":[]}`, token, 400, "invalid_field", "id"},
		{"bad origin", "POST", "/api/v1/sites", `{"id":"x","origins":["localhost:8080"]}`, token, 400, "invalid_field", "origins[0]"},
		{"origin with path", "POST", "/api/v1/sites", `{"id":"x","origins":["https://a.example/app"]}`, token, 400, "invalid_field", "origins[0]"},
		{"unknown field", "POST", "/api/v1/sites", `{"id":"x","origin":"https://a.example"}`, token, 400, "invalid_field", "body"},
		{"put mismatched id", "PUT", "/api/v1/sites/demo", `{"id":"other"}`, token, 400, "invalid_field", "id"},
		{"stats", "GET", "/api/v1/stats?site=demo", "", token, 200, "", ""},
		{"stats without site", "GET", "/api/v1/stats", "", token, 400, "invalid_field", "site"},
		{"stats unknown site", "GET", "/api/v1/stats?site=nope", "", token, 404, "not_found", ""},
		{"cluster", "GET", "/api/v1/cluster", "", token, 200, "", ""},
		{"no such endpoint", "GET", "/api/v1/nothing", "", token, 404, "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := call(t, n, tt.token, tt.method, tt.path, tt.body)
			if code != tt.want {
				t.Fatalf("status %d, want %d: %v", code, tt.want, body)
			}
			if tt.code == "" {
				return
			}
			e, _ := body["error"].(map[string]any)
			if e == nil || e["code"] != tt.code || e["message"] == "" {
				t.Fatalf("error = %v, want code %q with a message", body, tt.code)
			}
			if tt.field != "" && e["field"] != tt.field {
				t.Fatalf("error field = %v, want %q", e["field"], tt.field)
			}
		})
	}
	site, err := n.store.Site("demo")
	if err != nil || len(site.Origins) != 1 || site.Origins[0] != "http://localhost:8080" {
		t.Fatalf("stored site = %+v (%v), want the origin normalized", site, err)
	}
}

func TestHandleBatchAcksAfterCommit(t *testing.T) {
	n, token := startNode(t)
	if code, _ := call(t, n, token, "PUT", "/api/v1/sites/demo", `{"origins":[]}`); code != 200 {
		t.Fatalf("put site: %d", code)
	}
	payload, _ := wire.EncodeEvents(events("demo", "s1", "e1", "e2"))
	b := &wire.Batch{AgentID: "a1", Seq: 1, Low: 1, Count: 2, Codec: wire.CodecZstdMsgpack, Payload: payload}
	for range 2 { // the second is a redelivery: acked, counted once
		if ack := n.HandleBatch(context.Background(), b); ack.Status != wire.AckOK || ack.Seq != 1 {
			t.Fatalf("ack = %+v", ack)
		}
		// Ack means applied: the counts are already there.
		if st, _ := n.store.Stats("demo"); st.Events != 2 {
			t.Fatalf("events after ack = %d, want 2", st.Events)
		}
	}
	bad := &wire.Batch{AgentID: "a1", Seq: 2, Low: 1, Codec: wire.CodecZstdMsgpack, Payload: []byte("garbage")}
	if ack := n.HandleBatch(context.Background(), bad); ack.Status != wire.AckRejected || ack.Message == "" {
		t.Fatalf("garbage batch ack = %+v, want rejected with a reason", ack)
	}
	code, body := call(t, n, token, "GET", "/api/v1/stats?site=demo", "")
	if code != 200 || body["events"] != float64(2) || body["sessions"] != float64(1) {
		t.Fatalf("stats = %d %v", code, body)
	}
}

func TestHandleConfigLongPoll(t *testing.T) {
	n, token := startNode(t)
	cfg, err := n.HandleConfig(context.Background(), &wire.ConfigRequest{AgentID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *wire.Config, 1)
	go func() {
		c, _ := n.HandleConfig(context.Background(), &wire.ConfigRequest{AgentID: "a", Version: cfg.Version, WaitMillis: 20000})
		got <- c
	}()
	if code, _ := call(t, n, token, "PUT", "/api/v1/sites/shop", `{"origins":["https://shop.example"]}`); code != 200 {
		t.Fatalf("put site: %d", code)
	}
	select {
	case c := <-got:
		if c.Version == cfg.Version || len(c.Sites) != 1 || c.Sites[0].ID != "shop" {
			t.Fatalf("long poll answered %+v", c)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long poll did not wake on a site change")
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{}.Validate()
	if err == nil {
		t.Fatal("empty config validated")
	}
	for _, field := range []string{"node_id:", "data_dir:", "tls_dir:", "http:", "wire:", "raft:", "bootstrap:", "apply_timeout:"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("validation of an empty config does not name %s:\n%v", field, err)
		}
	}
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir, cfg.Bootstrap = "n", "/d", "/t", true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	cfg.Join = "127.0.0.1:1"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "exactly one of bootstrap") {
		t.Fatalf("bootstrap and join together: %v", err)
	}
}

// TestLoadConfigGolden loads every testdata/config/*.yaml and compares what
// LoadConfig and Validate say with the .golden file beside it (-update
// rewrites them).
func TestLoadConfigGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/config/*.yaml")
	if len(files) == 0 {
		t.Fatal("no testdata/config/*.yaml")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			got := "ok\n"
			cfg, err := LoadConfig(f)
			if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				got = err.Error() + "\n"
			}
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, _ := os.ReadFile(golden)
			if got != string(want) {
				t.Fatalf("got:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

var update = flag.Bool("update", false, "rewrite golden files")

func TestJoin(t *testing.T) {
	leader, token := startNode(t)
	cfg := DefaultConfig()
	cfg.NodeID, cfg.DataDir, cfg.TLSDir = "n2", t.TempDir(), wiretest.CertDir(t)
	cfg.HTTP, cfg.Wire, cfg.Raft = "127.0.0.1:0", "127.0.0.1:0", freeAddr(t, "tcp")
	cfg.Join, cfg.JoinToken = leader.HTTPAddr(), token
	n2, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n2.Run(ctx) }()
	defer func() { cancel(); <-done }()

	if code, _ := call(t, leader, token, "PUT", "/api/v1/sites/demo", `{"origins":[]}`); code != 200 {
		t.Fatalf("put site: %d", code)
	}
	waitFor(t, 20*time.Second, "the joined node to replicate the site and the token", func() bool {
		_, err := n2.store.Site("demo")
		return err == nil
	})
	code, body := call(t, n2, token, "GET", "/api/v1/cluster", "")
	if code != 200 || len(body["nodes"].([]any)) != 2 {
		t.Fatalf("cluster seen from n2: %d %v", code, body)
	}
	// A follower does not take batches; it says so, so the agent moves on.
	if ack := n2.HandleBatch(context.Background(), &wire.Batch{AgentID: "a", Seq: 1}); ack.Status != wire.AckNotLeader {
		t.Fatalf("follower ack = %+v, want not-leader", ack)
	}
	if code, _ := call(t, leader, "", "POST", "/api/v1/cluster/join", `{}`); code != 401 {
		t.Fatalf("join without token: %d, want 401", code)
	}
}
