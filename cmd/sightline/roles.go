package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sightline/sightline/agent"
	"github.com/sightline/sightline/aggregator"
	"github.com/sightline/sightline/wire"
)

func runAggregator(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("aggregator", "aggregator --node-id ID --data-dir DIR --http ADDR --wire ADDR --raft ADDR (--bootstrap | --join HTTPADDR) --tls-dir DIR", stderr)
	def := aggregator.DefaultConfig()
	configFile := fs.String("config", "", "YAML `file` with further settings (flags win)")
	nodeID := fs.String("node-id", "", "this node's stable `id` in the cluster")
	dataDir := fs.String("data-dir", "", "`directory` for the Raft log, snapshots and state")
	httpAddr := fs.String("http", def.HTTP, "admin API and web UI listen `address`")
	wireAddr := fs.String("wire", def.Wire, "QUIC listen `address` for agents (UDP)")
	raftAddr := fs.String("raft", def.Raft, "Raft TCP `address` (bind and advertise)")
	bootstrap := fs.Bool("bootstrap", false, "start a new cluster with this node as its first member")
	join := fs.String("join", "", "HTTP `address` of a cluster member to join through")
	tlsDir := fs.String("tls-dir", "", "`directory` with ca.crt, node.crt and node.key (see `sightline ca init`)")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := def
	if *configFile != "" {
		var err error
		if cfg, err = aggregator.LoadConfig(*configFile); err != nil {
			return err
		}
	}
	overlay := flagOverlay(fs)
	overlay("node-id", &cfg.NodeID, *nodeID)
	overlay("data-dir", &cfg.DataDir, *dataDir)
	overlay("http", &cfg.HTTP, *httpAddr)
	overlay("wire", &cfg.Wire, *wireAddr)
	overlay("raft", &cfg.Raft, *raftAddr)
	overlay("join", &cfg.Join, *join)
	overlay("tls-dir", &cfg.TLSDir, *tlsDir)
	if setFlags(fs)["bootstrap"] {
		cfg.Bootstrap = *bootstrap
	}
	if cfg.JoinToken == "" {
		cfg.JoinToken = os.Getenv("SIGHTLINE_JOIN_TOKEN")
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	node, err := aggregator.New(cfg, logger)
	if err != nil {
		return err
	}
	return node.Run(ctx)
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("agent", "agent --data-dir DIR --http ADDR --aggregators ADDR[,ADDR...] --tls-dir DIR", stderr)
	def := agent.DefaultConfig()
	configFile := fs.String("config", "", "YAML `file` with further settings (flags win)")
	dataDir := fs.String("data-dir", "", "`directory` for the durable event queue")
	httpAddr := fs.String("http", def.HTTP, "collect endpoint listen `address`")
	aggregators := fs.String("aggregators", "", "comma-separated QUIC `addresses` of aggregator nodes")
	tlsDir := fs.String("tls-dir", "", "`directory` with ca.crt, agent.crt and agent.key (see `sightline ca init`)")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg := def
	if *configFile != "" {
		var err error
		if cfg, err = agent.LoadConfig(*configFile); err != nil {
			return err
		}
	}
	overlay := flagOverlay(fs)
	overlay("data-dir", &cfg.DataDir, *dataDir)
	overlay("http", &cfg.HTTP, *httpAddr)
	overlay("tls-dir", &cfg.TLSDir, *tlsDir)
	if setFlags(fs)["aggregators"] || len(cfg.Aggregators) == 0 {
		cfg.Aggregators = splitList(*aggregators)
	}
	logger, err := newLogger(stderr, *logLevel)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	// The limit is the agent process's; the demo, which shares its process
	// with an aggregator, leaves it alone. GOMEMLIMIT in the environment wins.
	if cfg.MemoryLimit > 0 && os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(cfg.MemoryLimit)
	}
	return startAgent(ctx, cfg, logger)
}

// startAgent wires the agent to a QUIC client and runs it until ctx ends.
func startAgent(ctx context.Context, cfg agent.Config, logger *slog.Logger) error {
	tlsConf, err := wire.ClientTLS(cfg.TLSDir, "agent")
	if err != nil {
		return fmt.Errorf("tls_dir: %w", err)
	}
	client := wire.NewClient(cfg.Aggregators, tlsConf, logger)
	defer client.Close()
	a, err := agent.New(cfg, client, client, prometheus.NewRegistry(), logger)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func runCA(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "init" {
		fmt.Fprint(stderr, "Usage: sightline ca init --dir DIR [--hosts HOST,...]\n")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("ca: want subcommand \"init\"")
	}
	fs := newFlags("ca init", "ca init --dir DIR [--hosts HOST,...]", stderr)
	dir := fs.String("dir", "", "`directory` to create the CA, node and agent certificates in")
	hosts := fs.String("hosts", "", "extra comma-separated DNS names or IPs for the node certificate (localhost and loopback are always included)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return fmt.Errorf("ca init: --dir is required")
	}
	if err := wire.InitCA(*dir, splitList(*hosts)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote ca.crt, ca.key, node.crt, node.key, agent.crt, agent.key to %s\n", *dir)
	fmt.Fprintf(stdout, "keep ca.key offline; give nodes node.* and agents agent.* plus ca.crt\n")
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
