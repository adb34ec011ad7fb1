package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sightline/sightline/agent"
	"github.com/sightline/sightline/aggregator"
	"github.com/sightline/sightline/wire"
)

//go:embed demosite/index.html
var demoPage string

// runDemo starts one aggregator node, one agent and the demo web app in this
// process, on the demo ports of ARCHITECTURE.md unless told otherwise.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--data-dir DIR]", stderr)
	dataDir := fs.String("data-dir", "sightline-demo", "`directory` for all demo state; the admin token is written to DIR/admin.token")
	webAddr := fs.String("web", "127.0.0.1:8080", "demo web app listen `address`")
	agentAddr := fs.String("agent-http", "127.0.0.1:8081", "agent collect endpoint `address`")
	httpAddr := fs.String("http", "127.0.0.1:8082", "aggregator API and UI `address`")
	wireAddr := fs.String("wire", "127.0.0.1:8443", "aggregator QUIC `address` (UDP)")
	raftAddr := fs.String("raft", "127.0.0.1:8300", "aggregator Raft `address`")
	logLevel := fs.String("log-level", "warn", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	tlsDir := filepath.Join(*dataDir, "tls")
	if _, err := os.Stat(filepath.Join(tlsDir, "ca.crt")); errors.Is(err, os.ErrNotExist) {
		if err := wire.InitCA(tlsDir, nil); err != nil {
			return err
		}
	}

	acfg := aggregator.DefaultConfig()
	acfg.NodeID, acfg.DataDir, acfg.TLSDir, acfg.Bootstrap = "demo", filepath.Join(*dataDir, "aggregator"), tlsDir, true
	acfg.HTTP, acfg.Wire, acfg.Raft = *httpAddr, *wireAddr, *raftAddr
	node, err := aggregator.New(acfg, logger.With("role", "aggregator"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 3)
	go func() { done <- node.Run(ctx) }()

	apiURL := "http://" + node.HTTPAddr()
	token, err := waitAdminToken(ctx, filepath.Join(acfg.DataDir, aggregator.AdminTokenFile))
	if err != nil {
		cancel()
		<-done
		return err
	}
	if err := os.WriteFile(filepath.Join(*dataDir, "admin.token"), []byte(token+"\n"), 0o600); err != nil {
		cancel()
		<-done
		return err
	}

	webLn, err := net.Listen("tcp", *webAddr)
	if err != nil {
		cancel()
		<-done
		return fmt.Errorf("--web: %w", err)
	}
	webURL := "http://localhost:" + portOf(webLn.Addr().String())
	if err := ensureSite(ctx, apiURL, token, "demo", webURL); err != nil {
		cancel()
		<-done
		return err
	}

	gcfg := agent.DefaultConfig()
	gcfg.DataDir, gcfg.HTTP, gcfg.TLSDir = filepath.Join(*dataDir, "agent"), *agentAddr, tlsDir
	gcfg.Aggregators = []string{node.WireAddr()}
	go func() { done <- startAgent(ctx, gcfg, logger.With("role", "agent")) }()

	agentURL := "http://localhost:" + portOf(gcfg.HTTP)
	page := strings.ReplaceAll(demoPage, "__AGENT_URL__", agentURL)
	web := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	})}
	go func() {
		err := web.Serve(webLn)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		done <- err
	}()
	running := 3 // aggregator, agent, web app: each sends once on done

	// Say it runs only once the agent answers; if a part fails first (a
	// port in use), stop everything and say why.
	var runErr error
	switch err := waitHealthy(ctx, "http://"+gcfg.HTTP+"/healthz", done); {
	case errors.Is(err, context.Canceled): // stopped while starting
	case err != nil:
		runErr = err
		if !errors.Is(err, errWaitTimeout) {
			running-- // that part has already reported on done
		}
	default:
		fmt.Fprintf(stdout, `Sightline demo is running.
  demo web app     %s
  agent (collect)  %s/v1/collect
  aggregator API   %s  (stats: %s/api/v1/stats?site=demo)
  admin token      %s  (also in %s)
Try:
  curl -H "Authorization: Bearer $(cat %s)" '%s/api/v1/stats?site=demo'
Press Ctrl-C to stop.
`, webURL, agentURL, apiURL, apiURL, token, filepath.Join(*dataDir, "admin.token"),
			filepath.Join(*dataDir, "admin.token"), apiURL)
		select {
		case <-ctx.Done():
		case runErr = <-done:
			running--
		}
	}
	// Stop taking traffic first, then the agent (it keeps its queue), then
	// the aggregator.
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	_ = web.Shutdown(sctx)
	cancel()
	for range running {
		if err := <-done; err != nil && runErr == nil && !errors.Is(err, context.Canceled) {
			runErr = err
		}
	}
	return runErr
}

// errWaitTimeout means a part started but never answered its health check.
var errWaitTimeout = errors.New("demo: no answer within 30s from")

// waitHealthy polls url until it answers 200. A part that stops first (its
// error arrives on done) ends the wait with that error.
func waitHealthy(ctx context.Context, url string, done <-chan error) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s", errWaitTimeout, url)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			if err == nil {
				err = errors.New("demo: a part stopped while starting")
			}
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// portOf returns the port of a host:port address.
func portOf(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return port
}

func waitAdminToken(ctx context.Context, path string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && len(bytes.TrimSpace(b)) > 0 {
			return string(bytes.TrimSpace(b)), nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("demo: no admin token at %s after 30s (is the aggregator electing itself?)", path)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ensureSite creates the demo site through the public API, the way a user
// would; it retries while the token is still being committed.
func ensureSite(ctx context.Context, apiURL, token, id, origin string) error {
	body, _ := json.Marshal(map[string]any{"id": id, "origins": []string{origin, strings.Replace(origin, "localhost", "127.0.0.1", 1)}})
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, apiURL+"/api/v1/sites/"+id, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(msg))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: creating site %q: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
