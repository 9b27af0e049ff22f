//! A partition's changelog: the owner's sled writes for the partition's users, batched into
//! the partition log through the owner's fence, and the restore that replays them into
//! another node's sled. It is the Kafka Streams shape: the local store serves, the changelog
//! in the replicated log is the truth, and a node that gains a partition rebuilds its store
//! from it without the old owner's disk.
//!
//! The changelog is physical (tree, key, value), so replaying it needs no rule, catalogue or
//! record format, and replaying a batch twice in a row leaves what once did. Its owner
//! compacts it now and then (`compact`): the records folded into a base, named by a marker
//! written through the fence, and only then the batches it covers removed.

use super::log::{Fence, LogError, PartitionLog};
use crate::store::{Done, TreeId, Write};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

/// The key of the changelog's records in a partition's log.
pub const KEY: &str = "changes";

/// A batch's encoded size past which no more jobs are added to it: well under NATS's default
/// `max_payload` of 1 MiB, with room for the headers. A single job larger than this goes alone.
const BATCH_BYTES: usize = 512 * 1024;

/// How long a batch is retried when NATS does not answer before its jobs are failed. A retry
/// carries the batch's message id, so one that was stored after all is stored once (the
/// stream's duplicate window is two minutes). Long enough to ride out the election of a new
/// stream leader after one died: with 5 s (one attempt, as a publish waits 5 s for its
/// acknowledgement) every partition's writer failed during the election, every partition was
/// let go of and rebuilt, and rebuilding while the lost server's consumers were being moved
/// timed out for half a minute. A node that loses its lease meanwhile lets the partition go,
/// and this writer with it.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// One write, as the changelog stores it. `value` is `None` for a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Change {
    tree: u8,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Batch {
    changes: Vec<Change>,
}

fn encode(writes: &[Write]) -> Vec<Change> {
    writes
        .iter()
        .map(|w| match w {
            Write::Put(t, k, v) => Change { tree: t.code(), key: k.clone(), value: Some(v.clone()) },
            Write::Del(t, k) => Change { tree: t.code(), key: k.clone(), value: None },
        })
        .collect()
}

fn decode(body: &[u8]) -> Result<Vec<Write>, String> {
    let (batch, _): (Batch, usize) = bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|e| format!("a changelog batch does not decode: {e}"))?;
    batch
        .changes
        .into_iter()
        .map(|c| {
            let t = TreeId::from_code(c.tree).ok_or_else(|| format!("a changelog batch names tree {}, which this version does not know", c.tree))?;
            Ok(match c.value {
                Some(v) => Write::Put(t, c.key, v),
                None => Write::Del(t, c.key),
            })
        })
        .collect()
}

fn size(changes: &[Change]) -> usize {
    changes.iter().map(|c| c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 8).sum()
}

struct Job {
    changes: Vec<Change>,
    done: Done,
    /// A base's marker, appended alone through the fence instead of a batch (`compact`), and
    /// where the sequence it is stored at goes.
    marker: Option<(Bytes, Arc<std::sync::atomic::AtomicU64>)>,
}

/// Appends one partition's writes to its changelog, one batch in flight at a time: the jobs
/// that arrive while a batch is being stored go together in the next one (group commit).
/// Each job's `done` runs once its batch is stored with the stream's replication, or with an
/// error once the partition is fenced off (another node claimed it) or NATS did not answer.
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    /// Why the writer stopped, once it has.
    stopped: Arc<OnceLock<String>>,
    /// The sequence of the claim this writer writes under.
    claim: u64,
    /// Batches in the changelog since its last base (counting those a rebuild read): when
    /// to compact.
    since_base: Arc<std::sync::atomic::AtomicU64>,
    /// Webhook notification ids given under this claim (`delivery_id`).
    deliveries: std::sync::atomic::AtomicU64,
}

/// The bits of a webhook notification id that count the ids given under one claim; the bits
/// above them are the claim's stream sequence.
pub const DELIVERY_BITS: u32 = 20;

impl Writer {
    /// Starts the writer for the partition that `fence` is for.
    pub fn start(log: PartitionLog, fence: Fence) -> Writer {
        Writer::start_after(log, fence, 0, Box::new(|_| {}))
    }

    /// `start`, for a changelog that has `since_base` batches after its last base. `stored`
    /// hears each batch's stream sequence once the batch's jobs have been told it is stored
    /// (and have passed its writes on to the local sled): where the node's checkpoint goes.
    pub fn start_after(log: PartitionLog, fence: Fence, since_base: u64, stored: Box<dyn Fn(u64) + Send + Sync>) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let stopped = Arc::new(OnceLock::new());
        let since = Arc::new(std::sync::atomic::AtomicU64::new(since_base));
        let claim = fence.claim;
        tokio::spawn(run(log, fence, rx, stopped.clone(), since.clone(), stored));
        Writer { tx, stopped, claim, since_base: since, deliveries: Default::default() }
    }

    /// Batches in the changelog since its last base.
    pub fn since_base(&self) -> u64 {
        self.since_base.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Appends a base's marker through the fence, in turn with the batches.
    async fn mark(&self, body: Bytes) -> Result<u64, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seq_tx = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let job = Job { changes: vec![], done: Box::new(move |r| drop(tx.send(r))), marker: Some((body, seq_tx.clone())) };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            (job.done)(Err(self.stopped.get().cloned().unwrap_or_else(|| "the changelog writer stopped".into())));
        }
        rx.await.map_err(|_| "the changelog writer stopped".to_string())??;
        Ok(seq_tx.load(std::sync::atomic::Ordering::Acquire))
    }

    /// A fresh webhook notification id for one of the partition's users: the claim's stream
    /// sequence above `DELIVERY_BITS` bits counting the ids given under it. A claim's sequence
    /// is unique in the stream every partition shares, and a later owner's claim is higher, so
    /// no id is given twice in the cluster and a user's ids rise through her moves, with no
    /// counter to store or to hand over. The ids stay below 2^53, as JavaScript reads numbers
    /// exactly. Once a claim's ids run out (a million of them), the writer stops: the partition
    /// is claimed anew and rebuilt, and the new claim gives the next ids.
    pub fn delivery_id(&self) -> Result<u64, String> {
        let n = self.deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n >= 1 << DELIVERY_BITS || self.claim >= 1 << (53 - DELIVERY_BITS) {
            let why = "this claim's webhook notification ids ran out; the partition is claimed anew".to_string();
            let _ = self.stopped.set(why.clone());
            return Err(why);
        }
        Ok(self.claim << DELIVERY_BITS | n)
    }

    /// Why the writer stopped, once it has: then every append fails.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Queues `writes`; `done` says when they are in the changelog.
    pub fn append(&self, writes: &[Write], done: Done) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { changes: encode(writes), done, marker: None }) {
            let why = self.stopped.get().cloned().unwrap_or_else(|| "the changelog writer stopped".into());
            (job.done)(Err(why));
        }
    }
}

async fn run(log: PartitionLog, mut fence: Fence, mut rx: mpsc::UnboundedReceiver<Job>, stopped: Arc<OnceLock<String>>, since_base: Arc<std::sync::atomic::AtomicU64>, stored: Box<dyn Fn(u64) + Send + Sync>) {
    let mut batch_no = 0u64;
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        if let Some((body, stored_at)) = first.marker {
            // Fenced like a batch: a node that lost the partition stores no marker, and so
            // never names its base, nor removes anything after it.
            batch_no += 1;
            let id = format!("{}.{}.{batch_no}", fence.partition, fence.claim);
            let r = log.append_with_id(&mut fence, MARKER, "marker", &id, body).await.map(|seq| stored_at.store(seq, std::sync::atomic::Ordering::Release)).map_err(|e| e.to_string());
            (first.done)(r);
            continue;
        }
        let mut bytes = size(&first.changes);
        let mut jobs = vec![first];
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(j) if j.marker.is_some() => {
                    next = Some(j);
                    break;
                }
                Ok(j) => {
                    let n = size(&j.changes);
                    if bytes + n > BATCH_BYTES {
                        next = Some(j);
                        break;
                    }
                    bytes += n;
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let changes: Vec<Change> = jobs.iter_mut().flat_map(|j| std::mem::take(&mut j.changes)).collect();
        // Only empty jobs (a `sync`'s marker): everything before them is stored, since batches
        // go one at a time, and there is nothing to write.
        if changes.is_empty() {
            for j in jobs {
                (j.done)(Ok(()));
            }
            continue;
        }
        let body = Bytes::from(bincode::serde::encode_to_vec(&Batch { changes }, bincode::config::standard()).expect("a batch encodes"));
        batch_no += 1;
        // Unique per claim and batch: a retry of this batch is a duplicate, a later owner's
        // batches are not.
        let id = format!("{}.{}.{batch_no}", fence.partition, fence.claim);
        let started = tokio::time::Instant::now();
        let deadline = started + RETRY_FOR;
        let mut said = false;
        let result = loop {
            match log.append_with_id(&mut fence, KEY, "writes", &id, body.clone()).await {
                Ok(seq) => break Ok(seq),
                Err(LogError::Fenced(p)) => break Err(format!("partition {p} was claimed by another node")),
                Err(LogError::Nats(e)) if tokio::time::Instant::now() >= deadline => break Err(format!("the changelog did not answer: {e}")),
                Err(LogError::Nats(e)) => {
                    // Said once per batch, after a few seconds: a partition whose writes wait
                    // on JetStream (an election) is seen to wait, and on what.
                    if !said && started.elapsed() > Duration::from_secs(5) {
                        said = true;
                        tracing::warn!(partition = fence.partition, batch = batch_no, error = %e, "a changelog batch is not stored yet; still trying");
                    }
                    tracing::debug!(partition = fence.partition, batch = batch_no, error = %e, "a changelog batch was not stored; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
            }
        };
        if said {
            tracing::info!(partition = fence.partition, batch = batch_no, ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "a changelog batch that waited is done");
        }
        match &result {
            Ok(_) => {
                since_base.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Stopped before anyone hears of the failure: whoever is told that a write failed
            // finds the writer stopped, and the partition no longer served by it.
            Err(why) => {
                let _ = stopped.set(why.clone());
            }
        }
        for j in jobs {
            (j.done)(result.clone().map(|_| ()));
        }
        if let Ok(seq) = result {
            stored(seq);
        }
        if let Err(why) = result {
            // Fenced off, nothing more can be written. And after a batch that failed any other
            // way, nothing may be: the batches after it would be stored without it, and the
            // partition's users' state in memory includes it. The writer stops (above), with
            // what is queued, and the partition is restored from the changelog before it is
            // written again (`eventlog.rs`).
            if let Some(j) = next.take() {
                (j.done)(Err(why.clone()));
            }
            rx.close();
            while let Some(j) = rx.recv().await {
                (j.done)(Err(why.clone()));
            }
            return;
        }
    }
}

/// The changelog's batches after stream sequence `after`, oldest first, at most `limit`, each
/// with its stream sequence.
pub async fn batches(log: &PartitionLog, partition: u16, after: u64, limit: usize) -> Result<Vec<(u64, Vec<Write>)>, String> {
    let page = log.records(partition, KEY, after, limit).await.map_err(|e| e.to_string())?;
    page.into_iter().map(|r| Ok((r.sequence, decode(&r.body)?))).collect()
}

/// Replays a partition's changelog after stream sequence `after` into `apply`, batch by batch
/// in order; returns the sequence of the last batch replayed (`after` if there was none).
pub async fn restore(log: &PartitionLog, partition: u16, after: u64, mut apply: impl FnMut(Vec<Write>)) -> Result<u64, String> {
    let mut last = after;
    loop {
        let page = batches(log, partition, last, 256).await?;
        if page.is_empty() {
            return Ok(last);
        }
        for (seq, writes) in page {
            apply(writes);
            last = seq;
        }
    }
}

/// The key of a base's pieces in a partition's log.
pub const BASE: &str = "base";
/// The key of the markers that name a complete base.
pub const MARKER: &str = "based";

/// A complete base: the partition's records as of changelog sequence `upto`, in `pieces`
/// pieces stored under [`BASE`] at sequences `first..=last` with the kind `base <id>` (a
/// stale owner's pieces may lie between them, with another id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub id: String,
    pub first: u64,
    pub last: u64,
    pub pieces: u32,
    pub upto: u64,
}

/// The newest complete base of a partition, if it has one.
pub async fn latest_base(log: &PartitionLog, partition: u16) -> Result<Option<Marker>, String> {
    let Some(r) = log.last(partition, MARKER).await.map_err(|e| e.to_string())? else { return Ok(None) };
    let (m, _): (Marker, usize) = bincode::serde::decode_from_slice(&r.body, bincode::config::standard()).map_err(|e| format!("a base marker does not decode: {e}"))?;
    Ok(Some(m))
}

/// Reads a base's pieces in order into `apply`; an error if one is missing.
pub async fn read_base(log: &PartitionLog, partition: u16, m: &Marker, mut apply: impl FnMut(Vec<Write>)) -> Result<(), String> {
    let kind = format!("base {}", m.id);
    let (mut after, mut seen) = (m.first.saturating_sub(1), 0u32);
    while seen < m.pieces {
        let page = log.records(partition, BASE, after, 64).await.map_err(|e| e.to_string())?;
        if page.is_empty() {
            break;
        }
        for r in page {
            after = r.sequence;
            if r.sequence > m.last {
                break;
            }
            if r.kind == kind {
                apply(decode(&r.body)?);
                seen += 1;
            }
        }
        if after >= m.last {
            break;
        }
    }
    if seen != m.pieces {
        return Err(format!("partition {partition}'s base {} has {seen} of its {} pieces", m.id, m.pieces));
    }
    Ok(())
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The changelog batches folded in (after the previous base).
    pub batches: u64,
    /// Records in the new base, and its pieces.
    pub records: usize,
    pub pieces: u32,
    /// Messages removed from the log: the batches and the older base.
    pub removed: u64,
}

/// Compacts a partition's changelog, by its owner (whose `writer` it is): the last base and
/// the batches after it are folded into a store of their own, events older than `cutoff`
/// (already in a snapshot) swept as retention sweeps them, and the records written as a new
/// base; its marker goes through the fence, and only then are the batches and the base it
/// covers removed. A node that takes the partition over reads the newest base, then the
/// batches after it: what a replay of the whole history (then swept) would give. Replaying a
/// base over a store that has older records of the partition leaves what replaying the
/// history would, as the changelog holds no deletes; an event a base left out is left out by
/// that node's own retention sweep too.
pub async fn compact(log: &PartitionLog, writer: &Writer, partition: u16, node: &str, cutoff: Option<crate::core::Millis>) -> Result<Option<Compacted>, String> {
    let since = writer.since_base();
    let prev = latest_base(log, partition).await?;
    let tmp = crate::store::Store::open_temporary().map_err(|e| e.to_string())?;
    let mut writes = Vec::new();
    if let Some(m) = &prev {
        read_base(log, partition, m, |w| writes.push(w)).await?;
    }
    for w in writes {
        tmp.write(w).await.map_err(|e| e.to_string())?;
    }
    let from = prev.as_ref().map_or(0, |m| m.upto);
    let mut upto = from;
    let mut batches = 0;
    loop {
        let page = self::batches(log, partition, upto, 256).await?;
        if page.is_empty() {
            break;
        }
        for (seq, w) in page {
            tmp.write(w).await.map_err(|e| e.to_string())?;
            upto = seq;
            batches += 1;
        }
    }
    if batches == 0 {
        return Ok(None);
    }
    let contents = tokio::task::spawn_blocking(move || {
        if let Some(c) = cutoff {
            tmp.sweep(c)?;
        }
        tmp.contents()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let records = contents.len();
    // The pieces, each under the size of a batch.
    let id = format!("{}.{}", writer.claim, upto);
    let kind = format!("base {id}");
    let (mut first, mut last, mut pieces) = (0, 0, 0u32);
    // Cut like the batches: a piece is closed before a change would take it past the size.
    let mut cut: Vec<Vec<Change>> = vec![Vec::new()];
    let mut bytes = 0;
    for c in encode(&contents) {
        let n = c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 8;
        if bytes + n > BATCH_BYTES && !cut.last().is_some_and(Vec::is_empty) {
            cut.push(Vec::new());
            bytes = 0;
        }
        bytes += n;
        cut.last_mut().expect("one piece at least").push(c);
    }
    for changes in cut.into_iter().filter(|c| !c.is_empty()) {
        let body = Bytes::from(bincode::serde::encode_to_vec(&Batch { changes }, bincode::config::standard()).expect("a piece encodes"));
        let seq = log.put(partition, BASE, &kind, node, body).await.map_err(|e| e.to_string())?;
        if first == 0 {
            first = seq;
        }
        last = seq;
        pieces += 1;
    }
    let marker = Marker { id, first, last, pieces, upto };
    let marked = writer.mark(Bytes::from(bincode::serde::encode_to_vec(&marker, bincode::config::standard()).expect("a marker encodes"))).await?;
    // Counted from the base on: the batches stored since this compaction began stay.
    writer.since_base.fetch_sub(since.min(batches), std::sync::atomic::Ordering::Relaxed);
    // Named by the marker just stored: what it covers can go (the batches up to `upto`, the
    // older base's pieces, the older markers), each purge strictly below a sequence of this
    // compaction's own (never 0, which would purge the whole subject; never a later owner's
    // marker, whose base would go with it).
    if marked == 0 {
        return Err("the marker's sequence did not come back".into());
    }
    let mut removed = log.purge(partition, KEY, upto + 1).await.map_err(|e| e.to_string())?;
    removed += log.purge(partition, BASE, if pieces > 0 { first } else { marked }).await.map_err(|e| e.to_string())?;
    removed += log.purge(partition, MARKER, marked).await.map_err(|e| e.to_string())?;
    Ok(Some(Compacted { batches, records, pieces, removed }))
}
