// Command sightline is the one binary of Sightline: an edge agent, an
// aggregator node, a dev CA and an all-in-one demo, chosen by subcommand.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `sightline — self-hosted digital experience analytics

Usage:
  sightline demo       [--data-dir DIR]
  sightline aggregator --node-id ID --data-dir DIR --http ADDR --wire ADDR --raft ADDR (--bootstrap | --join HTTPADDR) --tls-dir DIR
  sightline agent      --data-dir DIR --http ADDR --aggregators ADDR[,ADDR...] --tls-dir DIR
  sightline ca init    --dir DIR

Every role also takes --config FILE (YAML) for the settings that have no flag;
flags given on the command line win over the file.
Run "sightline COMMAND --help" for the flags of one command.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sightline:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "demo":
		return runDemo(ctx, args[1:], stdout, stderr)
	case "aggregator":
		return runAggregator(ctx, args[1:], stderr)
	case "agent":
		return runAgent(ctx, args[1:], stderr)
	case "ca":
		return runCA(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// newFlags returns a flag set whose --help prints a short description first.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: sightline %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// setFlags reports which flags were given on the command line, so that only
// those override the config file.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// flagOverlay returns a function that puts a flag's value into a config
// field when the flag was given, or when the config file left it empty (so
// the flag's default fills it).
func flagOverlay(fs *flag.FlagSet) func(name string, dst *string, v string) {
	set := setFlags(fs)
	return func(name string, dst *string, v string) {
		if set[name] || *dst == "" {
			*dst = v
		}
	}
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %q is not debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}
