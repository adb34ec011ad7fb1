package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sightline/sightline/cluster"
)

// API errors that are not storage or cluster errors.
var (
	// ErrUnauthorized means the request carried no valid token.
	ErrUnauthorized = errors.New("missing or invalid bearer token")
	// ErrForbidden means the token's role may not do this.
	ErrForbidden = errors.New("the token's role does not allow this")
	// ErrSiteExists means POST /api/v1/sites named an existing site.
	ErrSiteExists = errors.New("site already exists")
)

// fieldError is a validation problem with the field it concerns.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

// apiErrors maps errors to HTTP status and stable code, in one table.
var apiErrors = []struct {
	err    error
	status int
	code   string
}{
	{ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{ErrForbidden, http.StatusForbidden, "forbidden"},
	{ErrNotFound, http.StatusNotFound, "not_found"},
	{ErrSiteExists, http.StatusConflict, "site_exists"},
	{cluster.ErrNotLeader, http.StatusServiceUnavailable, "not_leader"},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, "unavailable"},
}

func writeError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "internal"
	var fe *fieldError
	if errors.As(err, &fe) {
		status, code = http.StatusBadRequest, "invalid_field"
	} else {
		for _, e := range apiErrors {
			if errors.Is(err, e.err) {
				status, code = e.status, e.code
				break
			}
		}
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	body := map[string]any{"code": code, "message": err.Error()}
	if fe != nil {
		body["field"] = fe.field
	}
	writeJSON(w, status, map[string]any{"error": body})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

var roleRank = map[string]int{RoleViewer: 1, RoleAnalyst: 2, RoleAdmin: 3}

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", n.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.reg, promhttp.HandlerOpts{}))
	handle := func(pattern, role string, h func(http.ResponseWriter, *http.Request) error) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := n.authorize(r, role); err != nil {
				writeError(w, err)
				return
			}
			if err := h(w, r); err != nil {
				writeError(w, err)
			}
		})
	}
	handle("GET /api/v1/stats", RoleViewer, n.getStats)
	handle("GET /api/v1/cluster", RoleViewer, n.getCluster)
	handle("GET /api/v1/sites", RoleViewer, n.listSites)
	handle("GET /api/v1/sites/{id}", RoleViewer, n.getSite)
	handle("POST /api/v1/sites", RoleAdmin, n.createSite)
	handle("PUT /api/v1/sites/{id}", RoleAdmin, n.putSite)
	handle("GET /api/v1/events", RoleAnalyst, n.listEvents)
	handle("POST /api/v1/cluster/join", RoleAdmin, n.joinNode)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": map[string]string{
			"code": "not_found", "message": "no such endpoint: " + r.Method + " " + r.URL.Path}})
	})
	return mux
}

func (n *Node) authorize(r *http.Request, need string) error {
	h := r.Header.Get("Authorization")
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || secret == "" {
		return ErrUnauthorized
	}
	tok, err := n.store.TokenByHash(HashToken(strings.TrimSpace(secret)))
	if errors.Is(err, ErrNotFound) {
		return ErrUnauthorized
	}
	if err != nil {
		return err
	}
	if roleRank[tok.Role] < roleRank[need] {
		return fmt.Errorf("%w: %s needs role %s, token has %s", ErrForbidden, r.URL.Path, need, tok.Role)
	}
	return nil
}

func (n *Node) readyz(w http.ResponseWriter, _ *http.Request) {
	if id, _ := n.raft.Leader(); id == "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"error": map[string]string{
			"code": "no_leader", "message": "the cluster has no leader yet"}})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (n *Node) getStats(w http.ResponseWriter, r *http.Request) error {
	site := r.URL.Query().Get("site")
	if site == "" {
		return &fieldError{"site", "query parameter required, e.g. ?site=demo"}
	}
	if _, err := n.store.Site(site); err != nil {
		return fmt.Errorf("site %q: %w", site, err)
	}
	st, err := n.store.Stats(site)
	if err != nil {
		return err
	}
	applied, err := n.store.AppliedIndex()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"site": site, "events": st.Events, "sessions": st.Sessions, "applied_index": applied,
	})
	return nil
}

func (n *Node) getCluster(w http.ResponseWriter, _ *http.Request) error {
	id, addr := n.raft.Leader()
	servers, err := n.raft.Servers()
	if err != nil {
		return err
	}
	applied, err := n.store.AppliedIndex()
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"node":          n.cfg.NodeID,
		"leader":        map[string]string{"id": id, "raft_addr": addr},
		"nodes":         servers,
		"applied_index": applied,
	})
	return nil
}

// joinNode adds a node as a voter; only the leader can.
func (n *Node) joinNode(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		ID       string `json:"id"`
		RaftAddr string `json:"raft_addr"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 4096)).Decode(&body); err != nil {
		return &fieldError{"body", `want {"id":"n2","raft_addr":"host:port"}: ` + err.Error()}
	}
	if body.ID == "" {
		return &fieldError{"id", "required"}
	}
	if _, _, err := net.SplitHostPort(body.RaftAddr); err != nil {
		return &fieldError{"raft_addr", fmt.Sprintf("%q is not host:port", body.RaftAddr)}
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.ApplyTimeout)
	defer cancel()
	if err := n.raft.AddVoter(ctx, body.ID, body.RaftAddr); err != nil {
		return err
	}
	n.logger.Info("node joined", "id", body.ID, "raft_addr", body.RaftAddr)
	writeJSON(w, http.StatusOK, map[string]string{"id": body.ID, "raft_addr": body.RaftAddr})
	return nil
}

func (n *Node) listSites(w http.ResponseWriter, _ *http.Request) error {
	sites, err := n.store.Sites()
	if err != nil {
		return err
	}
	if sites == nil {
		sites = []Site{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sites": sites})
	return nil
}

func (n *Node) getSite(w http.ResponseWriter, r *http.Request) error {
	site, err := n.store.Site(r.PathValue("id"))
	if err != nil {
		return fmt.Errorf("site %q: %w", r.PathValue("id"), err)
	}
	writeJSON(w, http.StatusOK, site)
	return nil
}

func (n *Node) createSite(w http.ResponseWriter, r *http.Request) error {
	site, err := decodeSite(r, "")
	if err != nil {
		return err
	}
	if _, err := n.store.Site(site.ID); err == nil {
		return fmt.Errorf("site %q: %w (use PUT /api/v1/sites/%s to change it)", site.ID, ErrSiteExists, site.ID)
	}
	if err := n.propose(r.Context(), CmdPutSite, &site); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, site)
	return nil
}

func (n *Node) putSite(w http.ResponseWriter, r *http.Request) error {
	site, err := decodeSite(r, r.PathValue("id"))
	if err != nil {
		return err
	}
	if old, err := n.store.Site(site.ID); err == nil {
		site.Created = old.Created
	}
	if err := n.propose(r.Context(), CmdPutSite, &site); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, site)
	return nil
}

var siteIDPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// decodeSite reads and validates a site body; pathID, when set, must agree
// with the body's id (or fills it).
func decodeSite(r *http.Request, pathID string) (Site, error) {
	var body struct {
		ID      string   `json:"id"`
		Origins []string `json:"origins"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return Site{}, &fieldError{"body", "not a JSON site object: " + err.Error() + ` (want {"id":"demo","origins":["http://localhost:8080"]})`}
	}
	if body.ID == "" {
		body.ID = pathID
	}
	if pathID != "" && body.ID != pathID {
		return Site{}, &fieldError{"id", fmt.Sprintf("%q does not match the path's %q", body.ID, pathID)}
	}
	if !siteIDPattern.MatchString(body.ID) {
		return Site{}, &fieldError{"id", fmt.Sprintf("%q must be 1-63 of a-z, 0-9, '-' or '_', starting with a letter or digit", body.ID)}
	}
	site := Site{ID: body.ID, Origins: []string{}, Created: time.Now().UnixMilli()}
	for i, o := range body.Origins {
		norm, err := NormalizeOrigin(o)
		if err != nil {
			return Site{}, &fieldError{fmt.Sprintf("origins[%d]", i), err.Error()}
		}
		site.Origins = append(site.Origins, norm)
	}
	return site, nil
}

// NormalizeOrigin checks that o is a web origin (scheme://host[:port]) and
// returns it in the form browsers send in the Origin header.
func NormalizeOrigin(o string) (string, error) {
	u, err := url.Parse(o)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %v", o, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%q must start with http:// or https://", o)
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q must be just scheme://host[:port], e.g. https://app.example.com", o)
	}
	return strings.ToLower(u.Scheme + "://" + u.Host), nil
}

func (n *Node) listEvents(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	site, session := q.Get("site"), q.Get("session")
	if site == "" {
		return &fieldError{"site", "query parameter required"}
	}
	if session == "" {
		return &fieldError{"session", "query parameter required"}
	}
	events, err := n.store.SessionEvents(site, session)
	if err != nil {
		return err
	}
	out := make([]map[string]any, 0, len(events))
	for _, ev := range events {
		m := map[string]any{"id": ev.ID, "type": ev.Type, "ts": ev.TS, "url": ev.URL, "user": ev.User,
			"target": map[string]any{"sel": ev.Target.Sel, "tag": ev.Target.Tag, "id": ev.Target.ID, "cls": ev.Target.Cls, "text": ev.Target.Text}}
		if ev.Value != "" {
			m["value"] = ev.Value
		}
		if ev.Name != "" {
			m["name"] = ev.Name
		}
		if len(ev.Props) > 0 {
			m["props"] = json.RawMessage(ev.Props)
		}
		if len(ev.RRWeb) > 0 {
			m["rrweb"] = json.RawMessage(ev.RRWeb)
		}
		out = append(out, m)
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": out})
	return nil
}

// propose encodes a command and waits for its commit and apply.
func (n *Node) propose(ctx context.Context, t CmdType, body any) error {
	cmd, err := EncodeCommand(t, body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	res, err := n.raft.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	if e, ok := res.(error); ok {
		return e
	}
	return nil
}
