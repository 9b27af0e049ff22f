//! The server's counters, gauges and latency histograms, and their Prometheus text rendering
//! for `GET /metrics`. Plain atomics: recording is a few relaxed adds on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket latency histogram (cumulative buckets are computed when rendering).
pub struct Histogram {
    /// Upper bounds in microseconds.
    bounds: &'static [u64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// From 10 µs to 10 s: rule evaluation sits at the bottom, event-to-push at the millisecond mark.
const LATENCY_BOUNDS: &[u64] = &[10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000];

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bounds: LATENCY_BOUNDS, counts: (0..=LATENCY_BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(), sum_micros: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = self.bounds.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", *b as f64 / 1e6);
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Everything `/metrics` shows that the server itself counts (the persister keeps its own).
#[derive(Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub actors: AtomicU64,
    /// Events made durable (counted when their writes are flushed, not when the rules take
    /// them).
    pub accepted: AtomicU64,
    /// Events the rules took whose writes failed, and events refused because the store had
    /// failed: never acknowledged.
    pub storage_failed: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Every error answer to a client, on every path, by its code (`refused`).
    refusals: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    pub unlocks: AtomicU64,
    pub periods_closed: AtomicU64,
    pub pushes: AtomicU64,
    pub slow_closed: AtomicU64,
    pub passivated: AtomicU64,
    pub http_events: AtomicU64,
    /// Cluster mode: the partitions this node serves now.
    pub partitions_served: AtomicU64,
    /// Cluster mode: sockets other nodes hold, attached to this node's actors.
    pub remote_sockets: AtomicU64,
    /// Cluster mode: changelog compactions made by this node.
    pub compactions: AtomicU64,
    pub dead_letters: AtomicU64,
    pub backfill_users: AtomicU64,
    pub backfill_awards: AtomicU64,
    pub backfill_running: AtomicU64,
    pub webhook_delivered: AtomicU64,
    pub webhook_failed_attempts: AtomicU64,
    pub webhook_given_up: AtomicU64,
    pub webhook_set_aside: AtomicU64,
    /// Request bodies cut off for missing their deadline (`--body-timeout-secs`).
    pub bodies_timed_out: AtomicU64,
    /// Request bodies cut off for arriving below `--min-body-bytes-per-sec`.
    pub bodies_too_slow: AtomicU64,
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

impl Metrics {
    /// Counts an error answer to a client by its code. Refusals are rare next to events, so a
    /// lock is cheap enough, and any code a new path brings is counted without a new field.
    pub fn refused(&self, code: &str) {
        let mut m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                m.insert(code.to_string(), 1);
            }
        }
    }

    /// How many error answers carried `code`.
    pub fn refusals(&self, code: &str) -> u64 {
        self.refusals.lock().unwrap_or_else(|e| e.into_inner()).get(code).copied().unwrap_or(0)
    }

    pub fn render(&self, p: &Sampled) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut line = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        line("accolade_connections", "gauge", "Open WebSocket connections.", &[("", g(&self.connections).to_string())]);
        line("accolade_actors_active", "gauge", "User actors in memory.", &[("", g(&self.actors).to_string())]);
        line("accolade_cluster_partitions_served", "gauge", "Cluster mode: partitions this node serves (0 standalone).", &[("", g(&self.partitions_served).to_string())]);
        line("accolade_cluster_compactions_total", "counter", "Cluster mode: partition changelogs this node compacted into a base.", &[("", g(&self.compactions).to_string())]);
        line("accolade_cluster_remote_sockets", "gauge", "Cluster mode: sockets other nodes hold for users this node serves (counted in their nodes' accolade_connections).", &[("", g(&self.remote_sockets).to_string())]);
        line(
            "accolade_events_total",
            "counter",
            "Events by outcome (socket and HTTP).",
            &[
                ("{outcome=\"accepted\"}", g(&self.accepted).to_string()),
                ("{outcome=\"duplicate\"}", g(&self.duplicates).to_string()),
                ("{outcome=\"rejected\"}", g(&self.rejected).to_string()),
                ("{outcome=\"rate_limited\"}", g(&self.rate_limited).to_string()),
                ("{outcome=\"storage_failed\"}", g(&self.storage_failed).to_string()),
            ],
        );
        let refusals: Vec<(String, String)> = self.refusals.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(c, n)| (format!("{{code=\"{c}\"}}"), n.to_string())).collect();
        let refusals: Vec<(&str, String)> = refusals.iter().map(|(l, n)| (l.as_str(), n.clone())).collect();
        line("accolade_refusals_total", "counter", "Error answers to clients (socket and HTTP), by code.", &refusals);
        line("accolade_dedup_hits_total", "counter", "Events recognised as already counted.", &[("", g(&self.duplicates).to_string())]);
        line("accolade_http_events_total", "counter", "Events received through POST /v1/events.", &[("", g(&self.http_events).to_string())]);
        line("accolade_dead_letters_total", "counter", "Ingested events kept as dead letters.", &[("", g(&self.dead_letters).to_string())]);
        line("accolade_unlocks_total", "counter", "Badges awarded.", &[("", g(&self.unlocks).to_string())]);
        line("accolade_leaderboard_periods_closed_total", "counter", "Leaderboard periods archived and awarded.", &[("", g(&self.periods_closed).to_string())]);
        line("accolade_pushes_total", "counter", "Messages written to sockets.", &[("", g(&self.pushes).to_string())]);
        line(
            "accolade_webhook_deliveries_total",
            "counter",
            "Webhook delivery attempts by outcome (given_up: a delivery whose last attempt failed).",
            &[
                ("{outcome=\"delivered\"}", g(&self.webhook_delivered).to_string()),
                ("{outcome=\"failed_attempt\"}", g(&self.webhook_failed_attempts).to_string()),
                ("{outcome=\"given_up\"}", g(&self.webhook_given_up).to_string()),
            ],
        );
        line("accolade_webhook_set_aside_total", "counter", "Webhook deliveries set aside after --webhook-hold-attempts failures, so that other users' notifications go first.", &[("", g(&self.webhook_set_aside).to_string())]);
        line(
            "accolade_request_bodies_cut_off_total",
            "counter",
            "HTTP request bodies cut off (answered 408, connection closed), by why.",
            &[("{why=\"deadline\"}", g(&self.bodies_timed_out).to_string()), ("{why=\"too_slow\"}", g(&self.bodies_too_slow).to_string())],
        );
        line("accolade_slow_closed_total", "counter", "Connections closed for not reading.", &[("", g(&self.slow_closed).to_string())]);
        line("accolade_passivated_total", "counter", "Idle actors persisted and stopped.", &[("", g(&self.passivated).to_string())]);
        line("accolade_persist_batches_total", "counter", "Group commits.", &[("", p.batches.to_string())]);
        line("accolade_persist_jobs_total", "counter", "Jobs (one per event or snapshot) committed.", &[("", p.jobs.to_string())]);
        line("accolade_persist_writes_total", "counter", "Key writes committed.", &[("", p.writes.to_string())]);
        line("accolade_persist_apply_seconds_total", "counter", "Time inserting into sled.", &[("", p.apply_seconds.to_string())]);
        line("accolade_persist_flush_seconds_total", "counter", "Time flushing sled to disk.", &[("", p.flush_seconds.to_string())]);
        line("accolade_persist_last_batch_jobs", "gauge", "Jobs in the last group commit.", &[("", p.last_batch_jobs.to_string())]);
        line("accolade_socket_events_in_flight", "gauge", "Socket events read and not yet answered (at most --socket-inflight-events).", &[("", p.socket_events_in_flight.to_string())]);
        line("accolade_disk_wait_seconds", "gauge", "How long the oldest group commit or flush in progress has waited for the disk (0: none in progress).", &[("", p.disk_wait_seconds.to_string())]);
        line("accolade_storage_failed", "gauge", "1 once a write to the disk has failed: the store serves nothing, and the process exits after --write-failure-exit-secs.", &[("", u8::from(p.storage_failed).to_string())]);
        line("accolade_backfill_running", "gauge", "Backfill jobs running.", &[("", g(&self.backfill_running).to_string())]);
        line("accolade_backfill_users_total", "counter", "Users re-evaluated by backfills.", &[("", g(&self.backfill_users).to_string())]);
        line("accolade_backfill_awards_total", "counter", "Badges awarded by backfills.", &[("", g(&self.backfill_awards).to_string())]);
        self.rule_eval.render(&mut out, "accolade_rule_eval_seconds", "Time in the rule core per event.");
        self.event_to_push.render(&mut out, "accolade_event_to_push_seconds", "From an event's arrival to its ack and pushes leaving the actor.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.record(Duration::from_micros(5));
        h.record(Duration::from_micros(700));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n") && out.contains("x_count 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
