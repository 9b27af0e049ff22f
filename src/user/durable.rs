//! The actor's side of durability: its writes go to the event log in order, and what they
//! announce (pushes, replies, counters, board moves, analytics) is held until the log says
//! they are on disk, then delivered in that order, or refused if the write failed.

use super::*;

impl User {
    /// Sends writes to the persister and holds the deliveries until they are durable. With no
    /// writes, deliveries still wait behind any earlier ones, so the client sees them in order.
    pub(super) fn enqueue(&mut self, myself: &ActorRef<UserMsg>, mut writes: Vec<store::Write>, mut deliveries: Vec<Delivery>) {
        // The analytics record goes with every snapshot, after it in the same job: a
        // recovered record never folds an event the log does not hold (docs/analytics.md).
        if self.cur.snap_seq > self.facts_written {
            self.facts.seq = self.cur.snap_seq;
            writes.push(store::writes::analytics(&self.tenant, &self.user, &self.facts));
            self.facts_written = self.cur.snap_seq;
        }
        // So do the ids of the records up to the snapshot, in one chunk after it: her index
        // costs a write per snapshot, not per event (`store::IdIndex`).
        writes.extend(self.ids.chunk(&self.tenant, &self.user, self.cur.snap_seq));
        // Webhook notifications go into the same batch as the pushes that announce them, so
        // one is durable exactly when the other is. Only tenants with endpoints pay for this.
        let mut no_ids = None;
        if !writes.is_empty() && self.env.webhooks.any(&self.tenant) {
            let pushes = deliveries.iter().filter_map(|d| if let Delivery::Push(p) = d { Some(p) } else { None });
            match self.env.webhooks.outbox_writes(&self.tenant, &self.user, pushes) {
                Ok((outbox, wake)) if !outbox.is_empty() => {
                    writes.extend(outbox);
                    deliveries.push(Delivery::Wake(wake));
                }
                Ok(_) => {}
                Err(why) => no_ids = Some(why),
            }
        }
        if writes.is_empty() {
            match self.pending.back_mut() {
                Some(last) => last.2.extend(deliveries),
                None => deliveries.into_iter().for_each(|d| self.deliver(d)),
            }
            return;
        }
        self.next_job += 1;
        let job = self.next_job;
        self.pending.push_back((job, self.cur.seq, deliveries));
        // No id for a notification this batch makes (a cluster node whose partition is being
        // claimed anew): the batch fails as a refused write does, so nothing of it is acked
        // and its events are sent again, rather than accepted without their notifications.
        if let Some(why) = no_ids {
            let _ = myself.send_message(UserMsg::Durable { job, result: Err(why) });
            return;
        }
        let me = myself.clone();
        let submitted = self.env.log.append(&self.tenant, &self.user, writes, Box::new(move |result| {
            let _ = me.send_message(UserMsg::Durable { job, result });
        }));
        match submitted {
            Ok(()) => {}
            // A write failed earlier: this one fails as the batch did, through a completion,
            // so the actor fails the same way and nothing of it is sent.
            Err(store::StoreError::Failed(why)) => {
                let _ = myself.send_message(UserMsg::Durable { job, result: Err(why) });
            }
            // The persister is gone (shutdown): nothing will become durable, so nothing is sent.
            Err(_) => self.pending.clear(),
        }
    }

    /// A completion from the persister: releases the deliveries of every job up to `job`.
    /// Work that waited for durable state is left for `run_waiting`.
    pub(super) fn on_durable(&mut self, job: u64, result: Result<(), String>) -> Result<(), ActorProcessingErr> {
        if let Err(e) = result {
            // State in memory is ahead of the disk. Fail: the supervisor forgets this actor and
            // the next message rebuilds the user from what is durable (once the store can be
            // read: after a failed write, only a restarted server can). No ack was sent for the
            // lost events, so clients retry them.
            let lost = self.pending.iter().flat_map(|(_, _, ds)| ds).filter(|d| matches!(d, Delivery::Accepted)).count();
            self.env.metrics.storage_failed.inc_by(lost as u64);
            // Whoever waits on a lost job is told why now, rather than by a dropped channel:
            // an HTTP sender learns its event is `unavailable` (send it again), the others get
            // the error itself. Nothing durable is claimed, and nothing is counted twice.
            for (_, _, ds) in std::mem::take(&mut self.pending) {
                for d in ds {
                    refuse(d, &e);
                }
            }
            if self.env.log.failure().is_some() {
                self.sockets.closing(protocol::close::INTERNAL, "storage failed; reconnect later");
            }
            return Err(format!("persisting failed: {e}").into());
        }
        // Idle time counts from when the last work finished, not from when it arrived.
        self.last_activity = Instant::now();
        while self.pending.front().is_some_and(|(j, _, _)| *j <= job) {
            let (_, seq, ds) = self.pending.pop_front().expect("checked");
            self.durable_seq = self.durable_seq.max(seq);
            for d in ds {
                self.deliver(d);
            }
        }
        Ok(())
    }

    /// Work that waited for durable state runs in order; a backfill writes, so whatever comes
    /// after it waits again.
    pub(super) async fn run_waiting(&mut self, myself: &ActorRef<UserMsg>) {
        let mut waiting = std::mem::take(&mut self.waiting).into_iter();
        while self.pending.is_empty() {
            let Some(w) = waiting.next() else { break };
            self.run_or_wait(myself, w).await;
        }
        self.waiting.extend(waiting);
    }

    pub(super) fn deliver(&mut self, d: Delivery) {
        match d {
            Delivery::One(id, f) => self.sockets.one(id, f, &self.env.metrics),
            Delivery::Push(p) => self.sockets.all(&p.frame, &self.env.metrics),
            Delivery::Http(tx, outcome) => {
                let _ = tx.send(outcome);
            }
            Delivery::Release(_) => {}
            Delivery::Accepted => {
                self.env.metrics.accepted.inc();
                self.stats.health.accepted(now_ms());
            }
            Delivery::Observe(arrived) => {
                let took = arrived.elapsed();
                self.env.metrics.event_to_push.record(took);
                self.stats.health.latency(took);
            }
            Delivery::Analytics(c) => self.stats.add(&c),
            Delivery::Backfilled(reply, n) => {
                let _ = reply.send(Ok(n));
            }
            Delivery::Awarded(reply, done) => {
                let _ = reply.send(Ok(done));
            }
            Delivery::Goal(reply, record) => {
                let _ = reply.send(Ok(record));
            }
            Delivery::Noticed(reply) => {
                let _ = reply.send(Ok(()));
            }
            Delivery::Linked(reply) => {
                let _ = reply.send(Ok(true));
            }
            Delivery::Taken(reply, taken) => {
                let _ = reply.send(Ok(taken));
            }
            Delivery::Swept(reply) => {
                let _ = reply.send(Ok(()));
            }
            Delivery::Wake(workers) => workers.iter().for_each(|w| w.notify_one()),
            // Only members whose actors are in memory can have a socket open, so no member is
            // revived to be told. In cluster mode a member another node serves is told there.
            Delivery::Community(goal, amount, first) => {
                if let Some(c) = &self.env.community {
                    c.add(&self.tenant, &goal, amount, first);
                }
            }
            Delivery::Tell(frames) => {
                for member in self.linked.as_deref().unwrap_or(&[]) {
                    match &self.env.relay {
                        Some(relay) if !self.env.log.serves(&self.tenant, member) => relay(&self.tenant, member, frames.clone()),
                        _ => self.registry.send_existing(&self.tenant, member, UserMsg::Told(frames.clone())),
                    }
                }
            }
            Delivery::Board(key, entry, left) => {
                if let Some(old) = left {
                    self.env.boards.remove(&old, &self.user);
                }
                self.env.boards.set(key, &self.user, &entry);
            }
        }
    }
}

/// Tells whoever waits on a delivery of a job that did not become durable that it failed;
/// pushes, counters and wake-ups of such a job are simply not performed.
fn refuse(d: Delivery, why: &str) {
    match d {
        Delivery::Http(tx, mut o) => {
            o.status = "rejected";
            o.code = Some("unavailable".into());
            o.reason = Some(format!("the event could not be made durable ({why}); send it again"));
            o.xp = 0;
            o.unlocks.clear();
            let _ = tx.send(o);
        }
        Delivery::Backfilled(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Awarded(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Goal(reply, _) => drop(reply.send(Err(why.to_string()))),
        Delivery::Noticed(reply) => drop(reply.send(Err(why.to_string()))),
        Delivery::Linked(reply) => drop(reply.send(Err(LinkError::Failed(why.to_string())))),
        Delivery::Taken(reply, _) => drop(reply.send(Err(TakeError::Failed(why.to_string())))),
        Delivery::Swept(reply) => drop(reply.send(Err(why.to_string()))),
        Delivery::One(..) | Delivery::Push(_) | Delivery::Release(_) | Delivery::Observe(_) | Delivery::Accepted | Delivery::Board(..) | Delivery::Wake(_) | Delivery::Analytics(_) | Delivery::Tell(_) | Delivery::Community(..) => {}
    }
}
