//! The user actors of this process as the rest of the server sees them (`Users`): the
//! registry that finds or spawns a user's actor, the supervisor that forgets an actor that
//! stopped or failed (so the next message revives the user from sled), and the passivation
//! clock that ticks every actor in memory.

use super::{counted, Env, UserActor, UserArgs, UserMsg};
use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, MessagingErr, SupervisionEvent};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

struct Entry {
    actor: ActorRef<UserMsg>,
    inflight: Arc<AtomicU64>,
}

/// Finds or spawns the actor of a user. A user's state lives behind one key (`tenant \0 user`),
/// so it can later be partitioned across servers by that key.
#[derive(Default)]
pub(super) struct Registry {
    map: DashMap<String, Entry>,
    by_id: DashMap<ractor::ActorId, String>,
}

fn key(tenant: &str, user: &str) -> String {
    format!("{tenant}\0{user}")
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("could not start the user's actor: {0}")]
    Spawn(String),
    #[error("the user's actor is not available")]
    Unavailable,
}

impl Registry {
    /// Asks every actor in memory to check whether it is idle enough to passivate.
    fn tick(&self) {
        for e in self.map.iter() {
            let _ = e.actor.send_message(UserMsg::Tick);
        }
    }

    fn active(&self) -> usize {
        self.map.len()
    }

    /// Whether the user has an actor in memory.
    fn is_active(&self, tenant: &str, user: &str) -> bool {
        self.map.contains_key(&key(tenant, user))
    }

    /// Sends a message to a user's actor, spawning it (linked to `supervisor`) if needed.
    fn send(self: &Arc<Self>, env: &Arc<Env>, supervisor: &ActorCell, tenant: &str, user: &str, mut msg: UserMsg) -> Result<(), SendError> {
        let k = key(tenant, user);
        for _ in 0..4 {
            if let Some(e) = self.map.get(&k) {
                // Counted while the map guard is held, so passivation (which removes the entry
                // under the write lock only when nothing is in flight) cannot miss this message.
                let c = counted(&msg);
                if c {
                    e.inflight.fetch_add(1, Ordering::AcqRel);
                }
                match e.actor.send_message(msg) {
                    Ok(()) => return Ok(()),
                    Err(MessagingErr::SendErr(m)) => {
                        if c {
                            e.inflight.fetch_sub(1, Ordering::AcqRel);
                        }
                        msg = m;
                        let id = e.actor.get_id();
                        drop(e);
                        self.map.remove_if(&k, |_, v| v.actor.get_id() == id);
                        continue;
                    }
                    Err(_) => return Err(SendError::Unavailable),
                }
            }
            self.map.entry(k.clone()).or_try_insert_with(|| {
                let inflight = Arc::new(AtomicU64::new(0));
                let args = UserArgs { env: env.clone(), registry: self.clone(), tenant: tenant.to_string(), user: user.to_string(), inflight: inflight.clone() };
                let (actor, _) = ractor::ActorRuntime::spawn_linked_instant(None, UserActor, args, supervisor.clone())
                    .map_err(|e| SendError::Spawn(e.to_string()))?;
                self.by_id.insert(actor.get_id(), k.clone());
                Ok::<_, SendError>(Entry { actor, inflight })
            })?;
        }
        Err(SendError::Unavailable)
    }

    /// Sends only to a running actor (used for detach, which must not revive a user).
    pub(super) fn send_existing(&self, tenant: &str, user: &str, msg: UserMsg) {
        if let Some(e) = self.map.get(&key(tenant, user)) {
            if counted(&msg) {
                e.inflight.fetch_add(1, Ordering::AcqRel);
            }
            if e.actor.send_message(msg).is_err() {
                e.inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(super) fn remove_if_idle(&self, tenant: &str, user: &str, id: ractor::ActorId, inflight: &AtomicU64) -> bool {
        let removed = self.map.remove_if(&key(tenant, user), |_, v| v.actor.get_id() == id && inflight.load(Ordering::Acquire) == 0).is_some();
        if removed {
            self.by_id.remove(&id);
        }
        removed
    }

    fn forget(&self, id: ractor::ActorId) {
        if let Some((_, k)) = self.by_id.remove(&id) {
            self.map.remove_if(&k, |_, v| v.actor.get_id() == id);
        }
    }

    /// Ends at once, without a snapshot, the actors of the users `which` picks, and waits
    /// until they are gone: their state in memory may be ahead of what is durable where they
    /// are to be rebuilt (cluster mode, a partition lost or its changelog writer stopped).
    async fn drop_where(&self, which: impl Fn(&str, &str) -> bool) {
        let actors: Vec<ActorRef<UserMsg>> = self
            .map
            .iter()
            .filter(|e| e.key().split_once('\0').is_some_and(|(t, u)| which(t, u)))
            .map(|e| e.actor.clone())
            .collect();
        for a in actors {
            a.get_cell().kill();
            let _ = a.get_cell().wait(None).await;
            self.forget(a.get_id());
        }
    }

    /// Asks every actor to snapshot and stop, and waits until they have all ended (bounded by
    /// the caller). Repeats while actors remain, since a message already on its way (a backfill
    /// step, say) can revive a user after the first round.
    async fn stop_all(&self) {
        while !self.map.is_empty() {
            let actors: Vec<ActorRef<UserMsg>> = self.map.iter().map(|e| e.actor.clone()).collect();
            let mut waits = Vec::new();
            for a in &actors {
                let (tx, rx) = oneshot::channel();
                if a.send_message(UserMsg::Stop(tx)).is_ok() {
                    waits.push(rx);
                }
            }
            for w in waits {
                let _ = w.await;
            }
            // Ended means the actor's state (and its handle on the store) is dropped.
            for a in actors {
                let _ = a.get_cell().wait(None).await;
                self.forget(a.get_id());
            }
        }
    }
}

/// The parent of every user actor: when one stops or fails it is forgotten, so the next
/// message for that user starts a fresh actor from durable state.
struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = Arc<Registry>;
    type Arguments = Arc<Registry>;

    async fn pre_start(&self, _: ActorRef<()>, registry: Arc<Registry>) -> Result<Arc<Registry>, ActorProcessingErr> {
        Ok(registry)
    }

    async fn handle_supervisor_evt(&self, _: ActorRef<()>, evt: SupervisionEvent, registry: &mut Arc<Registry>) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => registry.forget(cell.get_id()),
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::warn!(actor = %cell.get_id(), error = %err, "user actor failed; it will be rebuilt from durable state");
                registry.forget(cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

/// The passivation clock: every `--passivate-secs` / 4 (at least 250 ms) until shutdown, every
/// actor in memory gets a `Tick`. One task for all actors: a ractor `send_interval` per actor was
/// a task and a timer each, about 370 bytes of every connected user (heaptrack; bench/README.md,
/// fix 13), for a check that a connected user always passes.
async fn passivation_clock(registry: Arc<Registry>, every: std::time::Duration, stop: tokio::sync::watch::Receiver<bool>) {
    crate::clock::every(every, stop, || {
        registry.tick();
        std::future::ready(())
    })
    .await
}

/// The user actors of this process: the one way the rest of the server reaches a user. Cheap
/// to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Users {
    registry: Arc<Registry>,
    env: Arc<Env>,
    supervisor: ActorCell,
}

impl Users {
    /// Starts the supervisor and the passivation clock (which runs until `stop`).
    pub async fn start(env: Env, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<Users> {
        let registry = Arc::new(Registry::default());
        let (sup, _) = Actor::spawn(None, Supervisor, registry.clone()).await?;
        let tick = (env.config.passivate_after() / 4).max(std::time::Duration::from_millis(250));
        tokio::spawn(passivation_clock(registry.clone(), tick, stop));
        Ok(Users { registry, env: Arc::new(env), supervisor: sup.get_cell() })
    }

    /// Sends a message to a user's actor, starting the actor from durable state if needed.
    pub fn send(&self, tenant: &str, user: &str, msg: UserMsg) -> Result<(), SendError> {
        self.registry.send(&self.env, &self.supervisor, tenant, user, msg)
    }

    /// Sends only to a running actor (used for detach, which must not revive a user).
    pub fn send_existing(&self, tenant: &str, user: &str, msg: UserMsg) {
        self.registry.send_existing(tenant, user, msg)
    }

    /// Actors in memory.
    pub fn active(&self) -> usize {
        self.registry.active()
    }

    /// Retracts from a team the contribution a member's retracted event made there (a mail row
    /// of type `records::TEAM_RETRACT_EVENT`, addressed to the team), through the team's actor.
    /// Done (`Ok`) also when there is nothing to retract: the team never counted the event (she
    /// joined after it), or its log no longer starts at the beginning (swept by retention), so
    /// the facts without it cannot be recomputed (logged).
    pub async fn retract_contribution(&self, tenant: &str, event: crate::core::Event) -> Result<(), String> {
        let Some(rec) = crate::records::team_retract_args(&event) else { return Ok(()) };
        let (tx, rx) = oneshot::channel();
        let msg = UserMsg::Retract { event_id: rec.target.clone(), reason: rec.reason, claw_back: rec.claw_back, reply: tx };
        self.send(tenant, &event.user_id, msg).map_err(|e| e.to_string())?;
        match rx.await.map_err(|_| "the team's actor stopped".to_string())? {
            Ok(_) | Err(super::TakeError::UnknownEvent) => Ok(()),
            Err(super::TakeError::LogIncomplete) => {
                tracing::warn!(tenant, team = %event.user_id, contribution = %rec.target, "a retracted event stays counted for a team whose log was swept by retention");
                Ok(())
            }
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// Sends `msg()` to every actor of `tenant` in memory (reviving nobody).
    pub fn tell_tenant(&self, tenant: &str, msg: impl Fn() -> UserMsg) {
        let users: Vec<String> = self.registry.map.iter().filter_map(|e| e.key().split_once('\0').filter(|(t, _)| *t == tenant).map(|(_, u)| u.to_string())).collect();
        for u in users {
            self.registry.send_existing(tenant, &u, msg());
        }
    }

    /// Whether the user has an actor in memory.
    pub fn is_active(&self, tenant: &str, user: &str) -> bool {
        self.registry.is_active(tenant, user)
    }

    /// Ends the actors of the users `which` picks at once, without a snapshot (see
    /// `Registry::drop_where`).
    pub async fn drop_where(&self, which: impl Fn(&str, &str) -> bool) {
        self.registry.drop_where(which).await
    }

    /// Asks every actor to snapshot and stop, and waits until they have all ended (bounded by
    /// the caller).
    pub async fn stop_all(&self) {
        self.registry.stop_all().await
    }
}
