//! The server's counters, gauges and latency histograms, held in a `prometheus-client` registry,
//! and their OpenMetrics text rendering for `GET /metrics`. Recording stays a relaxed atomic add
//! on the hot path: labelled series the server itself counts are resolved once, at construction.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The content type of what [`Metrics::render`] writes (OpenMetrics 1.0 text, ending `# EOF`).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A fixed-bucket latency histogram on plain atomics. prometheus-client's own `Histogram` takes a
/// mutex on every observation (bench/README.md, "/metrics on prometheus-client"), and two of
/// these are recorded per event on every worker thread, so this one only implements the
/// client's `EncodeMetric` and lets the client render it.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds in microseconds.
    bounds: &'static [u64],
    /// One per bound and one for +Inf; not cumulative (the encoder sums them).
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// From 10 µs to 10 s: rule evaluation sits at the bottom, event-to-push at the millisecond mark.
const LATENCY_BOUNDS: &[u64] = &[10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000];

impl Default for Histogram {
    fn default() -> Self {
        Histogram(Arc::new(Buckets { bounds: LATENCY_BOUNDS, counts: (0..=LATENCY_BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }))
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let h = &*self.0;
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = h.bounds.partition_point(|&b| b < us);
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        h.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.0.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        let bounds = h.bounds.iter().map(|&b| b as f64 / 1e6).chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        // The count is taken from the same reads as the buckets, so that it always equals the
        // +Inf bucket, as a scraper expects, even while observations land.
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One label whose values are known when the code is written (`outcome`, `why`).
type Fixed = [(&'static str, &'static str); 1];
/// The `code` label of refusals, whose values come from every path that refuses.
type Code = [(&'static str, String); 1];

/// Everything `/metrics` shows that the server itself counts (the persister keeps its own).
///
/// The fields are handles into `registry`: a `Counter` or `Gauge` is an `Arc` of one atomic, so
/// incrementing a field is what scraping reads. Series of a labelled family that the server
/// counts on every event (`accepted`, `duplicates`, ...) are resolved here once, because a
/// family lookup takes a lock and hashes the labels.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub actors: Gauge,
    /// Events made durable (counted when their writes are flushed, not when the rules take
    /// them).
    pub accepted: Counter,
    /// Events the rules took whose writes failed, and events refused because the store had
    /// failed: never acknowledged.
    pub storage_failed: Counter,
    pub duplicates: Counter,
    pub rejected: Counter,
    pub rate_limited: Counter,
    /// Every error answer to a client, on every path, by its code (`refused`).
    refusals: Family<Code, Counter>,
    pub unlocks: Counter,
    pub periods_closed: Counter,
    pub pushes: Counter,
    pub slow_closed: Counter,
    pub passivated: Counter,
    pub http_events: Counter,
    /// Cluster mode: the partitions this node serves now.
    pub partitions_served: Gauge,
    /// Cluster mode: sockets other nodes hold, attached to this node's actors.
    pub remote_sockets: Gauge,
    /// Cluster mode: changelog compactions made by this node.
    pub compactions: Counter,
    /// Cluster mode: partitions gained and rebuilt from this node's checkpoint (reading only
    /// the changelog after it), and from the start (its newest base and the batches after).
    pub rebuilt_from_checkpoint: Counter,
    pub rebuilt_from_start: Counter,
    /// Cluster mode: changelog batches (and base pieces) read by rebuilds.
    pub rebuild_batches: Counter,
    pub dead_letters: Counter,
    pub backfill_users: Counter,
    pub backfill_awards: Counter,
    pub backfill_running: Gauge,
    pub webhook_delivered: Counter,
    pub webhook_failed_attempts: Counter,
    pub webhook_given_up: Counter,
    pub webhook_set_aside: Counter,
    /// Request bodies cut off for missing their deadline (`--body-timeout-secs`).
    pub bodies_timed_out: Counter,
    /// Request bodies cut off for arriving below `--min-body-bytes-per-sec`.
    pub bodies_too_slow: Counter,
    /// Time in the rule core per accepted or refused event.
    pub rule_eval: Histogram,
    /// From an event's arrival to its ack and pushes being released (after the flush).
    pub event_to_push: Histogram,
}

/// Figures read at render time from the persister and the server's semaphores.
pub struct Sampled {
    pub batches: u64,
    pub jobs: u64,
    pub writes: u64,
    pub apply_seconds: f64,
    pub flush_seconds: f64,
    pub last_batch_jobs: u64,
    /// How long the oldest disk operation in progress has waited (0 when none is).
    pub disk_wait_seconds: f64,
    /// Socket events read and not yet answered, across the server.
    pub socket_events_in_flight: u64,
    /// Whether a write to the disk has failed (the store serves nothing until a restart).
    pub storage_failed: bool,
}

impl Sampled {
    /// These figures as a registry of constant metrics, made for one scrape. They belong to the
    /// persister and the semaphores, which are made after `Metrics` and live elsewhere, so they
    /// are read by the handler and written next to the server's own (a collector in
    /// `Metrics::registry` would have to hold the store).
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register("accolade_persist_batches", "Group commits.", ConstCounter::new(self.batches));
        r.register("accolade_persist_jobs", "Jobs (one per event or snapshot) committed.", ConstCounter::new(self.jobs));
        r.register("accolade_persist_writes", "Key writes committed.", ConstCounter::new(self.writes));
        r.register_with_unit("accolade_persist_apply", "Time inserting into sled.", Unit::Seconds, ConstCounter::new(self.apply_seconds));
        r.register_with_unit("accolade_persist_flush", "Time flushing sled to disk.", Unit::Seconds, ConstCounter::new(self.flush_seconds));
        r.register("accolade_persist_last_batch_jobs", "Jobs in the last group commit.", ConstGauge::new(self.last_batch_jobs as i64));
        r.register("accolade_socket_events_in_flight", "Socket events read and not yet answered (at most --socket-inflight-events).", ConstGauge::new(self.socket_events_in_flight as i64));
        r.register_with_unit("accolade_disk_wait", "How long the oldest group commit or flush in progress has waited for the disk (0: none in progress).", Unit::Seconds, ConstGauge::new(self.disk_wait_seconds));
        r.register("accolade_storage_failed", "1 once a write to the disk has failed: the store serves nothing, and the process exits after --write-failure-exit-secs.", ConstGauge::new(i64::from(self.storage_failed)));
        r
    }
}

impl Default for Metrics {
    /// Registers every metric under its rendered name. prometheus-client adds `_total` to
    /// counters and the unit's suffix (`_seconds`) itself, so a counter registered as
    /// `accolade_events` is scraped as `accolade_events_total`.
    fn default() -> Self {
        let mut r = Registry::default();
        // Registers `m` under `name` and hands back a handle on the same atomic.
        fn reg<M: prometheus_client::registry::Metric + Clone>(r: &mut Registry, name: &str, help: &str, m: M) -> M {
            r.register(name, help, m.clone());
            m
        }
        let events = Family::<Fixed, Counter>::default();
        let deliveries = Family::<Fixed, Counter>::default();
        let cut_off = Family::<Fixed, Counter>::default();
        let series = |f: &Family<Fixed, Counter>, label: &'static str, value: &'static str| f.get_or_create(&[(label, value)]).clone();
        let m = Metrics {
            connections: reg(&mut r, "accolade_connections", "Open WebSocket connections.", Gauge::default()),
            actors: reg(&mut r, "accolade_actors_active", "User actors in memory.", Gauge::default()),
            partitions_served: reg(&mut r, "accolade_cluster_partitions_served", "Cluster mode: partitions this node serves (0 standalone).", Gauge::default()),
            compactions: reg(&mut r, "accolade_cluster_compactions", "Cluster mode: partition changelogs this node compacted into a base.", Counter::default()),
            rebuilt_from_checkpoint: reg(&mut r, "accolade_cluster_rebuilds_from_checkpoint", "Cluster mode: partitions gained and rebuilt from this node's checkpoint, reading only the changelog after it.", Counter::default()),
            rebuilt_from_start: reg(&mut r, "accolade_cluster_rebuilds_from_start", "Cluster mode: partitions gained and rebuilt from their newest base and the batches after it.", Counter::default()),
            rebuild_batches: reg(&mut r, "accolade_cluster_rebuild_batches", "Cluster mode: changelog batches and base pieces read by this node's rebuilds.", Counter::default()),
            remote_sockets: reg(&mut r, "accolade_cluster_remote_sockets", "Cluster mode: sockets other nodes hold for users this node serves (counted in their nodes' accolade_connections).", Gauge::default()),
            accepted: series(&events, "outcome", "accepted"),
            duplicates: series(&events, "outcome", "duplicate"),
            rejected: series(&events, "outcome", "rejected"),
            rate_limited: series(&events, "outcome", "rate_limited"),
            storage_failed: series(&events, "outcome", "storage_failed"),
            refusals: reg(&mut r, "accolade_refusals", "Error answers to clients (socket and HTTP), by code.", Family::default()),
            http_events: reg(&mut r, "accolade_http_events", "Events received through POST /v1/events.", Counter::default()),
            dead_letters: reg(&mut r, "accolade_dead_letters", "Ingested events kept as dead letters.", Counter::default()),
            unlocks: reg(&mut r, "accolade_unlocks", "Badges awarded.", Counter::default()),
            periods_closed: reg(&mut r, "accolade_leaderboard_periods_closed", "Leaderboard periods archived and awarded.", Counter::default()),
            pushes: reg(&mut r, "accolade_pushes", "Messages written to sockets.", Counter::default()),
            webhook_delivered: series(&deliveries, "outcome", "delivered"),
            webhook_failed_attempts: series(&deliveries, "outcome", "failed_attempt"),
            webhook_given_up: series(&deliveries, "outcome", "given_up"),
            webhook_set_aside: reg(&mut r, "accolade_webhook_set_aside", "Webhook deliveries set aside after --webhook-hold-attempts failures, so that other users' notifications go first.", Counter::default()),
            bodies_timed_out: series(&cut_off, "why", "deadline"),
            bodies_too_slow: series(&cut_off, "why", "too_slow"),
            slow_closed: reg(&mut r, "accolade_slow_closed", "Connections closed for not reading.", Counter::default()),
            passivated: reg(&mut r, "accolade_passivated", "Idle actors persisted and stopped.", Counter::default()),
            backfill_running: reg(&mut r, "accolade_backfill_running", "Backfill jobs running.", Gauge::default()),
            backfill_users: reg(&mut r, "accolade_backfill_users", "Users re-evaluated by backfills.", Counter::default()),
            backfill_awards: reg(&mut r, "accolade_backfill_awards", "Badges awarded by backfills.", Counter::default()),
            rule_eval: Histogram::default(),
            event_to_push: Histogram::default(),
            registry: Registry::default(),
        };
        r.register("accolade_events", "Events by outcome (socket and HTTP).", events);
        // The same atomic as the `duplicate` outcome, under the name dashboards knew first.
        r.register("accolade_dedup_hits", "Events recognised as already counted.", m.duplicates.clone());
        r.register("accolade_webhook_deliveries", "Webhook delivery attempts by outcome (given_up: a delivery whose last attempt failed).", deliveries);
        r.register("accolade_request_bodies_cut_off", "HTTP request bodies cut off (answered 408, connection closed), by why.", cut_off);
        r.register_with_unit("accolade_rule_eval", "Time in the rule core per event.", Unit::Seconds, m.rule_eval.clone());
        r.register_with_unit("accolade_event_to_push", "From an event's arrival to its ack and pushes leaving the actor.", Unit::Seconds, m.event_to_push.clone());
        Metrics { registry: r, ..m }
    }
}

impl Metrics {
    /// Counts an error answer to a client by its code. Refusals are rare next to events, so a
    /// family lookup (a read lock and a hash of the code) is cheap enough, and any code a new
    /// path brings is counted without a new field.
    pub fn refused(&self, code: &str) {
        self.refusals.get_or_create(&[("code", code.to_string())]).inc();
    }

    /// How many error answers carried `code`.
    pub fn refusals(&self, code: &str) -> u64 {
        self.refusals.get(&[("code", code.to_string())]).map_or(0, |c| c.get())
    }

    /// Every metric as OpenMetrics text ([`CONTENT_TYPE`]): the server's own, then the figures
    /// sampled for this scrape, then `# EOF`.
    pub fn render(&self, p: &Sampled) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail; an encoder error would be a bug in a metric's
        // encoding, and a partial page is still worth more to an operator than none.
        let written = text::encode_registry(&mut out, &self.registry).and_then(|()| text::encode_registry(&mut out, &p.registry())).and_then(|()| text::encode_eof(&mut out));
        debug_assert!(written.is_ok(), "{written:?}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Sampled {
        Sampled { batches: 3, jobs: 5, writes: 9, apply_seconds: 0.5, flush_seconds: 1.25, last_batch_jobs: 2, disk_wait_seconds: 0.0, socket_events_in_flight: 0, storage_failed: false }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let m = Metrics::default();
        m.rule_eval.record(Duration::from_micros(5));
        m.rule_eval.record(Duration::from_micros(700));
        m.rule_eval.record(Duration::from_secs(60));
        let out = m.render(&idle());
        let sample = |name: &str| out.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_else(|| panic!("no {name} in\n{out}"));
        assert_eq!(sample("accolade_rule_eval_seconds_bucket{le=\"0.00001\"}"), "1");
        assert_eq!(sample("accolade_rule_eval_seconds_bucket{le=\"0.001\"}"), "2");
        assert_eq!(sample("accolade_rule_eval_seconds_bucket{le=\"10.0\"}"), "2");
        assert_eq!((sample("accolade_rule_eval_seconds_bucket{le=\"+Inf\"}"), sample("accolade_rule_eval_seconds_count")), ("3", "3"));
        assert_eq!(sample("accolade_rule_eval_seconds_sum").parse::<f64>().unwrap(), 60.000705);
        assert!(out.contains("# TYPE accolade_rule_eval_seconds histogram\n# UNIT accolade_rule_eval_seconds seconds\n"), "{out}");
        assert_eq!(m.rule_eval.count(), 3);
    }

    #[test]
    fn renders_todays_names_and_values_as_openmetrics() {
        let m = Metrics::default();
        m.accepted.inc_by(2);
        m.duplicates.inc();
        m.connections.inc();
        m.connections.inc();
        m.connections.dec();
        m.refused("too_large");
        m.refused("too_large");
        m.bodies_too_slow.inc();
        let out = m.render(&idle());
        for line in [
            "accolade_events_total{outcome=\"accepted\"} 2",
            "accolade_events_total{outcome=\"duplicate\"} 1",
            "accolade_events_total{outcome=\"rate_limited\"} 0",
            "accolade_dedup_hits_total 1",
            "accolade_connections 1",
            "accolade_refusals_total{code=\"too_large\"} 2",
            "accolade_request_bodies_cut_off_total{why=\"too_slow\"} 1",
            "accolade_webhook_deliveries_total{outcome=\"given_up\"} 0",
            "accolade_persist_batches_total 3",
            "accolade_persist_flush_seconds_total 1.25",
            "accolade_persist_last_batch_jobs 2",
            "accolade_storage_failed 0",
            "accolade_event_to_push_seconds_count 0",
            // The forms tests/cluster.rs and bench/partition-move.sh read.
            "accolade_cluster_partitions_served 0",
            "accolade_cluster_remote_sockets 0",
            "accolade_cluster_compactions_total 0",
            "accolade_cluster_rebuilds_from_checkpoint_total 0",
            "accolade_cluster_rebuilds_from_start_total 0",
            "accolade_cluster_rebuild_batches_total 0",
            "accolade_socket_events_in_flight 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing `{line}` in\n{out}");
        }
        assert_eq!(m.refusals("too_large"), 2);
        assert_eq!(m.refusals("never_said"), 0);
        // OpenMetrics: counters are typed under their family name, and the page ends once.
        assert!(out.contains("# TYPE accolade_events counter\n"), "{out}");
        assert!(out.ends_with("# EOF\n") && out.matches("# EOF").count() == 1, "{out}");
    }
}
