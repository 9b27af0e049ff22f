//! The event log of a cluster node: a user's writes go to their partition's changelog first
//! and to the local sled once the changelog has them, so the sled never holds a write the
//! cluster could lose with this node, and nothing it holds is acknowledged before JetStream
//! stored it with its replication. Reads are the local sled's, which a node fills from the
//! changelog (`rebuild`) before it serves a partition.

use super::changelog::{self, Writer};
use super::log::PartitionLog;
use super::partition::partition_of;
use crate::core::Millis;
use crate::store::{Done, EventLog, Loaded, Store, StoreError, StoredEvent, Write};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

/// The partitions this node serves, each with its changelog writer, over the local store.
pub struct ClusterLog {
    store: Store,
    writers: RwLock<HashMap<u16, Arc<Writer>>>,
}

impl ClusterLog {
    pub fn new(store: Store) -> ClusterLog {
        ClusterLog { store, writers: RwLock::default() }
    }

    /// Serves `partition` from now on, writing through `writer` (made with this node's fence,
    /// once `rebuild` has filled the local store).
    pub fn serve(&self, partition: u16, writer: Writer) {
        self.writers.write().expect("not poisoned").insert(partition, Arc::new(writer));
    }

    /// Stops serving `partition` (lost, or its writer stopped).
    pub fn unserve(&self, partition: u16) {
        self.writers.write().expect("not poisoned").remove(&partition);
    }

    /// The partitions served now, with their writers.
    pub fn writers(&self) -> Vec<(u16, Arc<Writer>)> {
        let mut v: Vec<(u16, Arc<Writer>)> = self.writers.read().expect("not poisoned").iter().map(|(p, w)| (*p, w.clone())).collect();
        v.sort_by_key(|(p, _)| *p);
        v
    }

    /// Whether `partition` is served, with a writer that can still write.
    pub fn serves(&self, partition: u16) -> bool {
        self.writer(partition).is_ok()
    }

    fn writer(&self, partition: u16) -> Result<Arc<Writer>, StoreError> {
        match self.writers.read().expect("not poisoned").get(&partition) {
            Some(w) if w.stopped().is_none() => Ok(w.clone()),
            Some(w) => Err(StoreError::Failed(format!("partition {partition}: {}", w.stopped().unwrap_or_default()))),
            None => Err(StoreError::Failed(format!("partition {partition} is not served by this node"))),
        }
    }
}

impl EventLog for ClusterLog {
    fn links(&self, tenant: &str, user: &str) -> Result<Vec<String>, StoreError> {
        self.writer(partition_of(tenant, user))?;
        self.store.links_of(tenant, user)
    }

    fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError> {
        // A record is read only where the user's writes are complete: on a node that serves
        // the partition, whose sled the changelog filled.
        self.writer(partition_of(tenant, user))?;
        self.store.event_id_at(tenant, user, seq)
    }

    fn append(&self, tenant: &str, user: &str, writes: Vec<Write>, done: Done) -> Result<(), StoreError> {
        let writer = self.writer(partition_of(tenant, user))?;
        self.store.failure().map_or(Ok(()), |why| Err(StoreError::Failed(why.to_string())))?;
        let (store, tenant, user) = (self.store.clone(), tenant.to_string(), user.to_string());
        let sled_writes = writes.clone();
        writer.append(&writes, Box::new(move |stored| {
            if let Err(e) = stored {
                return done(Err(e));
            }
            // Once in the changelog, into the local sled; `done` runs when that is durable
            // too. If the store refuses at once, `done` still hears of it.
            let slot = Arc::new(Mutex::new(Some(done)));
            let inner = slot.clone();
            let submitted = EventLog::append(&store, &tenant, &user, sled_writes, Box::new(move |r| {
                if let Some(d) = inner.lock().expect("not poisoned").take() {
                    d(r);
                }
            }));
            if let Err(e) = submitted
                && let Some(d) = slot.lock().expect("not poisoned").take()
            {
                d(Err(e.to_string()));
            }
        }));
        Ok(())
    }

    fn serves(&self, tenant: &str, user: &str) -> bool {
        self.serves(partition_of(tenant, user))
    }

    fn delivery_id(&self, tenant: &str, user: &str) -> Result<u64, StoreError> {
        self.writer(partition_of(tenant, user))?.delivery_id().map_err(StoreError::Failed)
    }

    fn sync(&self) -> Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + '_>> {
        Box::pin(async move {
            // Every writer answers in order, so an empty job answered means every job before
            // it was; then the sled's own sync covers what those jobs passed on to it.
            let writers: Vec<Arc<Writer>> = self.writers.read().expect("not poisoned").values().cloned().collect();
            for w in writers {
                let (tx, rx) = tokio::sync::oneshot::channel();
                w.append(&[], Box::new(move |r| {
                    let _ = tx.send(r);
                }));
                let _ = rx.await;
            }
            self.store.sync().await
        })
    }

    fn failure(&self) -> Option<&str> {
        self.store.failure()
    }

    fn load_user(&self, tenant: &str, user: &str) -> Result<Loaded, StoreError> {
        self.writer(partition_of(tenant, user))?;
        self.store.load_user(tenant, user)
    }

    fn events_after(&self, tenant: &str, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        self.store.events_after(tenant, user, after, limit)
    }

    fn analytics_record(&self, tenant: &str, user: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.store.analytics_record(tenant, user)
    }

    fn community_of(&self, tenant: &str, user: &str) -> Result<Vec<(String, crate::store::Share)>, StoreError> {
        self.store.community_of(tenant, user)
    }

    fn pushes_after(&self, tenant: &str, user: &str, offset: u64, max_events: usize) -> Result<Vec<(u64, Millis, String)>, StoreError> {
        self.store.pushes_after(tenant, user, offset, max_events)
    }
}

/// Fills the local store with a partition's changelog after stream sequence `after`, batch by
/// batch, each durable before the next is read; returns the sequence of the last batch. A node
/// runs this for a partition it gained before it serves it. `seen` is shown each batch (what
/// is built in memory from the store learns which records the partition has).
pub async fn rebuild(store: &Store, log: &PartitionLog, partition: u16, after: u64, seen: &mut (dyn FnMut(&[Write]) + Send)) -> Result<Rebuilt, String> {
    let mut last = after;
    // From the start: the newest base first (the records as of its `upto`), then the batches
    // after it. From a point the newest base has passed, the batches in between may be gone:
    // refused rather than skipped.
    let base = changelog::latest_base(log, partition).await?;
    if let Some(m) = &base
        && after != 0
        && after < m.upto
    {
        return Err(format!("partition {partition}'s changelog is compacted past sequence {after} (to {}): rebuild it from the start", m.upto));
    }
    let mut read = 0;
    if after == 0
        && let Some(m) = base
    {
        let mut pieces = Vec::new();
        changelog::read_base(log, partition, &m, |w| pieces.push(w)).await?;
        read += pieces.len() as u64;
        for writes in pieces {
            seen(&writes);
            store.write(writes).await.map_err(|e| e.to_string())?;
        }
        last = m.upto;
    }
    let mut batches = 0;
    loop {
        let page = changelog::batches(log, partition, last, 64).await?;
        if page.is_empty() {
            return Ok(Rebuilt { last, batches, read: read + batches });
        }
        for (seq, writes) in page {
            seen(&writes);
            store.write(writes).await.map_err(|e| e.to_string())?;
            last = seq;
            batches += 1;
        }
    }
}

/// Where a rebuild got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// The changelog sequence the store now holds everything up to.
    pub last: u64,
    /// The batches read after the base (or from the start, with none): what a compaction
    /// would fold.
    pub batches: u64,
    /// Everything read: the base's pieces and the batches.
    pub read: u64,
}

/// Where a partition's rebuild on this node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this node's checkpoint: its sled holds the partition's changelog up to there,
    /// and every batch after it is still in the changelog.
    Checkpoint(u64),
    /// From the newest base and the batches after it: this node never held the partition,
    /// or the changelog was compacted past its checkpoint.
    Scratch,
}

/// Decides where a rebuild of `partition` starts on a node whose checkpoint for it is
/// `checkpoint`. Asked after the node claimed the partition, so no compaction can pass the
/// checkpoint before the rebuild reads (a base's marker goes through the fence).
pub async fn start_for(log: &PartitionLog, partition: u16, checkpoint: Option<u64>) -> Result<Start, String> {
    let Some(c) = checkpoint.filter(|c| *c > 0) else { return Ok(Start::Scratch) };
    Ok(match changelog::latest_base(log, partition).await? {
        Some(m) if m.upto > c => Start::Scratch,
        _ => Start::Checkpoint(c),
    })
}
