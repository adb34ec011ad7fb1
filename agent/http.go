package agent

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"math"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sightline/sightline/agent/queue"
	"github.com/sightline/sightline/wire"
)

// bodyFormat is how a collect body is encoded.
type bodyFormat int

const (
	formatJSON bodyFormat = iota
	formatMsgpack
)

func (a *Agent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/collect", a.serveCollect)
	mux.HandleFunc("/v1/config", a.serveConfig)
	mux.HandleFunc("/healthz", a.serveHealth)
	mux.HandleFunc("/readyz", a.serveReady)
	if a.gatherer != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{}))
	} else {
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
			writeError(w, &apiError{Status: http.StatusNotImplemented, Code: codeNotFound,
				Message: "the metrics registry given to agent.New is not a prometheus.Gatherer"})
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: codeNotFound, Message: "no such endpoint: " + r.URL.Path})
	})
	return mux
}

// --- /v1/collect --------------------------------------------------------

func (a *Agent) serveCollect(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
	case http.MethodOptions:
		a.preflight(w, r)
		return
	default:
		w.Header().Set("Allow", "POST, OPTIONS")
		a.reject(w, &apiError{Status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
			Message: r.Method + " is not allowed; send events with POST"})
		return
	}
	n, shed, err := a.collect(w, r)
	if err != nil {
		a.reject(w, err)
		return
	}
	a.m.requests.WithLabelValues("202").Inc()
	a.m.eventsAccepted.Add(float64(n))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	if shed > 0 {
		_, _ = io.WriteString(w, `{"accepted":`+strconv.Itoa(n)+`,"shed":`+strconv.Itoa(shed)+"}\n")
	} else {
		_, _ = io.WriteString(w, `{"accepted":`+strconv.Itoa(n)+"}\n")
	}
}

// collect runs one collect request up to the durable append and returns the
// events accepted and shed.
func (a *Agent) collect(w http.ResponseWriter, r *http.Request) (int, int, *apiError) {
	origin := r.Header.Get("Origin")
	sites := a.sites.Load()
	if origin != "" && sites != nil && sites.origins[normOrigin(origin)] {
		// Let the page read errors too; refused below if the site disagrees.
		setCORS(w.Header(), origin)
	}
	format, aerr := mediaFormat(r.Header.Get("Content-Type"))
	if aerr != nil {
		return 0, 0, aerr
	}
	gz, aerr := contentEncoding(r.Header.Get("Content-Encoding"))
	if aerr != nil {
		return 0, 0, aerr
	}
	if sites == nil {
		return 0, 0, a.unavailable(codeNotReady, "the agent has not yet received its site configuration from the aggregators")
	}
	// Cheap early refusal; Append checks again with the real size.
	if a.q.Bytes() >= a.cfg.DiskBudget {
		return 0, 0, a.full()
	}

	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer putBuf(buf)
	if aerr := a.readBody(w, r, gz, buf); aerr != nil {
		return 0, 0, aerr
	}
	lim := limits{maxEvents: a.cfg.MaxEventsPerRequest, maxAge: a.cfg.MaxEventAge, maxSkew: a.cfg.MaxClockSkew, now: a.now()}
	var req *collectRequest
	if format == formatMsgpack {
		req, aerr = decodeMsgpack(buf.Bytes(), lim)
	} else {
		req, aerr = decodeJSON(buf.Bytes(), lim)
	}
	if aerr != nil {
		return 0, 0, aerr
	}

	site := sites.sites[req.Site]
	if site == nil {
		return 0, 0, &apiError{Status: http.StatusForbidden, Code: codeUnknownSite, Field: "site",
			Message: "site " + strconv.Quote(truncate(req.Site, 64)) + " is not configured on the aggregators"}
	}
	// A request without Origin comes from a server-side sender, not a page.
	if origin != "" && !site.originsSet[normOrigin(origin)] {
		unsetCORS(w.Header())
		return 0, 0, &apiError{Status: http.StatusForbidden, Code: codeOriginNotAllowed,
			Message: "origin " + strconv.Quote(truncate(origin, 128)) + " is not allowed for site " + strconv.Quote(req.Site)}
	}

	events, shed := a.shed(req.Events)
	if len(events) == 0 {
		return 0, shed, nil
	}
	start := time.Now()
	err := a.q.Append(r.Context(), events)
	a.m.appendSeconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		return len(events), shed, nil
	case errors.Is(err, queue.ErrFull):
		return 0, 0, a.full()
	case errors.Is(err, queue.ErrClosed):
		return 0, 0, a.unavailable(codeShuttingDown, "the agent is shutting down; retry")
	case r.Context().Err() != nil:
		return 0, 0, &apiError{Status: http.StatusServiceUnavailable, Code: codeShuttingDown, Message: "request cancelled before the events were durable"}
	}
	a.log.Error("agent: queue append failed", "error", err)
	return 0, 0, a.unavailable(codeInternal, "could not store the events; retry")
}

// shed drops rrweb events when the queue is past ShedFraction of its
// budget, so that replay data goes before analytics events do.
func (a *Agent) shed(events []wire.Event) ([]wire.Event, int) {
	if float64(a.q.Bytes()) <= a.cfg.ShedFraction*float64(a.cfg.DiskBudget) {
		return events, 0
	}
	kept := events[:0]
	var n, size int
	for i := range events {
		if events[i].Type == wire.TypeRRWeb {
			n++
			size += eventSize(&events[i])
			continue
		}
		kept = append(kept, events[i])
	}
	if n > 0 {
		a.m.shedEvents.Add(float64(n))
		a.m.shedBytes.Add(float64(size))
	}
	return kept, n
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= 4<<20 {
		bufPool.Put(b)
	}
}

var gzipPool sync.Pool

// readBody reads the body, gunzipped when gz, into buf; both the wire size
// and the decoded size are bounded by MaxBodyBytes.
func (a *Agent) readBody(w http.ResponseWriter, r *http.Request, gz bool, buf *bytes.Buffer) *apiError {
	limit := a.cfg.MaxBodyBytes
	body := http.MaxBytesReader(w, r.Body, limit)
	var src io.Reader = body
	if gz {
		zr, _ := gzipPool.Get().(*gzip.Reader)
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(body)
		} else {
			err = zr.Reset(body)
		}
		if err != nil {
			return bodyError(err, limit)
		}
		defer gzipPool.Put(zr)
		src = zr
	}
	if _, err := buf.ReadFrom(io.LimitReader(src, limit+1)); err != nil {
		return bodyError(err, limit)
	}
	if int64(buf.Len()) > limit {
		return tooLarge(limit, gz)
	}
	return nil
}

func bodyError(err error, limit int64) *apiError {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return tooLarge(limit, false)
	case errors.Is(err, gzip.ErrHeader), errors.Is(err, gzip.ErrChecksum), errors.Is(err, io.ErrUnexpectedEOF),
		strings.Contains(err.Error(), "flate"):
		return badField(codeMalformed, "", "body is not valid gzip: %v", err)
	}
	return badField(codeMalformed, "", "reading body: %v", err)
}

func tooLarge(limit int64, gunzipped bool) *apiError {
	what := "body"
	if gunzipped {
		what = "gunzipped body"
	}
	return &apiError{Status: http.StatusRequestEntityTooLarge, Code: codeTooLarge,
		Message: what + " exceeds " + strconv.FormatInt(limit, 10) + " bytes (max_body_bytes); send fewer events per request"}
}

func mediaFormat(ct string) (bodyFormat, *apiError) {
	if ct == "" {
		return formatJSON, nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil {
		switch mt {
		case "application/json", "text/plain": // sendBeacon sends strings as text/plain
			return formatJSON, nil
		case "application/msgpack", "application/x-msgpack":
			return formatMsgpack, nil
		}
	}
	return 0, &apiError{Status: http.StatusUnsupportedMediaType, Code: codeUnsupportedType,
		Message: "Content-Type " + strconv.Quote(truncate(ct, 64)) + " is not supported; use application/json, text/plain (JSON) or application/msgpack"}
}

func contentEncoding(ce string) (gz bool, err *apiError) {
	switch strings.ToLower(strings.TrimSpace(ce)) {
	case "", "identity":
		return false, nil
	case "gzip", "x-gzip":
		return true, nil
	}
	return false, &apiError{Status: http.StatusUnsupportedMediaType, Code: codeUnsupportedEnc,
		Message: "Content-Encoding " + strconv.Quote(truncate(ce, 32)) + " is not supported; use gzip or none"}
}

// retryAfter is the Retry-After value, in seconds, for 503 answers.
func (a *Agent) retryAfter() string {
	return strconv.Itoa(max(1, int(math.Ceil(a.cfg.RetryMax.Seconds()))))
}

func (a *Agent) unavailable(code, msg string) *apiError {
	return &apiError{Status: http.StatusServiceUnavailable, Code: code, Message: msg}
}

func (a *Agent) full() *apiError {
	return a.unavailable(codeQueueFull, "the agent's disk budget is spent while the aggregators catch up; retry after the Retry-After delay")
}

// reject answers an error and counts it.
func (a *Agent) reject(w http.ResponseWriter, e *apiError) {
	a.m.requests.WithLabelValues(strconv.Itoa(e.Status)).Inc()
	a.m.rejected.WithLabelValues(e.Code).Inc()
	if e.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", a.retryAfter())
		if e.Code == codeQueueFull {
			a.logFull()
		}
	}
	writeError(w, e)
}

var fullLog struct {
	sync.Mutex
	last time.Time
}

func (a *Agent) logFull() {
	fullLog.Lock()
	defer fullLog.Unlock()
	if time.Since(fullLog.last) >= logEvery {
		fullLog.last = time.Now()
		a.log.Warn("agent: queue full, answering 503", "queue_bytes", a.q.Bytes(), "disk_budget", a.cfg.DiskBudget,
			"queued_events", a.q.Events())
	}
}

func writeError(w http.ResponseWriter, e *apiError) {
	type body struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field,omitempty"`
	}
	writeJSON(w, e.Status, map[string]body{"error": {Code: e.Code, Message: e.Message, Field: e.Field}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// --- CORS ---------------------------------------------------------------

func setCORS(h http.Header, origin string) {
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
}

func unsetCORS(h http.Header) { h.Del("Access-Control-Allow-Origin") }

// preflight answers OPTIONS /v1/collect. The preflight does not carry the
// body, so the origin is allowed when any site allows it; the POST itself
// is then checked against its site.
func (a *Agent) preflight(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("Origin")
	h := w.Header()
	h.Set("Allow", "POST, OPTIONS")
	if origin == "" {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	sites := a.sites.Load()
	if sites == nil || !sites.origins[normOrigin(origin)] {
		writeError(w, &apiError{Status: http.StatusForbidden, Code: codeOriginNotAllowed,
			Message: "origin " + strconv.Quote(truncate(origin, 128)) + " is not allowed for any site"})
		return
	}
	setCORS(h, origin)
	h.Set("Access-Control-Allow-Methods", "POST")
	h.Set("Access-Control-Allow-Headers", "Content-Type, Content-Encoding")
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

// --- /v1/config, health -------------------------------------------------

func (a *Agent) serveConfig(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, &apiError{Status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed, Message: r.Method + " is not allowed; use GET"})
		return
	}
	sites := a.sites.Load()
	if sites == nil {
		w.Header().Set("Retry-After", a.retryAfter())
		writeError(w, a.unavailable(codeNotReady, "the agent has not yet received its site configuration"))
		return
	}
	id := r.URL.Query().Get("site")
	if id == "" {
		writeError(w, badField(codeMissingField, "site", "required query parameter, e.g. /v1/config?site=demo"))
		return
	}
	site := sites.sites[id]
	if site == nil {
		writeError(w, &apiError{Status: http.StatusNotFound, Code: codeUnknownSite, Field: "site",
			Message: "site " + strconv.Quote(truncate(id, 64)) + " is not configured"})
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && site.originsSet[normOrigin(origin)] {
		setCORS(w.Header(), origin)
	}
	w.Header().Set("Cache-Control", "no-cache")
	writeJSON(w, http.StatusOK, struct {
		Site    string   `json:"site"`
		Origins []string `json:"origins"`
	}{id, site.origins})
}

func (a *Agent) serveHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *Agent) serveReady(w http.ResponseWriter, r *http.Request) {
	switch {
	case a.closed.Load():
		writeError(w, a.unavailable(codeShuttingDown, "the queue is closed"))
	case a.sites.Load() == nil:
		writeError(w, a.unavailable(codeNotReady, "no site configuration received from the aggregators yet"))
	default:
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "agent_id": a.id})
	}
}
