package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo is acceptance 1: the demo starts the aggregator, the agent and
// the demo web app; 500 events posted to the agent in 10 requests show up in
// the committed stats.
func TestDemo(t *testing.T) {
	dir := t.TempDir()
	web, agentHTTP, apiHTTP := freePort(t, "tcp"), freePort(t, "tcp"), freePort(t, "tcp")
	p := startProc(t, "demo", "demo", "--data-dir", dir, "--web", web, "--agent-http", agentHTTP,
		"--http", apiHTTP, "--wire", freePort(t, "udp"), "--raft", freePort(t, "tcp"))

	var token string
	waitFor(t, 60*time.Second, "the demo's admin token", func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "admin.token"))
		token = strings.TrimSpace(string(b))
		return err == nil && token != ""
	})
	if fi, err := os.Stat(filepath.Join(dir, "admin.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode = %v, want 0600 (%v)", fi.Mode().Perm(), err)
	}
	waitFor(t, 60*time.Second, "the agent to be ready", func() bool {
		resp, err := http.Get("http://" + agentHTTP + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// The demo page is served and points at the agent.
	resp, err := http.Get("http://" + web + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "/v1/collect") {
		t.Fatalf("demo page does not post to the agent:\n%.300s", page)
	}

	start := time.Now()
	origin := "http://localhost:" + portOf(web)
	for i := range 10 {
		req, _ := http.NewRequest("POST", "http://"+agentHTTP+"/v1/collect",
			strings.NewReader(string(collectBody("demo", fmt.Sprintf("s%d", i%3), fmt.Sprintf("r%d", i), 50))))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Origin", origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != origin {
			t.Fatalf("CORS: Access-Control-Allow-Origin = %q, want %q", got, origin)
		}
	}
	c := &testCluster{t: t, http: apiHTTP, token: token, site: "demo"}
	waitFor(t, 60*time.Second, "500 events in the stats", func() bool { return c.events() == 500 })
	t.Logf("500 events committed %v after the first POST", time.Since(start).Round(time.Millisecond))

	// No token, no stats.
	resp, err = http.Get("http://" + apiHTTP + "/api/v1/stats?site=demo")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stats without token: %d, want 401", resp.StatusCode)
	}
	p.stop()
}
