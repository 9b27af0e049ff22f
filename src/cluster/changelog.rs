//! A partition's changelog: the owner's sled writes for the partition's users, batched into
//! the partition log through the owner's fence, and the restore that replays them into
//! another node's sled. It is the Kafka Streams shape: the local store serves, the changelog
//! in the replicated log is the truth, and a node that gains a partition rebuilds its store
//! from it without the old owner's disk.
//!
//! The changelog is physical (tree, key, value), so replaying it needs no rule, catalogue or
//! record format, and replaying a batch twice in a row leaves what once did.

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
}

/// Appends one partition's writes to its changelog, one batch in flight at a time: the jobs
/// that arrive while a batch is being stored go together in the next one (group commit).
/// Each job's `done` runs once its batch is stored with the stream's replication, or with an
/// error once the partition is fenced off (another node claimed it) or NATS did not answer.
pub struct Writer {
    tx: mpsc::UnboundedSender<Job>,
    /// Why the writer stopped, once it has.
    stopped: Arc<OnceLock<String>>,
}

impl Writer {
    /// Starts the writer for the partition that `fence` is for.
    pub fn start(log: PartitionLog, fence: Fence) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel();
        let stopped = Arc::new(OnceLock::new());
        tokio::spawn(run(log, fence, rx, stopped.clone()));
        Writer { tx, stopped }
    }

    /// Why the writer stopped, once it has: then every append fails.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    /// Queues `writes`; `done` says when they are in the changelog.
    pub fn append(&self, writes: &[Write], done: Done) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job { changes: encode(writes), done }) {
            let why = self.stopped.get().cloned().unwrap_or_else(|| "the changelog writer stopped".into());
            (job.done)(Err(why));
        }
    }
}

async fn run(log: PartitionLog, mut fence: Fence, mut rx: mpsc::UnboundedReceiver<Job>, stopped: Arc<OnceLock<String>>) {
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
        let mut bytes = size(&first.changes);
        let mut jobs = vec![first];
        while bytes < BATCH_BYTES {
            match rx.try_recv() {
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
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let result = loop {
            match log.append_with_id(&mut fence, KEY, "writes", &id, body.clone()).await {
                Ok(_) => break Ok(()),
                Err(LogError::Fenced(p)) => break Err(format!("partition {p} was claimed by another node")),
                Err(LogError::Nats(e)) if tokio::time::Instant::now() >= deadline => break Err(format!("the changelog did not answer: {e}")),
                Err(LogError::Nats(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        for j in jobs {
            (j.done)(result.clone());
        }
        if let Err(why) = result {
            // Fenced off, nothing more can be written. And after a batch that failed any other
            // way, nothing may be: the batches after it would be stored without it, and the
            // partition's users' state in memory includes it. The writer stops, with what is
            // queued, and the partition is restored from the changelog before it is written
            // again (`eventlog.rs`).
            let _ = stopped.set(why.clone());
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
