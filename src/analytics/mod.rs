//! Analytics (issue 25, docs/analytics.md): each tenant's figures in memory (`Analytics`, one
//! `TenantAnalytics` per tenant), rebuilt at start from the users' analytics records and their
//! log tails (`rebuild`), and added to by the user actors once their writes are durable; each
//! tenant's health counters since start; the steps analytics reads from a log record (`step_of`)
//! and from an actor's effects (`step_of_effects`). The figures themselves are pure
//! (`figures.rs`); the export's rows are in `export.rs`.

pub mod export;
pub mod figures;

pub use figures::{Contribution, Figures, Step, Unlocked, UserFacts};

use crate::catalogues::Catalogues;
use crate::core::{Effect, Millis};
use crate::store::{EventLog, Store, StoreError, StoredEvent};
use dashmap::DashMap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every tenant's analytics in this process.
#[derive(Default)]
pub struct Analytics {
    tenants: DashMap<String, Arc<TenantAnalytics>>,
}

/// One tenant's figures and health. Actors hold it (looked up once, at their start), so the
/// hot path pays no map lookup.
#[derive(Default)]
pub struct TenantAnalytics {
    figures: Mutex<Figures>,
    pub health: Health,
}

impl Analytics {
    pub fn tenant(&self, tenant: &str) -> Arc<TenantAnalytics> {
        if let Some(t) = self.tenants.get(tenant) {
            return t.clone();
        }
        self.tenants.entry(tenant.to_string()).or_default().clone()
    }

    /// Rebuilds every tenant's figures from what the store holds: each user's analytics
    /// record, then the log records after it. Run once, before any traffic. Returns the
    /// number of users read.
    pub fn rebuild(&self, store: &Store, catalogues: &Catalogues) -> Result<u64, StoreError> {
        let mut n = 0;
        for (tenant, user) in store.all_users()? {
            // A team's log repeats its members' events: the figures are the users'.
            if crate::core::catalogue::team_of(&user).is_some() {
                continue;
            }
            let Some(cat) = catalogues.current(&tenant) else { continue };
            let tz = cat.settings.default_timezone;
            let day = |at: Millis| crate::core::calendar::local_day(at, tz).0;
            // A user whose records cannot be read is left out of the figures, not the server
            // stopped: her actor will not start either, and says why (docs/reliability.md).
            let contributions = match load(store, &tenant, &user, day) {
                Ok((_, c)) => c,
                Err(e) => {
                    tracing::warn!(%tenant, %user, error = %e, "analytics: user left out of the figures, her records cannot be read");
                    continue;
                }
            };
            let t = self.tenant(&tenant);
            let mut f = t.figures.lock().expect("figures lock");
            for c in &contributions {
                f.add(c);
            }
            n += 1;
        }
        Ok(n)
    }
}

impl TenantAnalytics {
    /// Adds a durable contribution.
    pub fn add(&self, c: &Contribution) {
        if !c.is_empty() {
            self.figures.lock().expect("figures lock").add(c);
        }
    }

    /// A copy of the figures, to answer from without holding the lock.
    pub fn figures(&self) -> Figures {
        self.figures.lock().expect("figures lock").clone()
    }

    /// Runs `f` on the figures under the lock: for answers that read a small part of them.
    pub fn read<R>(&self, f: impl FnOnce(&Figures) -> R) -> R {
        f(&self.figures.lock().expect("figures lock"))
    }
}

/// A user's analytics facts as the store holds them: the record, then the log records after
/// it folded in; with what each adds to the figures (the record as a whole first). Blocking.
pub fn load(log: &dyn EventLog, tenant: &str, user: &str, day: impl Fn(Millis) -> i32) -> Result<(UserFacts, Vec<Contribution>), StoreError> {
    let hash = figures::user_hash(tenant, user);
    let mut facts: UserFacts = match log.analytics_record(tenant, user)? {
        Some(bytes) => crate::store::decode(tenant.as_bytes(), &bytes)?,
        None => UserFacts::default(),
    };
    let mut out = vec![facts.whole(hash, &day)];
    for (seq, e) in log.events_after(tenant, user, facts.seq, usize::MAX)? {
        if let Some(step) = step_of(&e) {
            out.push(facts.fold(seq, &step, hash, &day));
        }
        facts.seq = seq;
    }
    Ok((facts, out))
}

/// What a stored log record says for analytics: a client event, or a record the server made
/// with the unlocks it pushed; nothing for a duplicate by fingerprint.
pub fn step_of(e: &StoredEvent) -> Option<Step> {
    let t = e.event.event_type.as_str();
    if t == crate::records::DUPLICATE_EVENT {
        return None;
    }
    let occurred_at = (!t.starts_with("accolade.")).then_some(e.event.occurred_at);
    let unlocks = e
        .pushes
        .iter()
        .filter_map(|(_, f)| crate::protocol::unlock_seen(f))
        .map(|(badge, at, event_id)| Unlocked { badge, at, backfilled: event_id.starts_with("backfill:") })
        .collect();
    Some(Step { occurred_at, unlocks })
}

/// The step of a change the actor made, from its effects: the unlocks the plan pushes (or,
/// for a silent backfill, would have pushed), which are those of badges in the catalogue.
pub fn step_of_effects(occurred_at: Option<Millis>, fx: &[Effect], cat: &crate::core::Catalogue, backfilled: bool) -> Step {
    let unlocks = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Unlock { badge, at, .. } if cat.badge(badge).is_some() => Some(Unlocked { badge: badge.to_string(), at: *at, backfilled }),
            _ => None,
        })
        .collect();
    Step { occurred_at, unlocks }
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// Minutes of events per minute kept.
const MINUTES: usize = 60;
/// Latency buckets: two per doubling of microseconds, from 1 µs to about 2 hours.
const LATENCY_BUCKETS: usize = 66;

/// A tenant's health counters since the process started: lock-free, as they are counted per
/// event. Each node counts its own; the cluster's figure is their sum (docs/analytics.md).
pub struct Health {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    rejected: Mutex<BTreeMap<String, u64>>,
    /// Per slot (minute mod 60): the minute in the upper 32 bits, its count in the lower.
    minutes: [AtomicU64; MINUTES],
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for Health {
    fn default() -> Health {
        Health {
            accepted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rejected: Mutex::new(BTreeMap::new()),
            minutes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Health {
    /// An event accepted (durable) at `now`.
    pub fn accepted(&self, now: Millis) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let minute = (now / 60_000) as u64 & 0xffff_ffff;
        let slot = &self.minutes[minute as usize % MINUTES];
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(if v >> 32 == minute { v + 1 } else { (minute << 32) | 1 })
        });
    }

    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, code: &str) {
        *self.rejected.lock().expect("health lock").entry(code.to_string()).or_default() += 1;
    }

    /// An event's time from arrival to its answer and pushes leaving the actor.
    pub fn latency(&self, d: std::time::Duration) {
        let us = d.as_micros().max(1) as f64;
        let b = ((us.log2() * 2.0) as usize).min(LATENCY_BUCKETS - 1);
        self.latency[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Events accepted in each of the `n` whole minutes before `now`'s, oldest first, and in
    /// the minute in progress last.
    pub fn per_minute(&self, now: Millis, n: usize) -> Vec<u64> {
        let current = (now / 60_000) as u64;
        let n = n.min(MINUTES - 1);
        (0..=n as u64)
            .rev()
            .map(|back| {
                let m = (current - back) & 0xffff_ffff;
                let v = self.minutes[m as usize % MINUTES].load(Ordering::Relaxed);
                if v >> 32 == m { v & 0xffff_ffff } else { 0 }
            })
            .collect()
    }

    pub fn rejected_by_code(&self) -> BTreeMap<String, u64> {
        self.rejected.lock().expect("health lock").clone()
    }

    /// The bucket holding the `q` quantile of the latencies, in milliseconds: (low, high).
    pub fn latency_quantile(&self, q: f64) -> Option<(f64, f64)> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let at = |i: usize| 2f64.powf(i as f64 / 2.0) / 1000.0;
                return Some((at(b), at(b + 1)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events per minute: each minute's count in its slot, an hour-old slot read as zero.
    #[test]
    fn health_counts_events_per_minute_and_forgets_old_minutes() {
        let h = Health::default();
        let t0: Millis = 1_800_000_000_000 - 1_800_000_000_000 % 60_000;
        for _ in 0..3 {
            h.accepted(t0);
        }
        h.accepted(t0 + 60_000);
        assert_eq!(h.per_minute(t0 + 60_000, 2), vec![0, 3, 1]);
        // An hour on, the same slots hold old minutes: not counted.
        assert_eq!(h.per_minute(t0 + 60 * 60_000, 1), vec![0, 0]);
        h.rejected("too_late");
        h.rejected("too_late");
        assert_eq!(h.rejected_by_code().get("too_late"), Some(&2));
        h.latency(std::time::Duration::from_millis(3));
        let (lo, hi) = h.latency_quantile(0.5).unwrap();
        assert!(lo <= 3.0 && 3.0 < hi, "{lo} {hi}");
    }
}
