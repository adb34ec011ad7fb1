package agent

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sightline/sightline/agent/queue"
)

// metrics are the agent's Prometheus series, all prefixed sightline_agent_.
type metrics struct {
	requests        *prometheus.CounterVec // collect requests by HTTP status
	rejected        *prometheus.CounterVec // collect requests refused, by error code
	eventsAccepted  prometheus.Counter
	batchesInFlight prometheus.Gauge
	batchesSealed   prometheus.Counter
	batchesAcked    prometheus.Counter
	eventsAcked     prometheus.Counter
	forwardRetries  prometheus.Counter
	forwardErrors   prometheus.Counter
	shedBytes       prometheus.Counter
	shedEvents      prometheus.Counter
	appendSeconds   prometheus.Histogram
	quarantined     prometheus.Counter
	configErrors    prometheus.Counter

	unregister func() // removes every series from the registry
}

func newMetrics(reg prometheus.Registerer, q *queue.Queue) (*metrics, error) {
	const ns, sub = "sightline", "agent"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Collect requests answered, by HTTP status code."}, []string{"code"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "rejected_total",
			Help: "Collect requests refused, by error code."}, []string{"reason"}),
		eventsAccepted: counter("events_accepted_total", "Events durably queued (answered 202)."),
		batchesInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "batches_in_flight",
			Help: "Batches sent and not yet answered."}),
		batchesSealed:  counter("batches_sealed_total", "Batches sealed from queued records."),
		batchesAcked:   counter("batches_acked_total", "Batches acknowledged by the aggregator and deleted."),
		eventsAcked:    counter("events_acked_total", "Events in acknowledged batches."),
		forwardRetries: counter("forward_retries_total", "Batch sends that will be retried after backoff."),
		forwardErrors:  counter("forward_errors_total", "Batch sends that failed (transport error or aggregator unavailable)."),
		shedBytes:      counter("shed_bytes_total", "Approximate bytes of rrweb events shed because the queue passed shed_fraction of its budget."),
		shedEvents:     counter("shed_events_total", "rrweb events shed because the queue passed shed_fraction of its budget."),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "append_seconds",
			Help:    "Time from handing a request to the queue until its synced commit.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1}}),
		quarantined:  counter("quarantined_batches_total", "Batches the aggregator rejected permanently, kept as dead letters."),
		configErrors: counter("config_fetch_errors_total", "Failed site config fetches."),
	}
	collectors := []prometheus.Collector{
		m.requests, m.rejected, m.eventsAccepted, m.batchesInFlight, m.batchesSealed, m.batchesAcked,
		m.eventsAcked, m.forwardRetries, m.forwardErrors, m.shedBytes, m.shedEvents, m.appendSeconds,
		m.quarantined, m.configErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_bytes",
			Help: "Bytes of queued records and batches."}, func() float64 { return float64(q.Bytes()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_events",
			Help: "Events queued and not yet acknowledged."}, func() float64 { return float64(q.Events()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "queue_budget_bytes",
			Help: "The queue's disk budget (disk_budget)."}, func() float64 { return float64(q.Budget()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "fsyncs_total",
			Help: "Synced queue commits; group commit makes this far lower than requests."}, func() float64 { return float64(q.Fsyncs()) }),
	}
	for i, c := range collectors {
		if err := reg.Register(c); err != nil {
			// Leave the registry as it was, so a second New can succeed.
			for _, r := range collectors[:i] {
				reg.Unregister(r)
			}
			return nil, err
		}
	}
	m.unregister = func() {
		for _, c := range collectors {
			reg.Unregister(c)
		}
	}
	return m, nil
}
