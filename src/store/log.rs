//! The event log as a user's actor needs it, and sled's implementation of it: append one
//! user's records and hear when they are durable, read a user's tail and id index, read back
//! the id of one record.
//!
//! The actor and the rebuild from the log (`replay.rs`) reach the log only through
//! `EventLog`, so a second log (JetStream, in cluster mode) can stand beside this one without
//! touching the actor or the rule core. Everything else the server stores (catalogues, jobs,
//! endpoints, archives) stays on `Store` itself.

pub use super::persister::Done;
use super::{fnv, user_key, Job, Loaded, Millis, Store, StoreError, StoredEvent, Write};
use std::future::Future;
use std::pin::Pin;

/// What a user's actor needs of the event log. Reads marked blocking may touch the disk: call
/// them from a blocking task.
pub trait EventLog: Send + Sync {
    /// The id of `user`'s record `seq`, if the log still holds it: how the actor makes sure of
    /// a match in her id index (`IdIndex`). Refuses (`StoreError::Failed`) once a write
    /// failed: a record whose write the disk refused must not make a resend a duplicate.
    /// Blocking.
    fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError>;

    /// Appends one user's writes (their records, snapshot and the index entries that go with
    /// them). A user's appends become durable in the order they were made; `done` runs once
    /// this one is, or has failed.
    fn append(&self, tenant: &str, user: &str, writes: Vec<Write>, done: Done) -> Result<(), StoreError>;

    /// Whether this log takes `user`'s writes here: always for one node alone; on a cluster
    /// node, whether it serves her partition. What is stored here about a user it does not
    /// take (her outbox rows, say) is another node's to act on.
    fn serves(&self, _tenant: &str, _user: &str) -> bool {
        true
    }

    /// The entities `user` is linked to (a user's teams, a team's members), in id order: read
    /// where her writes are complete. Blocking.
    fn links(&self, tenant: &str, user: &str) -> Result<Vec<String>, StoreError>;

    /// A fresh id for a webhook notification about `user`: never given before across the
    /// deployment (every node of a cluster included), and above every id given before for
    /// one of her notifications, so that an endpoint's outbox, read in id order, holds each
    /// user's notifications in the order they were made.
    fn delivery_id(&self, tenant: &str, user: &str) -> Result<u64, StoreError>;

    /// Resolves once everything appended before is durable.
    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>>;

    /// Why the log refuses all work, once a write or flush failed.
    fn failure(&self) -> Option<&str>;

    /// The user's snapshot and the records after it. Blocking.
    fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError>;

    /// The user's records after sequence number `after`, oldest first, at most `limit`.
    /// Blocking.
    fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError>;

    /// The pushes recorded after push offset `offset`, oldest first, each with the time its
    /// event was received, looking back at most `max_events` records. Blocking.
    fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError>;

    /// The user's analytics record as stored (with its snapshot), if any. Blocking.
    fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

impl EventLog for Store {
    fn links(&self, tenant: &str, user: &str) -> Result<Vec<String>, StoreError> {
        self.links_of(tenant, user)
    }

    fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError> {
        Store::event_id_at(self, tenant, user, seq)
    }

    fn append(&self, tenant: &str, user: &str, writes: Vec<Write>, done: Done) -> Result<(), StoreError> {
        // Every job of a user is inserted by the same persister thread, so its writes keep
        // their order.
        self.readable()?;
        let h = fnv(&user_key(tenant, user));
        self.tx.send(Job { writes, done, lane: (h & 1) as u8, user: Some(h) }).map_err(|_| StoreError::Stopped)
    }

    fn delivery_id(&self, _tenant: &str, _user: &str) -> Result<u64, StoreError> {
        self.next_id(super::IdKind::Delivery)
    }

    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(Store::sync(self))
    }

    fn failure(&self) -> Option<&str> {
        Store::failure(self)
    }

    fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError> {
        Store::load_user(self, tenant, user)
    }

    fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        Store::events_after(self, tenant, user, after, limit)
    }

    fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError> {
        Store::pushes_after(self, tenant, user, offset, max_events)
    }

    fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Store::analytics_record(self, tenant, user)
    }
}
