package agent

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sightline/sightline/wire"
)

// metaConfig is the queue meta key holding the last wire.Config, so an agent
// restarted while the aggregators are away still knows its sites.
const metaConfig = "agent.config"

// configWaitMillis is how long one config long poll may wait on the server.
const configWaitMillis = 25000

// siteSet is one immutable view of the sites; swapped whole.
type siteSet struct {
	version uint64
	sites   map[string]*siteInfo
	origins map[string]bool // union over all sites, for CORS preflight
}

type siteInfo struct {
	origins    []string // as configured, for GET /v1/config
	originsSet map[string]bool
}

func newSiteSet(cfg *wire.Config) *siteSet {
	s := &siteSet{version: cfg.Version, sites: make(map[string]*siteInfo, len(cfg.Sites)), origins: map[string]bool{}}
	for _, site := range cfg.Sites {
		info := &siteInfo{origins: append([]string{}, site.Origins...), originsSet: map[string]bool{}}
		for _, o := range site.Origins {
			o = normOrigin(o)
			info.originsSet[o] = true
			s.origins[o] = true
		}
		s.sites[site.ID] = info
	}
	return s
}

// normOrigin makes configured and sent origins comparable: browsers send
// scheme://host[:port] in lower case with no path.
func normOrigin(o string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(o), "/"))
}

// setConfig persists cfg in queue meta and then swaps it in, so what the
// agent serves is always what it would find again after a restart.
func (a *Agent) setConfig(cfg *wire.Config) error {
	b, err := wire.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := a.q.SetMeta(metaConfig, b); err != nil {
		return err
	}
	a.sites.Store(newSiteSet(cfg))
	return nil
}

// loadConfig restores the last persisted config, if any.
func (a *Agent) loadConfig() error {
	b, err := a.q.Meta(metaConfig)
	if err != nil || b == nil {
		return err
	}
	var cfg wire.Config
	if err := wire.Unmarshal(b, &cfg); err != nil {
		// A config we cannot read is as good as none; the poller fetches a
		// fresh one. Refusing to start would keep queued events stuck.
		a.log.Warn("agent: stored site config unreadable, waiting for a fresh one", "error", err)
		return nil
	}
	a.sites.Store(newSiteSet(&cfg))
	return nil
}

// pollConfig long-polls the config source until ctx ends, with backoff on
// errors.
func (a *Agent) pollConfig(ctx context.Context) {
	var failures int
	var lastLog time.Time
	for ctx.Err() == nil {
		var version uint64
		if s := a.sites.Load(); s != nil {
			version = s.version
		}
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, configWaitMillis*time.Millisecond+15*time.Second)
		cfg, err := a.source.FetchConfig(pctx, &wire.ConfigRequest{AgentID: a.id, Version: version, WaitMillis: configWaitMillis})
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil && cfg == nil {
			err = errors.New("config source returned no config")
		}
		if err != nil {
			failures++
			delay := backoff(a.cfg.RetryMin, a.cfg.RetryMax, failures)
			a.m.configErrors.Inc()
			if time.Since(lastLog) >= logEvery {
				lastLog = time.Now()
				a.log.Warn("agent: cannot fetch site config", "error", err, "retry_in", delay, "failures", failures)
			}
			if !sleepCtx(ctx, delay) {
				return
			}
			continue
		}
		if failures > 0 {
			a.log.Info("agent: site config source back", "after_failures", failures)
			failures = 0
		}
		cur := a.sites.Load()
		if cur == nil || cfg.Version != cur.version {
			if err := a.setConfig(cfg); err != nil {
				if ctx.Err() != nil {
					return
				}
				a.log.Error("agent: storing site config", "error", err)
				if !sleepCtx(ctx, a.cfg.RetryMax) {
					return
				}
			} else {
				a.log.Info("agent: site config updated", "version", cfg.Version, "sites", len(cfg.Sites))
			}
			continue
		}
		// An unchanged answer that came back at once would otherwise spin.
		if time.Since(start) < a.cfg.RetryMin {
			if !sleepCtx(ctx, a.cfg.RetryMin) {
				return
			}
		}
	}
}
