//! Community goals in this process (docs/teams.md, "Community goals"): each goal's total and
//! participants, rebuilt at start from the users' shares and added to by their actors once a
//! share is durable; each tenant's sockets, which get `community_progress` on a tick when a
//! goal moved; and the close at each goal's deadline, which writes its outcome and asks the
//! actors in memory to tell their users (the others are told when a socket of theirs next
//! connects). Goals are kept under their key (`id@ends`, `CommunityGoalDef::key`).
//!
//! Who owns what: a user's share is part of her records (her actor computes it from the rule
//! core's `Contributed` effects and writes it with the event); these totals are a sum over
//! those shares, kept by this process, like the leaderboards' rankings.

use crate::catalogues::Catalogues;
use crate::core::catalogue::CommunityGoalDef;
use crate::core::Millis;
use crate::protocol::{self, Frame};
use crate::store::{self, EventLog, Outcome, Store, StoreError};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// How long after its end a closed goal's outcome is still told to a participant who comes
/// back (and no longer than events are retained, since the record that she was told is found
/// in her log): one who comes back later is not told any more.
pub const TOLD_FOR: Millis = 30 * crate::core::value::DAY;

/// One goal's standing in this process.
#[derive(Debug, Default, Clone)]
struct Live {
    total: f64,
    participants: u64,
    /// The total last pushed to the tenant's sockets.
    pushed: Option<f64>,
    outcome: Option<Outcome>,
}

/// Where a goal stands, as the API and the actors read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub total: f64,
    pub participants: u64,
    pub outcome: Option<Outcome>,
}

#[derive(Default)]
pub struct Community {
    goals: DashMap<(String, String), Live>,
    /// Each tenant's sockets on this node: connection id -> its outbox.
    sockets: Mutex<HashMap<String, HashMap<u64, mpsc::WeakSender<Frame>>>>,
}

impl Community {
    /// Rebuilds every goal's total and participants from the users' shares, and the closed
    /// goals' outcomes. Blocking; run once, before any traffic.
    pub fn load(&self, store: &Store) -> Result<usize, StoreError> {
        let shares = store.community_shares()?;
        let n = shares.len();
        for (tenant, _, goal, share) in shares {
            let mut g = self.goals.entry((tenant, goal)).or_default();
            g.total += share;
            if share > 0.0 {
                g.participants += 1;
            }
        }
        for (tenant, goal, o) in store.community_outcomes()? {
            self.goals.entry((tenant, goal)).or_default().outcome = Some(o);
        }
        Ok(n)
    }

    /// A durable share: `amount` more toward the goal, from a user who had none before when
    /// `first`.
    pub fn add(&self, tenant: &str, goal: &str, amount: f64, first: bool) {
        let mut g = self.goals.entry((tenant.to_string(), goal.to_string())).or_default();
        g.total += amount;
        if first {
            g.participants += 1;
        }
    }

    pub fn standing(&self, tenant: &str, goal: &str) -> Standing {
        let g = self.goals.get(&(tenant.to_string(), goal.to_string())).map(|g| g.clone()).unwrap_or_default();
        Standing { total: g.total, participants: g.participants, outcome: g.outcome }
    }

    /// Whether the tenant has any goal's standing here (shares or an outcome).
    pub fn has_any(&self, tenant: &str) -> bool {
        self.goals.iter().any(|g| g.key().0 == tenant)
    }

    /// The tenant's goals that ended within `window` before `now`: (goal key, outcome).
    pub fn recent_outcomes(&self, tenant: &str, now: Millis, window: Millis) -> Vec<(String, Outcome)> {
        let mut out: Vec<(String, Outcome)> = self
            .goals
            .iter()
            .filter(|g| g.key().0 == tenant)
            .filter_map(|g| g.outcome.clone().filter(|o| o.ends.saturating_add(window) > now).map(|o| (g.key().1.clone(), o)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The `community_progress` frames of the tenant's open goals: what a socket is shown
    /// when it connects.
    pub fn progress_frames(&self, goals: &[CommunityGoalDef], tenant: &str, now: Millis) -> Vec<Frame> {
        goals
            .iter()
            .filter(|d| d.open(now))
            .map(|d| {
                let s = self.standing(tenant, &d.key);
                protocol::community_progress(d, s.total, s.participants)
            })
            .collect()
    }

    pub fn subscribe(&self, tenant: &str, conn: u64, tx: mpsc::WeakSender<Frame>) {
        self.sockets.lock().expect("sockets lock").entry(tenant.to_string()).or_default().insert(conn, tx);
    }

    pub fn unsubscribe(&self, tenant: &str, conn: u64) {
        let mut s = self.sockets.lock().expect("sockets lock");
        if let Some(m) = s.get_mut(tenant) {
            m.remove(&conn);
            if m.is_empty() {
                s.remove(tenant);
            }
        }
    }

    /// Pushes `community_progress` to every socket of a tenant with an open goal whose total
    /// moved since the last push. Called on a timer, which is the throttle.
    pub fn tick(&self, catalogues: &Catalogues, now: Millis) {
        let tenants: Vec<String> = self.sockets.lock().expect("sockets lock").keys().cloned().collect();
        for tenant in tenants {
            let Some(cat) = catalogues.current(&tenant) else { continue };
            let mut frames = Vec::new();
            for d in cat.community.iter().filter(|d| d.open(now)) {
                let mut g = self.goals.entry((tenant.clone(), d.key.to_string())).or_default();
                if g.pushed != Some(g.total) && g.total > 0.0 {
                    g.pushed = Some(g.total);
                    frames.push(protocol::community_progress(d, g.total, g.participants));
                }
            }
            if frames.is_empty() {
                continue;
            }
            // A socket whose session ended before its actor subscribed it is dropped here.
            let sockets: Vec<mpsc::WeakSender<Frame>> = {
                let mut s = self.sockets.lock().expect("sockets lock");
                let Some(m) = s.get_mut(&tenant) else { continue };
                m.retain(|_, w| w.strong_count() > 0);
                m.values().cloned().collect()
            };
            for tx in sockets.iter().filter_map(|w| w.upgrade()) {
                for f in &frames {
                    // A socket too slow to take a hint misses it; the next one says the same.
                    let _ = tx.try_send(f.clone());
                }
            }
        }
    }

    /// The goals whose end (plus `grace`) has passed and that are not closed yet.
    fn due(&self, catalogues: &Catalogues, now: Millis, grace: Millis) -> Vec<(String, CommunityGoalDef)> {
        let mut out = Vec::new();
        for tenant in catalogues.tenants() {
            let Some(cat) = catalogues.current(&tenant) else { continue };
            for d in cat.community.iter().filter(|d| d.ends.saturating_add(grace) <= now) {
                let closed = self.goals.get(&(tenant.clone(), d.key.to_string())).is_some_and(|g| g.outcome.is_some());
                if !closed {
                    out.push((tenant.clone(), d.clone()));
                }
            }
        }
        out
    }

    fn set_outcome(&self, tenant: &str, goal: &str, o: Outcome) {
        self.goals.entry((tenant.to_string(), goal.to_string())).or_default().outcome = Some(o);
    }
}

/// Closes community goals at their deadline and drives the progress pushes, on one timer.
pub struct Closer {
    pub community: Arc<Community>,
    /// Where the outcome is written (this node's sled: community goals are served standalone).
    pub log: Arc<dyn EventLog>,
    pub catalogues: Arc<Catalogues>,
    /// Asks the actors of a tenant's users in memory to tell their users the goals that
    /// closed (`UserMsg::CommunityClosed`); given by the server, so that this module, which
    /// the actors use, does not use them.
    pub tell: Box<dyn Fn(&str) + Send + Sync>,
}

impl Closer {
    /// Closes one goal: its outcome is written from the total of the durable shares, then the
    /// actors of the tenant's users in memory are asked to tell their users (a participant
    /// whose actor is not in memory is told when it next starts). Safe to run again: a goal
    /// with an outcome is not due.
    async fn close(&self, tenant: &str, d: &CommunityGoalDef, now: Millis) -> Result<(), String> {
        let s = self.community.standing(tenant, &d.key);
        let o = Outcome { total: s.total, target: d.target, reached: s.total >= d.target, participants: s.participants, ends: d.ends, closed_at: now };
        let (tx, rx) = oneshot::channel();
        let w = store::writes::community_outcome(tenant, &d.key, &o);
        self.log.append(tenant, "\u{1}community", vec![w], Box::new(move |r| drop(tx.send(r)))).map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the store stopped".to_string())?.map_err(|e| e.to_string())?;
        tracing::info!(tenant, goal = %d.id, total = o.total, target = o.target, reached = o.reached, participants = o.participants, "community goal closed");
        self.community.set_outcome(tenant, &d.key, o);
        (self.tell)(tenant);
        Ok(())
    }

    /// Every `every` (`--community-tick-ms`) until shutdown: closes the goals due (`grace`
    /// after their end, for events received before it to become durable) and pushes progress.
    pub async fn run(self, every: std::time::Duration, grace: Millis, stop: watch::Receiver<bool>) {
        crate::clock::every(every, stop, || async {
            let now = crate::clock::now_ms();
            for (tenant, d) in self.community.due(&self.catalogues, now, grace) {
                if let Err(e) = self.close(&tenant, &d, now).await {
                    tracing::warn!(tenant, goal = %d.id, error = %e, "closing a community goal failed; retrying");
                }
            }
            self.community.tick(&self.catalogues, now);
        })
        .await
    }
}
