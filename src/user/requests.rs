//! What the API and the server's workers ask of a user's actor beside her events: revoking a
//! badge, retracting an event, goals, notices, a team's unlock told to a member, joining and
//! leaving teams, period awards and backfill. Each is planned like an event (`plan.rs`) and
//! answered once its writes are durable (`durable.rs`).

use super::*;

impl User {
    /// A revocation through the API: taken by the core on a copy (a badge already taken away
    /// changes nothing, and nothing is written), logged as an `accolade.revoke` record, pushed
    /// as `revoked`; the reply goes out once it is durable.
    pub(super) fn revoke(&mut self, myself: &ActorRef<UserMsg>, badge: String, reason: String, claw_back: bool, reply: oneshot::Sender<Result<Taken, TakeError>>) {
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else {
            let _ = reply.send(Err(TakeError::Failed("the tenant's catalogue is gone".into())));
            return;
        };
        let now = now_ms();
        let id = plan::record_id("revoke", &badge, &self.cur);
        let mut next = self.st.clone();
        let fx = match crate::core::revoke::revoke(&mut next, &badge, &reason, claw_back, now, &id, &cat) {
            Ok(fx) => fx,
            Err(crate::core::revoke::RevokeRefused::UnknownBadge) => {
                let _ = reply.send(Err(TakeError::UnknownBadge));
                return;
            }
            Err(crate::core::revoke::RevokeRefused::NeverHeld) => {
                let _ = reply.send(Err(TakeError::NotOwned));
                return;
            }
        };
        let changed = fx.iter().any(|e| matches!(e, Effect::Revoked { badge: b, cause: crate::core::RevokeCause::Api, .. } if **b == *badge));
        if fx.is_empty() {
            let taken = Taken { changed, fx, revocation: self.st.revoked.get(&badge).cloned(), xp: self.st.xp, level: self.st.level };
            let _ = reply.send(Ok(taken));
            return;
        }
        self.st = next;
        let taken = Taken { changed, fx: fx.clone(), revocation: self.st.revoked.get(&badge).cloned(), xp: self.st.xp, level: self.st.level };
        let rec = crate::records::TakeRecord { target: badge, reason, claw_back };
        let plan = plan::take(&planner!(self, cat), &mut self.cur, &self.st, &fx, crate::records::REVOKE_EVENT, &rec, id, now);
        tracing::info!(tenant = %self.tenant, user = %self.user, badge = %rec.target, claw_back, "badge revoked");
        self.perform(myself, plan, vec![], vec![Delivery::Taken(reply, taken)]);
    }

    /// A retraction: the user's whole log replayed from scratch with and without the event
    /// (nothing is in flight, so the stored log holds exactly what this state has seen), the
    /// stats it moved recomputed and the badges it earned taken away, logged as an
    /// `accolade.retract` record with a snapshot. An event already retracted is not retracted
    /// again.
    pub(super) async fn retract(
        &mut self,
        myself: &ActorRef<UserMsg>,
        event_id: String,
        reason: String,
        claw_back: bool,
        reply: oneshot::Sender<Result<Taken, TakeError>>,
    ) -> Result<(), (oneshot::Sender<Result<Taken, TakeError>>, TakeError)> {
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else { return Err((reply, TakeError::Failed("the tenant's catalogue is gone".into()))) };
        let store = self.env.log.clone();
        let (t, u) = (self.tenant.clone(), self.user.clone());
        let log = match tokio::task::spawn_blocking(move || store.events_after(&t, &u, 0, usize::MAX)).await {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => return Err((reply, TakeError::Failed(e.to_string()))),
            Err(e) => return Err((reply, TakeError::Failed(e.to_string()))),
        };
        if log.first().is_some_and(|(seq, _)| *seq != 1) {
            return Err((reply, TakeError::LogIncomplete));
        }
        let log: Vec<StoredEvent> = log.into_iter().map(|(_, e)| e).collect();
        if !log.iter().any(|e| e.event.event_id == event_id && !crate::records::system_record(&e.event.event_type)) {
            return Err((reply, TakeError::UnknownEvent));
        }
        if crate::records::retracted(&log).contains(&event_id) {
            let _ = reply.send(Ok(Taken { changed: false, fx: vec![], revocation: None, xp: self.st.xp, level: self.st.level }));
            return Ok(());
        }
        let now = now_ms();
        let id = plan::record_id("retract", &event_id, &self.cur);
        let rec = crate::records::TakeRecord { target: event_id, reason, claw_back };
        let fx = crate::replay::apply_retract(&mut self.st, &log, &rec, now, &id, &cat);
        let taken = Taken { changed: true, fx: fx.clone(), revocation: None, xp: self.st.xp, level: self.st.level };
        // Written even when no badge falls: from now on every replay leaves the event out.
        let plan = plan::take(&planner!(self, cat), &mut self.cur, &self.st, &fx, crate::records::RETRACT_EVENT, &rec, id, now);
        tracing::info!(tenant = %self.tenant, user = %self.user, event = %rec.target, revoked = plan.revoked.len(), "event retracted");
        self.perform(myself, plan, vec![], vec![Delivery::Taken(reply, taken)]);
        Ok(())
    }

    /// The goal as the API lists it, from this (the assignee's) state.
    pub(super) fn goal_record(&self, id: &str) -> Option<store::GoalRecord> {
        plan::goal_record(&self.st, &self.user, id)
    }

    /// A goal operation: applied by the core, logged, and the goal's record rewritten, all in
    /// one batch; the reply goes out once it is durable.
    pub(super) fn goal(&mut self, myself: &ActorRef<UserMsg>, op: GoalOp, reply: oneshot::Sender<Result<Option<store::GoalRecord>, String>>) {
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else {
            let _ = reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let id = match &op {
            GoalOp::Assign(s) => s.id.clone(),
            GoalOp::Due(id) | GoalOp::Cancel(id) => id.clone(),
        };
        let now = now_ms();
        let mut next = self.st.clone();
        let fx = match crate::replay::apply_goal(&mut next, op.clone(), now, &cat) {
            Ok(fx) => fx,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if fx.is_empty() {
            let _ = reply.send(Ok(self.goal_record(&id)));
            return;
        }
        self.st = next;
        let plan = plan::goal(&planner!(self, cat), &mut self.cur, &self.st, &fx, &id, &op, now);
        let done = Delivery::Goal(reply, self.goal_record(&id));
        self.perform(myself, plan, vec![], vec![done]);
    }

    /// A notice for this user: logged with its id (so a repeat is recognised) and pushed.
    pub(super) fn notice(&mut self, myself: &ActorRef<UserMsg>, n: NoticeMsg) {
        match self.seen(&n.id) {
            Ok(true) => {
                let _ = n.reply.send(Ok(()));
                return;
            }
            Ok(false) => {}
            Err(e) => {
                let _ = n.reply.send(Err(e.to_string()));
                return;
            }
        }
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else {
            let _ = n.reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let notice = plan::Notice { id: n.id, kind: n.kind, goal: &n.goal, title: &n.title, assignee: &n.assignee, at: n.at };
        let plan = plan::notice(&planner!(self, cat), &mut self.cur, notice, now_ms());
        self.perform(myself, plan, vec![], vec![Delivery::Noticed(n.reply)]);
    }

    /// Tells the user how each community goal she took part in ended, if it closed within
    /// `community::TOLD_FOR` and she was not told yet (the record's id is in her id index once
    /// she is): a `community_outcome` push, stored, so a socket that reconnects gets it too.
    pub(super) fn tell_outcomes(&mut self, myself: &ActorRef<UserMsg>) {
        let Some(community) = self.env.community.clone() else { return };
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else { return };
        let now = now_ms();
        let retention = self.env.config.event_retention_hours as Millis * 3_600_000;
        let window = if retention > 0 { crate::community::TOLD_FOR.min(retention) } else { crate::community::TOLD_FOR };
        for (key, o) in community.recent_outcomes(&self.tenant, now, window) {
            let share = self.shares.get(&key).copied().unwrap_or(0.0);
            if share <= 0.0 {
                continue;
            }
            let goal = crate::core::catalogue::CommunityGoalDef::id_of(&key).to_string();
            match self.seen(&crate::records::community_id(&key)) {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    tracing::debug!(tenant = %self.tenant, user = %self.user, goal, error = %e, "a community goal's outcome is told later");
                    return;
                }
            }
            let name = cat.community.iter().find(|d| *d.key == *key).map_or(goal.clone(), |d| d.name.clone());
            let plan = plan::community_outcome(&planner!(self, cat), &mut self.cur, &key, &goal, &name, &o, share, now);
            self.perform(myself, plan, vec![], vec![]);
        }
    }

    /// A team's unlock told to this member, mailed by the team: logged with its id (so a
    /// repeat is recognised) and pushed, with the badge of her own it gives her, if any
    /// (`core::give`, made again from the record by every rebuild).
    pub(super) fn team_unlock(&mut self, myself: &ActorRef<UserMsg>, event: Event, reply: oneshot::Sender<Result<(), String>>) {
        match self.seen(&event.event_id) {
            Ok(true) => {
                let _ = reply.send(Ok(()));
                return;
            }
            Ok(false) => {}
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
                return;
            }
        }
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else {
            let _ = reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let now = now_ms();
        let fx = match (crate::records::given(&event), crate::records::team_unlock_args(&event)) {
            (Some(badge), Some((team, _, _))) => crate::core::give(&mut self.st, &badge, &team, &event.event_id, now, &event.event_id, &cat),
            _ => Vec::new(),
        };
        let plan = plan::team_unlock(&planner!(self, cat), &mut self.cur, &self.st, &fx, event, now);
        let mut after = vec![Delivery::Noticed(reply)];
        if !fx.is_empty() {
            self.fold(&cat, &crate::analytics::step_of_effects(None, &fx, &cat, false), &mut after);
        }
        self.perform(myself, plan, vec![], after);
    }

    /// A membership change on this entity's side: its link row written (or removed) through
    /// its own log, checked against `limit` here, where this side's links change one at a time.
    /// The list the plan mails to changes with it, from the next event on.
    pub(super) fn link(&mut self, myself: &ActorRef<UserMsg>, other: String, join: bool, limit: usize, reply: oneshot::Sender<Result<bool, LinkError>>) {
        let read = match self.linked.take() {
            Some(l) => Ok(l),
            None => self.env.log.links(&self.tenant, &self.user),
        };
        let mut links = match read {
            Ok(l) => l,
            Err(e) => {
                let _ = reply.send(Err(LinkError::Failed(e.to_string())));
                return;
            }
        };
        if links.contains(&other) == join {
            self.linked = Some(links);
            let _ = reply.send(Ok(false));
            return;
        }
        if join && links.len() >= limit {
            let _ = reply.send(Err(LinkError::Full(links.len())));
            self.linked = Some(links);
            return;
        }
        let write = if join { store::link(&self.tenant, &self.user, &other, now_ms()) } else { store::unlink(&self.tenant, &self.user, &other) };
        if join {
            links.push(other);
            links.sort();
        } else {
            links.retain(|l| *l != other);
        }
        self.linked = Some(links);
        self.enqueue(myself, vec![write], vec![Delivery::Linked(reply)]);
    }

    /// A leaderboard period award. The log record (`accolade.leaderboard`) lets every rebuild
    /// make the same award; the core makes an award once per period, so a close retried after
    /// a crash awards nothing twice.
    pub(super) fn award(&mut self, myself: &ActorRef<UserMsg>, board: &str, period: &str, rank: usize, reply: oneshot::Sender<Result<bool, String>>) {
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else {
            let _ = reply.send(Err("the tenant's catalogue is gone".into()));
            return;
        };
        let now = now_ms();
        let event_id = crate::records::award_id(board, period);
        // On a copy, like a backfill: when nothing is due, the live state stays exactly what
        // the log rebuilds.
        let mut next = self.st.clone();
        let fx = crate::core::award_rank(&mut next, board, period, rank, now, &event_id, &cat);
        if fx.is_empty() {
            let _ = reply.send(Ok(false));
            return;
        }
        self.st = next;
        let plan = plan::award(&planner!(self, cat), &mut self.cur, &self.st, &fx, board, period, rank, now);
        tracing::info!(tenant = %self.tenant, user = %self.user, board, period, rank, "leaderboard award");
        let mut after = vec![Delivery::Awarded(reply, true)];
        self.fold(&cat, &crate::analytics::step_of_effects(None, &fx, &cat, false), &mut after);
        self.perform(myself, plan, vec![], after);
    }

    /// Replays this user's whole log under the catalogue in force and awards what the job's
    /// badges would have given; the record and a snapshot are written together, and the reply
    /// goes out once they are durable.
    pub(super) async fn backfill(
        &mut self,
        myself: &ActorRef<UserMsg>,
        spec: &BackfillSpec,
        reply: oneshot::Sender<Result<u32, String>>,
    ) -> Result<(), (oneshot::Sender<Result<u32, String>>, String)> {
        let Some(cat) = self.env.catalogue(&self.tenant, &self.user) else { return Err((reply, "the tenant's catalogue is gone".into())) };
        let store = self.env.log.clone();
        let (t, u) = (self.tenant.clone(), self.user.clone());
        // Nothing is in flight, so the stored log holds exactly the events this state has seen.
        let log = match tokio::task::spawn_blocking(move || store.events_after(&t, &u, 0, usize::MAX)).await {
            Ok(Ok(log)) => log,
            Ok(Err(e)) => return Err((reply, e.to_string())),
            Err(e) => return Err((reply, e.to_string())),
        };
        let log: Vec<StoredEvent> = log.into_iter().map(|(_, e)| e).collect();
        let replayed = crate::replay::from_scratch(&self.tenant, &self.user, &log, &cat);
        let now = now_ms();
        let event_id = crate::records::backfill_id(spec.job);
        // Worked out on a copy: when nothing changes, the live state stays exactly as the log
        // rebuilds it (not even aligned to the new catalogue), and no record is written.
        let mut next = self.st.clone();
        next.sync(&cat);
        let before = (next.stats.clone(), next.rings.clone());
        let fx = crate::core::backfill(&mut next, &replayed, &spec.badges, &spec.new_stats, now, &event_id, &cat);
        let awarded = plan::backfill_awards(&self.st, &spec.badges, spec.job, &fx);
        if fx.is_empty() && (&next.stats, &next.rings) == (&before.0, &before.1) {
            let _ = reply.send(Ok(awarded));
            return Ok(());
        }
        self.st = next;
        let rec = crate::records::BackfillRecord { badges: spec.badges.clone(), new_stats: spec.new_stats.clone() };
        let plan = plan::backfill(&planner!(self, cat), &mut self.cur, &self.st, &fx, spec.job, &rec, spec.notify, now);
        tracing::debug!(job = spec.job, tenant = %self.tenant, user = %self.user, awarded, "backfilled");
        // Marked as backfilled, and counted whether or not the job pushes its awards.
        let mut after = vec![Delivery::Backfilled(reply, awarded)];
        self.fold(&cat, &crate::analytics::step_of_effects(None, &fx, &cat, true), &mut after);
        self.perform(myself, plan, vec![], after);
        Ok(())
    }
}
