//! Each partition's records in JetStream, written only by the partition's owner, and the fence
//! that refuses a stale owner's writes.
//!
//! One stream, `ACCOLADE_PARTITIONS`, holds two kinds of subject per partition: the claims
//! (`accolade.claim.<p>`), and the records under a key (`accolade.log.<p>.<key>`: a user's
//! events and snapshots, so that a user's tail is read alone). A node that gains a partition
//! appends a claim naming its lease revision; its fence is that claim's stream sequence. Every
//! record it writes asks JetStream to store it only if the partition's last claim is still that
//! one (`Nats-Expected-Last-Subject-Sequence` checked against the claims subject, which
//! `Nats-Expected-Last-Subject-Sequence-Subject` names). JetStream checks it as it stores, in
//! the stream's order, so once a newer claim is stored every write through an older fence is
//! refused. A stale write stored before the new claim is simply part of the history the new
//! owner reads after its claim.
//!
//! JetStream in a cluster refuses a write that checks a subject while another write checking
//! the same subject is still being replicated, so a partition has one write in flight at a
//! time (`append` takes the fence mutably). The owner is to batch a partition's records into
//! one message per round, as the sled persister's group commit does for a flush.

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

/// The stream holding every partition's claims and records.
pub const STREAM: &str = "ACCOLADE_PARTITIONS";

/// The subject of a partition's claims.
pub fn claims(partition: u16) -> String {
    format!("accolade.claim.{partition}")
}

/// The subject of a partition's records under `key` (letters, digits, `-` and `_`).
pub fn records(partition: u16, key: &str) -> String {
    format!("accolade.log.{partition}.{key}")
}

/// How long a read waits for its next record before it gives up.
const READ_STALL: std::time::Duration = std::time::Duration::from_secs(10);

const KIND: &str = "Accolade-Kind";
const NODE: &str = "Accolade-Node";
const LEASE: &str = "Accolade-Lease";

/// The right to write a partition's records: the stream sequence of the claim this node made
/// for it, under its lease revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub partition: u16,
    pub node: String,
    /// The lease revision this node holds the partition at.
    pub lease: u64,
    /// The stream sequence of this node's claim.
    pub claim: u64,
}

/// One record as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub kind: String,
    pub node: String,
    pub lease: u64,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another node claimed the partition since this fence was made.
    #[error("partition {0} was claimed by another node: this node no longer owns it")]
    Fenced(u16),
    #[error("the partition log did not answer: {0}")]
    Nats(String),
}

/// The partition logs of a cluster.
#[derive(Clone)]
pub struct PartitionLog {
    js: jetstream::Context,
    stream: stream::Stream,
}

impl PartitionLog {
    /// Opens the stream, creating it with `replicas` copies if it is not there.
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<PartitionLog, LogError> {
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["accolade.claim.*".into(), "accolade.log.*.*".into()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Nats(format!("creating stream {STREAM}: {e}")))?;
        Ok(PartitionLog { js, stream })
    }

    /// The stream's state, once it has a leader.
    pub async fn info(&self) -> Result<stream::Info, String> {
        self.stream.get_info().await.map_err(|e| e.to_string())
    }

    /// `open` on the JetStream of `client`.
    pub async fn for_client(client: async_nats::Client, replicas: usize) -> Result<PartitionLog, LogError> {
        Self::open(jetstream::new(client), replicas).await
    }

    async fn publish(&self, subject: String, headers: HeaderMap, body: Bytes) -> Result<u64, PublishErrorKind> {
        let ack = self.js.publish_with_headers(subject, headers, body).await.map_err(|e| e.kind())?;
        ack.await.map(|a| a.sequence).map_err(|e| e.kind())
    }

    fn headers(kind: &str, node: &str, lease: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(KIND, kind);
        h.insert(NODE, node);
        h.insert(LEASE, lease.to_string().as_str());
        h
    }

    /// Claims `partition` for `node`, which holds its lease at revision `lease`: from the
    /// moment the claim is stored, every write through an older fence is refused.
    pub async fn claim(&self, partition: u16, node: &str, lease: u64) -> Result<Fence, LogError> {
        let seq = self.publish(claims(partition), Self::headers("claim", node, lease), Bytes::new()).await.map_err(|e| LogError::Nats(e.to_string()))?;
        Ok(Fence { partition, node: node.to_string(), lease, claim: seq })
    }

    /// Appends a record under `key` through `fence`; `Fenced` once another node has claimed
    /// the partition. One at a time per partition (see the module's comment).
    pub async fn append(&self, fence: &mut Fence, key: &str, kind: &str, body: Bytes) -> Result<u64, LogError> {
        self.append_maybe_id(fence, key, kind, None, body).await
    }

    /// `append` with a message id: a retry with the same id within the stream's duplicate
    /// window is stored once.
    pub async fn append_with_id(&self, fence: &mut Fence, key: &str, kind: &str, id: &str, body: Bytes) -> Result<u64, LogError> {
        self.append_maybe_id(fence, key, kind, Some(id), body).await
    }

    async fn append_maybe_id(&self, fence: &mut Fence, key: &str, kind: &str, id: Option<&str>, body: Bytes) -> Result<u64, LogError> {
        let mut h = Self::headers(kind, &fence.node, fence.lease);
        if let Some(id) = id {
            h.insert("Nats-Msg-Id", id);
        }
        h.insert("Nats-Expected-Last-Subject-Sequence", fence.claim.to_string().as_str());
        h.insert("Nats-Expected-Last-Subject-Sequence-Subject", claims(fence.partition).as_str());
        match self.publish(records(fence.partition, key), h, body).await {
            Ok(seq) => Ok(seq),
            // Error 10071, "wrong last sequence: N": a newer claim. (A write refused because
            // another one checking the same claim is in flight is 10164, which the client
            // reports as `Other`: not a fence, and retried.)
            Err(PublishErrorKind::WrongLastSequence) => Err(LogError::Fenced(fence.partition)),
            Err(e) => Err(LogError::Nats(e.to_string())),
        }
    }

    /// Stores a record under `key` without the fence: for records that mean nothing until a
    /// fenced one names them (the pieces of a changelog's base, named by its marker), so a
    /// stale owner's are never read.
    pub async fn put(&self, partition: u16, key: &str, kind: &str, node: &str, body: Bytes) -> Result<u64, LogError> {
        self.publish(records(partition, key), Self::headers(kind, node, 0), body).await.map_err(|e| LogError::Nats(e.to_string()))
    }

    /// The last record under `key`, if there is one.
    pub async fn last(&self, partition: u16, key: &str) -> Result<Option<Record>, LogError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(&records(partition, key)).await {
            Ok(m) => {
                let get = |k: &str| m.headers.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
                Ok(Some(Record { sequence: m.sequence, kind: get(KIND), node: get(NODE), lease: get(LEASE).parse().unwrap_or(0), body: m.payload.clone() }))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(LogError::Nats(e.to_string())),
        }
    }

    /// Removes the records under `key` stored before stream sequence `below`; returns how many.
    pub async fn purge(&self, partition: u16, key: &str, below: u64) -> Result<u64, LogError> {
        let r = self.stream.purge().filter(records(partition, key)).sequence(below).await.map_err(|e| LogError::Nats(e.to_string()))?;
        Ok(r.purged)
    }

    /// The messages on `subject` after stream sequence `after`, oldest first, at most `limit`.
    async fn read(&self, subject: String, after: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        use async_nats::jetstream::consumer::{self, DeliverPolicy};
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        use futures_util::StreamExt;
        let end = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m.sequence,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(LogError::Nats(e.to_string())),
        };
        if end <= after || limit == 0 {
            return Ok(Vec::new());
        }
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
                ..Default::default()
            })
            .await
            .map_err(|e| LogError::Nats(e.to_string()))?;
        let mut messages = consumer.messages().await.map_err(|e| LogError::Nats(e.to_string()))?;
        let mut out = Vec::new();
        while out.len() < limit {
            // Bounded: records up to `end` purged meanwhile (a compaction) would leave this
            // waiting for a message that never comes.
            let next = tokio::time::timeout(READ_STALL, messages.next()).await.map_err(|_| LogError::Nats(format!("no record came for {READ_STALL:?} while reading up to sequence {end}")))?;
            let Some(m) = next else { break };
            let m = m.map_err(|e| LogError::Nats(e.to_string()))?;
            let sequence = m.info().map_err(|e| LogError::Nats(e.to_string()))?.stream_sequence;
            let h = m.headers.clone().unwrap_or_default();
            let get = |k: &str| h.get(k).map(|v| v.as_str().to_string()).unwrap_or_default();
            out.push(Record { sequence, kind: get(KIND), node: get(NODE), lease: get(LEASE).parse().unwrap_or(0), body: m.payload.clone() });
            if sequence >= end {
                break;
            }
        }
        Ok(out)
    }

    /// The records under `key` after stream sequence `after`, oldest first, at most `limit`.
    pub async fn records(&self, partition: u16, key: &str, after: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        self.read(records(partition, key), after, limit).await
    }

    /// The partition's claims after stream sequence `after`, oldest first, at most `limit`.
    pub async fn claims(&self, partition: u16, after: u64, limit: usize) -> Result<Vec<Record>, LogError> {
        self.read(claims(partition), after, limit).await
    }
}
