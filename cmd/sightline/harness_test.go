package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binPath is the sightline binary built once for the process-level suites.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sightline-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "sightline")
	args := []string{"build", "-o", binPath}
	if raceBuild {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building sightline:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-time.After(20 * time.Millisecond)
	}
}

func freePort(t testing.TB, network string) string {
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

// proc is a sightline process under test; its output goes to a log file
// that is printed when the test fails.
type proc struct {
	t    testing.TB
	name string
	args []string
	log  string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(t testing.TB, name string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, log: filepath.Join(t.TempDir(), name+".log")}
	p.start()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 8000 {
				b = b[len(b)-8000:]
			}
			t.Logf("--- last output of %s:\n%s", name, b)
		}
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	fmt.Fprintf(f, "=== start %s %s\n", p.name, strings.Join(p.args, " "))
	cmd := exec.Command(binPath, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Should the test process itself die, its children go with it rather
	// than linger holding ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); f.Close(); close(done) }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
}

// exited reports whether the process started last has ended.
func (p *proc) exited() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() { p.signal(syscall.SIGKILL) }

// stop asks for a graceful shutdown and waits for it.
func (p *proc) stop() { p.signal(syscall.SIGTERM) }

// cluster is one aggregator node and its CA, as a user would set them up.
type testCluster struct {
	t                testing.TB
	dir, tls         string
	http, wire, raft string
	agg              *proc
	token            string
	site, siteOrigin string
}

func newTestCluster(t testing.TB) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir(), site: "load", siteOrigin: "http://localhost:8080"}
	c.tls = filepath.Join(c.dir, "tls")
	if out, err := exec.Command(binPath, "ca", "init", "--dir", c.tls).CombinedOutput(); err != nil {
		t.Fatalf("ca init: %v\n%s", err, out)
	}
	c.http, c.wire, c.raft = freePort(t, "tcp"), freePort(t, "udp"), freePort(t, "tcp")
	c.agg = startProc(t, "aggregator", "aggregator", "--node-id", "n1", "--data-dir", filepath.Join(c.dir, "n1"),
		"--http", c.http, "--wire", c.wire, "--raft", c.raft, "--bootstrap", "--tls-dir", c.tls)
	tokenFile := filepath.Join(c.dir, "n1", "admin.token")
	waitFor(t, 30*time.Second, "the admin token", func() bool {
		b, err := os.ReadFile(tokenFile)
		c.token = strings.TrimSpace(string(b))
		return err == nil && c.token != ""
	})
	waitFor(t, 30*time.Second, "the site to be created", func() bool {
		code, _ := c.api("PUT", "/api/v1/sites/"+c.site, fmt.Sprintf(`{"origins":[%q]}`, c.siteOrigin))
		return code == http.StatusOK
	})
	return c
}

// api calls the aggregator's admin API and returns status and body.
func (c *testCluster) api(method, path, body string) (int, []byte) {
	req, _ := http.NewRequest(method, "http://"+c.http+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// stats returns the committed event count of the test site, or -1 while the
// aggregator does not answer.
func (c *testCluster) events() int {
	code, body := c.api("GET", "/api/v1/stats?site="+c.site, "")
	if code != http.StatusOK {
		return -1
	}
	var st struct{ Events int }
	if json.Unmarshal(body, &st) != nil {
		return -1
	}
	return st.Events
}

// sessionEventIDs lists the stored event ids of one session.
func (c *testCluster) sessionEventIDs(session string) (map[string]int, error) {
	code, body := c.api("GET", "/api/v1/events?site="+c.site+"&session="+session, "")
	if code != http.StatusOK {
		return nil, fmt.Errorf("events of %s: HTTP %d: %s", session, code, body)
	}
	var out struct{ Events []struct{ ID string } }
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, err
	}
	ids := map[string]int{}
	for _, e := range out.Events {
		ids[e.ID]++
	}
	return ids, nil
}

// restartAggregator starts the aggregator process again on the same data.
func (c *testCluster) restartAggregator() { c.agg.start() }

type testAgent struct {
	*proc
	http string
}

func (c *testCluster) startAgent(t testing.TB, name string, extraYAML string) *testAgent {
	t.Helper()
	dir := filepath.Join(c.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	args := []string{"agent", "--data-dir", filepath.Join(dir, "data"), "--http", freePort(t, "tcp"),
		"--aggregators", c.wire, "--tls-dir", c.tls}
	if extraYAML != "" {
		cfg := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(cfg, []byte(extraYAML), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", cfg)
	}
	a := &testAgent{proc: startProc(t, name, args...), http: args[4]}
	a.waitReady(t)
	return a
}

func (a *testAgent) waitReady(t testing.TB) {
	t.Helper()
	waitFor(t, 30*time.Second, a.name+" to be ready", func() bool {
		if a.exited() {
			t.Fatalf("%s exited before it was ready", a.name)
		}
		resp, err := http.Get("http://" + a.http + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func (a *testAgent) restart(t testing.TB) {
	a.start()
	a.waitReady(t)
}

// collectBody builds a collect request of n click events with ids prefix-0…
func collectBody(site, session, prefix string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"site":%q,"session":%q,"events":[`, site, session)
	now := time.Now().UnixMilli()
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"%s-%d","type":"click","ts":%d,"url":"http://localhost:8080/p/%d","target":{"sel":"#b%d","tag":"button","id":"b%d","cls":["btn"],"text":"Buy"}}`,
			prefix, i, now, i%7, i%13, i%13)
	}
	b.WriteString("]}")
	return b.Bytes()
}

// post sends one collect request and returns the status (0 on transport error).
func post(client *http.Client, agentAddr string, body []byte) (int, http.Header) {
	req, _ := http.NewRequest("POST", "http://"+agentAddr+"/v1/collect", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
