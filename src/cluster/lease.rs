//! Who owns which partition: the pure state machine behind the leases, with time passed in.
//! It reads what the nodes and leases buckets say, decides which lease to create, take over or
//! give up, and says which partitions this node may act for; the driver (`cluster/node.rs`)
//! performs its actions on NATS and feeds the results back.
//!
//! No clock is shared between machines. A node takes itself for alive only until a lease, less
//! one heartbeat, after it *sent* its newest acknowledged heartbeat. Another node takes it for
//! dead only when its heartbeat has not changed for a whole lease *as the observer measures
//! it*, and only by a view it knows is current: the observer's own heartbeat, sent a lease
//! after it last saw the other's change, must have come back through the same watch (which
//! delivers in order, so nothing the other stored before it can still be on the way). A view
//! that lags, because the observer's connection moved to another NATS server, say, never makes
//! a live node look dead. The two intervals can then overlap only if the clocks run at rates
//! that differ by more than a heartbeat in a lease. A lease entry's revision changes only
//! when its owner changes: it is the fencing token that `cluster/log.rs` writes into each
//! partition's log.

use super::partition::{preferred, PARTITIONS};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a silent node keeps its partitions, and how often a node says it is alive.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub lease: Duration,
    pub heartbeat: Duration,
}

impl Timing {
    /// A heartbeat a quarter of the lease: three may be lost before the lease runs out.
    pub fn for_lease(lease: Duration) -> Timing {
        Timing { lease, heartbeat: lease / 4 }
    }
}

/// A lease as the leases bucket shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub revision: u64,
}

/// What the driver should do on NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the partition's lease, which nobody holds.
    Create(u16),
    /// Take over the lease of a holder taken for dead: an update that names the revision seen.
    Take { partition: u16, revision: u64 },
    /// Give up a held lease for the node that should own it: a delete naming the revision.
    Release { partition: u16, revision: u64 },
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Created or taken: this node holds the lease at this revision.
    Holding(u64),
    /// Released as asked.
    Released,
    /// Refused because the lease had changed: what the bucket says comes through the watch.
    Refused,
    /// NATS did not answer: tried again on a later tick.
    Failed,
}

#[derive(Debug)]
struct Observed<T> {
    value: T,
    /// When this node first saw this value (a node's heartbeat revision, a lease's revision).
    since: Instant,
}

/// One node's view of the partition leases.
#[derive(Debug)]
pub struct Leases {
    me: String,
    timing: Timing,
    started: Instant,
    /// When the newest heartbeat the bucket acknowledged was sent.
    heartbeat_sent: Option<Instant>,
    /// When the newest of this node's heartbeats that came back through the nodes watch was
    /// sent: the nodes view is current up to at least then.
    view_current: Option<Instant>,
    /// Other nodes' heartbeat revisions, of the nodes present.
    nodes: BTreeMap<String, Observed<u64>>,
    /// The newest revision seen of each node's key, present or deleted.
    node_revisions: BTreeMap<String, u64>,
    /// The newest revision seen of each partition's lease key, held or deleted.
    revisions: BTreeMap<u16, u64>,
    leases: BTreeMap<u16, Observed<Lease>>,
    /// The partitions this node acts for, with the lease revision that fences its writes.
    owned: BTreeMap<u16, u64>,
    /// Partitions with an action in flight, not decided again until it ends, and whether
    /// that action gains the partition (a create or a take) rather than releases it.
    pending: BTreeMap<u16, bool>,
    /// Gains that failed in a row (NATS not answering, or the partition log refusing the
    /// claim), counted once per hold.
    gain_failures: u32,
    /// After a failed gain, no partition is gained before this; then only a few at a time
    /// (`PROBES`) until one succeeds.
    gains_held_until: Option<Instant>,
}

/// How many gains may be in flight at once while gains have been failing: enough to find out
/// that the partition log is back, few enough that a log electing its leader is not asked for
/// every partition's lease and claim on every tick (two nodes did some 2,000 of those in the
/// 5 s after a NATS server died, each one a lease created and deleted again).
pub const PROBES: usize = 4;

impl Leases {
    pub fn new(me: impl Into<String>, timing: Timing, now: Instant) -> Leases {
        Leases {
            me: me.into(),
            timing,
            started: now,
            heartbeat_sent: None,
            view_current: None,
            nodes: BTreeMap::new(),
            node_revisions: BTreeMap::new(),
            revisions: BTreeMap::new(),
            leases: BTreeMap::new(),
            owned: BTreeMap::new(),
            pending: BTreeMap::new(),
            gain_failures: 0,
            gains_held_until: None,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The partitions this node may act for, each with its lease revision.
    pub fn owned(&self) -> &BTreeMap<u16, u64> {
        &self.owned
    }

    /// The bucket acknowledged a heartbeat sent at `sent`.
    pub fn heartbeat_stored(&mut self, sent: Instant) {
        if self.heartbeat_sent.is_none_or(|s| sent > s) {
            self.heartbeat_sent = Some(sent);
        }
    }

    /// The nodes watch brought back this node's own heartbeat sent at `sent`. It was stored,
    /// as surely as if its acknowledgement had come: an acknowledgement lost on the way (a
    /// connection that moved to another server) does not make a node whose heartbeats the
    /// others see stop acting for good.
    pub fn own_heartbeat_seen(&mut self, sent: Instant) {
        if self.view_current.is_none_or(|s| sent > s) {
            self.view_current = Some(sent);
        }
        self.heartbeat_stored(sent);
    }

    /// The nodes bucket shows `node`'s heartbeat at `revision`, or (`present` false) that the
    /// node left. The watch may repeat an older value after a newer one was learnt from an
    /// acknowledgement: revisions older than the newest known are ignored.
    pub fn node_seen(&mut self, node: &str, revision: u64, present: bool, now: Instant) {
        if node == self.me || self.node_revisions.get(node).is_some_and(|&r| revision < r) {
            return;
        }
        self.node_revisions.insert(node.to_string(), revision);
        if !present {
            self.nodes.remove(node);
        } else if self.nodes.get(node).is_none_or(|o| o.value != revision) {
            self.nodes.insert(node.to_string(), Observed { value: revision, since: now });
        }
    }

    /// The leases bucket shows `partition`'s lease held by `holder` at `revision`, or (`None`)
    /// that nobody holds it since `revision`. Older revisions than the newest known are ignored.
    pub fn lease_seen(&mut self, partition: u16, holder: Option<&str>, revision: u64, now: Instant) {
        if self.revisions.get(&partition).is_some_and(|&r| revision < r) {
            return;
        }
        self.revisions.insert(partition, revision);
        match holder {
            None => {
                self.leases.remove(&partition);
            }
            Some(h) => {
                let l = Lease { holder: h.to_string(), revision };
                if self.leases.get(&partition).is_none_or(|o| o.value != l) {
                    self.leases.insert(partition, Observed { value: l, since: now });
                }
            }
        }
        // A lease that now names another holder or revision is not ours any more.
        if let Some(&rev) = self.owned.get(&partition)
            && (rev != revision || holder != Some(self.me.as_str()))
        {
            self.owned.remove(&partition);
        }
    }

    /// An action this node asked for ended.
    pub fn done(&mut self, partition: u16, outcome: Outcome, now: Instant) {
        let gain = self.pending.remove(&partition).unwrap_or(false);
        match outcome {
            Outcome::Failed if gain => {
                // Failures that were already in flight when the hold began do not lengthen it:
                // a burst of them is one failure of the log, not many.
                if self.gains_held_until.is_none_or(|t| now >= t) {
                    self.gain_failures = self.gain_failures.saturating_add(1);
                    self.gains_held_until = Some(now + self.gain_hold());
                }
            }
            Outcome::Holding(_) => {
                self.gain_failures = 0;
                self.gains_held_until = None;
            }
            _ => {}
        }
        match outcome {
            Outcome::Holding(revision) => {
                // The watch already showed a later change (another node took it at once).
                if self.revisions.get(&partition).is_some_and(|&r| r > revision) {
                    return;
                }
                self.revisions.insert(partition, revision);
                self.leases.insert(partition, Observed { value: Lease { holder: self.me.clone(), revision }, since: now });
                // A node that was paused while its action was in flight may no longer act: its
                // lease will be taken over, or it takes it again once it is alive.
                if self.alive(now) {
                    self.owned.insert(partition, revision);
                }
            }
            Outcome::Released => {
                self.leases.remove(&partition);
            }
            Outcome::Refused | Outcome::Failed => {}
        }
    }

    /// How long gains wait after the `gain_failures`th failure in a row: a heartbeat, doubled
    /// per failure, at most a lease.
    fn gain_hold(&self) -> Duration {
        let doublings = self.gain_failures.saturating_sub(1).min(16);
        (self.timing.heartbeat * (1u32 << doublings)).min(self.timing.lease)
    }

    /// Whether this node may act: its newest stored heartbeat was sent less than a lease, less
    /// one heartbeat of margin, ago.
    pub fn alive(&self, now: Instant) -> bool {
        self.heartbeat_sent.is_some_and(|s| now < s + self.timing.lease.saturating_sub(self.timing.heartbeat))
    }

    /// Whether this node's view of the nodes is current a lease after `since`: then a node
    /// whose heartbeat did not change after `since` is dead.
    fn silent_since(&self, since: Instant) -> bool {
        self.view_current.is_some_and(|v| v >= since + self.timing.lease)
    }

    /// Whether `node` counts as alive: for this node, `alive`; for another, present in the
    /// nodes bucket and not silent for a lease.
    fn live(&self, node: &str, now: Instant) -> bool {
        if node == self.me {
            return self.alive(now);
        }
        self.nodes.get(node).is_some_and(|o| !self.silent_since(o.since))
    }

    /// The nodes that count as alive now, this one included while it is.
    pub fn members(&self, now: Instant) -> Vec<&str> {
        let mut m: Vec<&str> = self.nodes.keys().map(String::as_str).filter(|n| self.live(n, now)).collect();
        if self.alive(now) {
            m.push(&self.me);
        }
        m.sort_unstable();
        m
    }

    /// Decides what to do now. A node that is not alive owns nothing and asks for nothing.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        if !self.alive(now) {
            self.owned.clear();
            return Vec::new();
        }
        let members: Vec<String> = self.members(now).into_iter().map(str::to_string).collect();
        let mut actions = Vec::new();
        let mut give_up = Vec::new();
        // Gains this tick may start: none while held, a few probes after failures, else all.
        let mut gains_allowed = if self.gains_held_until.is_some_and(|t| now < t) {
            0
        } else if self.gain_failures > 0 {
            PROBES.saturating_sub(self.pending.values().filter(|&&g| g).count())
        } else {
            usize::MAX
        };
        for p in 0..PARTITIONS {
            if self.pending.contains_key(&p) {
                continue;
            }
            let want = preferred(p, members.iter().map(String::as_str));
            let mine = want == Some(self.me.as_str());
            let action = match self.leases.get(&p) {
                None => mine.then_some(Action::Create(p)),
                Some(o) if o.value.holder == self.me => {
                    let rev = o.value.revision;
                    if !mine {
                        // Hand the partition to its preferred node: stop acting first, then
                        // release, so two nodes never act for it at once.
                        give_up.push(p);
                        Some(Action::Release { partition: p, revision: rev })
                    } else if self.owned.get(&p) != Some(&rev) {
                        // Held under this node's name but not by this run of it (a restart,
                        // or a pause that outlived the heartbeat): take it again, so the
                        // revision, and with it the fence, is new.
                        Some(Action::Take { partition: p, revision: rev })
                    } else {
                        None
                    }
                }
                Some(o) => {
                    // Another holder. A live one gives the partition up itself when it sees
                    // it should; a dead one is taken over. A holder this node has never heard
                    // from counts from when this node first saw the lease.
                    let dead = if self.nodes.contains_key(&o.value.holder) {
                        !self.live(&o.value.holder, now)
                    } else {
                        self.silent_since(o.since.max(self.started))
                    };
                    (mine && dead).then_some(Action::Take { partition: p, revision: o.value.revision })
                }
            };
            if let Some(a) = action {
                let gain = !matches!(a, Action::Release { .. });
                if gain {
                    if gains_allowed == 0 {
                        continue;
                    }
                    gains_allowed -= 1;
                }
                self.pending.insert(p, gain);
                actions.push(a);
            }
        }
        for p in give_up {
            self.owned.remove(&p);
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(4);
    const S: Duration = Duration::from_secs(1);

    fn node(me: &str, t0: Instant) -> Leases {
        Leases::new(me, Timing::for_lease(LEASE), t0)
    }

    /// Performs every action as a bucket with no other writer would, revisions counting up.
    fn perform(l: &mut Leases, actions: Vec<Action>, rev: &mut u64, now: Instant) {
        for a in actions {
            match a {
                Action::Create(p) | Action::Take { partition: p, .. } => {
                    *rev += 1;
                    l.done(p, Outcome::Holding(*rev), now);
                }
                Action::Release { partition, .. } => l.done(partition, Outcome::Released, now),
            }
        }
    }

    /// A heartbeat whose acknowledgement was lost, seen back through the watch, keeps the node
    /// acting, counted from when it was sent, exactly as an acknowledgement would.
    #[test]
    fn a_heartbeat_seen_back_through_the_watch_counts_as_stored() {
        let t0 = Instant::now();
        let mut a = node("a", t0);
        assert!(!a.alive(t0), "nothing stored yet");
        a.own_heartbeat_seen(t0 + S);
        assert!(a.alive(t0 + S) && a.alive(t0 + 3 * S + S / 2));
        assert!(!a.alive(t0 + 4 * S), "a lease less one heartbeat after it was sent");
        // An older one seen late moves nothing back.
        a.own_heartbeat_seen(t0);
        assert!(a.alive(t0 + 3 * S + S / 2));
    }

    /// A node alone from `t0`, holding every lease; and the last revision the bucket gave.
    fn alone(me: &str, t0: Instant) -> (Leases, u64) {
        let mut a = node(me, t0);
        a.heartbeat_stored(t0);
        let mut rev = 0;
        let actions = a.tick(t0);
        perform(&mut a, actions, &mut rev, t0);
        (a, rev)
    }

    #[test]
    fn a_node_with_no_stored_heartbeat_owns_nothing_and_asks_for_nothing() {
        let t0 = Instant::now();
        let mut a = node("a", t0);
        assert!(a.tick(t0).is_empty());
        a.heartbeat_stored(t0);
        let actions = a.tick(t0);
        assert_eq!(actions.len(), PARTITIONS as usize, "alone, it creates every lease");
        assert!(actions.iter().all(|x| matches!(x, Action::Create(_))));
        // Asked once: the next tick waits for the outcomes.
        assert!(a.tick(t0).is_empty());
        let mut rev = 0;
        perform(&mut a, actions, &mut rev, t0);
        assert_eq!(a.owned().len(), PARTITIONS as usize);
    }

    #[test]
    fn a_node_whose_heartbeats_stop_being_stored_stops_acting_before_anyone_may_take_over() {
        let t0 = Instant::now();
        let (mut a, _) = alone("a", t0);
        // b saw a's heartbeat at t0 + 10 ms, after a sent it.
        let mut b = node("b", t0);
        b.heartbeat_stored(t0);
        b.node_seen("a", 1, true, t0 + Duration::from_millis(10));
        for p in 0..PARTITIONS {
            b.lease_seen(p, Some("a"), 1 + u64::from(p), t0);
        }
        // a stops acting at lease - heartbeat after its send; b may take over only at a full
        // lease after it saw the heartbeat.
        let a_stops = t0 + LEASE - Timing::for_lease(LEASE).heartbeat;
        assert!(a.alive(a_stops - Duration::from_millis(1)));
        assert!(!a.alive(a_stops));
        assert!(a.tick(a_stops).is_empty());
        assert!(a.owned().is_empty());
        b.heartbeat_stored(t0 + 3 * S);
        b.own_heartbeat_seen(t0 + 3 * S);
        assert_eq!(b.tick(t0 + 3 * S), vec![], "b waits for a full lease after it saw the heartbeat");
        // A view that lags never makes a node look dead: b's clock is past the lease, but the
        // newest of its own heartbeats that came back was sent before that.
        let late = t0 + LEASE + Duration::from_millis(10);
        b.heartbeat_stored(late + 7 * S);
        assert!(b.alive(late + 7 * S));
        assert_eq!(b.tick(late + 7 * S), vec![], "a stale view takes nobody for dead");
        b.own_heartbeat_seen(late);
        let after = b.tick(late + 7 * S);
        assert_eq!(after.len(), PARTITIONS as usize);
        assert!(after.iter().all(|x| matches!(x, Action::Take { .. })));
    }

    #[test]
    fn a_joining_node_gets_its_share_by_release_then_create_and_never_two_owners_at_once() {
        let t0 = Instant::now();
        let (mut a, mut rev) = alone("a", t0);
        let mut b = node("b", t0 + S);
        b.heartbeat_stored(t0 + S);
        for (&p, &r) in a.owned() {
            b.lease_seen(p, Some("a"), r, t0 + S);
        }
        b.node_seen("a", 7, true, t0 + S);
        // b is preferred for about half, but a holds them: b waits.
        assert!(b.tick(t0 + S).is_empty());
        // a sees b and gives up b's share: it stops acting for them at once.
        a.heartbeat_stored(t0 + S);
        a.node_seen("b", 1, true, t0 + S);
        let releases = a.tick(t0 + S);
        let given: Vec<u16> = releases.iter().map(|x| match x {
            Action::Release { partition, .. } => *partition,
            other => panic!("{other:?}"),
        }).collect();
        assert!((90..=170).contains(&given.len()), "{}", given.len());
        assert!(given.iter().all(|p| !a.owned().contains_key(p)));
        for &p in &given {
            a.done(p, Outcome::Released, t0 + S);
            rev += 1;
            b.lease_seen(p, None, rev, t0 + S);
        }
        let creates = b.tick(t0 + S);
        assert_eq!(creates, given.iter().map(|&p| Action::Create(p)).collect::<Vec<_>>());
        perform(&mut b, creates, &mut rev, t0 + S);
        let overlap: Vec<_> = b.owned().keys().filter(|p| a.owned().contains_key(p)).collect();
        assert!(overlap.is_empty());
        assert_eq!(a.owned().len() + b.owned().len(), PARTITIONS as usize);
    }

    #[test]
    fn a_lease_seen_under_another_holder_or_revision_is_no_longer_owned() {
        let t0 = Instant::now();
        let mut a = node("a", t0);
        a.heartbeat_stored(t0);
        a.done(3, Outcome::Holding(10), t0);
        assert_eq!(a.owned().get(&3), Some(&10));
        a.lease_seen(3, Some("a"), 10, t0);
        assert_eq!(a.owned().get(&3), Some(&10), "its own write, seen again");
        a.lease_seen(3, None, 8, t0);
        assert_eq!(a.owned().get(&3), Some(&10), "an older change seen late is ignored");
        a.lease_seen(3, Some("b"), 11, t0);
        assert!(!a.owned().contains_key(&3));
        // b's takeover was seen before a's own create was acknowledged: a does not act.
        a.lease_seen(5, Some("b"), 21, t0);
        a.done(5, Outcome::Holding(20), t0);
        assert!(!a.owned().contains_key(&5));
        // Held in its name but at a revision this run did not write (a restart): taken anew.
        a.lease_seen(4, Some("a"), 5, t0);
        let actions = a.tick(t0);
        assert!(actions.contains(&Action::Take { partition: 4, revision: 5 }));
        // An outcome arriving after the node stopped being alive does not make it act.
        let late = t0 + LEASE;
        a.done(4, Outcome::Holding(12), late);
        assert!(!a.owned().contains_key(&4));
    }

    #[test]
    fn a_holder_never_heard_from_is_taken_over_a_lease_after_its_lease_was_first_seen() {
        let t0 = Instant::now();
        let mut b = node("b", t0);
        b.heartbeat_stored(t0 + S);
        b.own_heartbeat_seen(t0 + S);
        b.lease_seen(9, Some("gone"), 2, t0);
        assert!(!b.tick(t0 + LEASE - S).contains(&Action::Take { partition: 9, revision: 2 }));
        b.heartbeat_stored(t0 + LEASE);
        b.own_heartbeat_seen(t0 + LEASE);
        assert!(b.tick(t0 + LEASE).contains(&Action::Take { partition: 9, revision: 2 }));
    }

    /// A partition log that cannot take claims (electing its leader after a NATS server died)
    /// is not asked for every partition on every tick: after a failed gain, gains wait a
    /// heartbeat, doubled per failure up to a lease; then a few probe until one succeeds, and
    /// then every partition is gained at once. Releases are never held.
    #[test]
    fn failed_gains_hold_the_others_back_then_a_few_probe_until_one_succeeds() {
        let hb = LEASE / 4;
        let t0 = Instant::now();
        let mut a = node("a", t0);
        let at = |n: u32| t0 + hb * n / 4;
        let gains = |v: &[Action]| v.iter().filter(|x| !matches!(x, Action::Release { .. })).count();
        a.heartbeat_stored(at(0));
        let first = a.tick(at(0));
        assert_eq!(gains(&first), PARTITIONS as usize, "alone, it gains every partition");
        // Every claim fails: one hold of a heartbeat, however many failures it is made of.
        for x in &first {
            if let Action::Create(p) = x {
                a.done(*p, Outcome::Failed, at(1));
            }
        }
        a.heartbeat_stored(at(2));
        assert!(a.tick(at(2)).is_empty(), "held for a heartbeat after the failures");
        a.heartbeat_stored(at(5));
        let probes = a.tick(at(5));
        assert_eq!(gains(&probes), PROBES, "then a few probes");
        assert!(a.tick(at(6)).is_empty(), "no more while the probes are in flight");
        // The probes fail too: the next hold is two heartbeats.
        for x in &probes {
            if let Action::Create(p) = x {
                a.done(*p, Outcome::Failed, at(6));
            }
        }
        a.heartbeat_stored(at(13));
        assert!(a.tick(at(13)).is_empty(), "held for two heartbeats");
        a.heartbeat_stored(at(14));
        let probes = a.tick(at(14));
        assert_eq!(gains(&probes), PROBES);
        // One probe succeeds: the log is back, and every other partition goes at once.
        let Action::Create(won) = probes[0] else { panic!("a create: {probes:?}") };
        a.done(won, Outcome::Holding(1), at(15));
        assert_eq!(a.owned().get(&won), Some(&1));
        let rest = a.tick(at(15));
        assert_eq!(gains(&rest), PARTITIONS as usize - PROBES, "all but the probes, which are in flight or won");
        // A failed release holds nothing back.
        let mut b = node("b", t0);
        b.heartbeat_stored(at(0));
        b.lease_seen(7, Some("b"), 3, at(0));
        b.done(7, Outcome::Holding(3), at(0));
        b.done(7, Outcome::Failed, at(1));
        assert_eq!(gains(&b.tick(at(1))), PARTITIONS as usize - 1);
    }
}
