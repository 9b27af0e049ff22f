//! Cluster mode on NATS JetStream (issue 21), as far as it is built: which partition a user
//! is in, which node owns each partition through a lease, each partition's fenced log, and
//! the changelog of sled writes in it, messages between nodes, and the catalogue history;
//! docs/cluster.md says what is built and what is to come. Only this module imports
//! `async-nats`.
//!
//! - [`partition`]: a user's partition and a partition's preferred node. Pure.
//! - [`lease`]: the lease state machine, time passed in. Pure.
//! - [`node`]: one node's heartbeat, watches and lease actions on NATS.
//! - [`log`]: each partition's log, written by its owner through a fence.
//! - [`changelog`]: a partition's sled writes in its log, batched, their replay, and its
//!   compaction into a base.
//! - [`eventlog`]: the event log of a cluster node (changelog first, then the local sled),
//!   and the rebuild of a partition's users from the changelog.
//! - [`route`]: messages for a partition's owner over core NATS, and inboxes for replies.
//! - [`catalog`]: the cluster's one history of every tenant's catalogue versions.
//! - [`goals`], [`jobs`], [`hooks`]: key-value buckets for goal ids, backfill jobs and webhook
//!   endpoints.

pub mod catalog;
pub mod changelog;
pub mod eventlog;
pub mod goals;
pub mod hooks;
pub mod jobs;
pub mod lease;
pub mod log;
pub mod node;
pub mod partition;
pub mod route;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no NATS server answered at {urls}: {reason}")]
    Unreachable { urls: String, reason: String },
    #[error("node id {0:?} is not usable: letters, digits, '-' and '_', 1 to 64 of them")]
    BadNodeId(String),
    #[error("setting up the cluster's buckets and streams failed: {0}")]
    Setup(String),
}

/// Connects to the NATS servers at `urls` (comma-separated `nats://host:port`), trying again
/// until `timeout` (servers started at the same moment as this node may not listen yet), then
/// failing with a clear error. Once connected, the client reconnects by itself whenever the
/// connection drops.
pub async fn connect(urls: &str, timeout: Duration) -> Result<async_nats::Client, ClusterError> {
    let unreachable = |reason: String| ClusterError::Unreachable { urls: urls.to_string(), reason };
    let addrs: Vec<async_nats::ServerAddr> =
        urls.split(',').map(|u| u.trim().parse::<async_nats::ServerAddr>().map_err(|e| unreachable(format!("{u:?} is not a NATS address: {e}")))).collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err(unreachable("no address given".into()));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let connect = async_nats::ConnectOptions::new().connection_timeout(left.max(Duration::from_millis(100))).max_reconnects(None).connect(addrs.clone());
        let e = match tokio::time::timeout(left + Duration::from_secs(1), connect).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(unreachable(e));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a joining node waits for JetStream to be ready (a cluster that is starting, or
/// electing a leader, answers "temporarily unavailable" for a few seconds).
pub const SETUP: Duration = Duration::from_secs(60);

/// Runs `f` until it succeeds or `SETUP` has passed, then gives its last error.
pub async fn patiently<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(what: &str, mut f: impl FnMut() -> F) -> Result<T, ClusterError> {
    let deadline = tokio::time::Instant::now() + SETUP;
    for tries in 0u32.. {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(ClusterError::Setup(format!("{what}: {e}"))),
            Err(e) => {
                // Said once, so that a start that waits is seen to wait, and on what.
                if tries == 0 {
                    tracing::warn!(error = %e, "{what}: JetStream is not ready yet; trying again for up to {SETUP:?}");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    unreachable!("the loop above returns")
}

/// Makes every bucket and stream a cluster uses, with `replicas` copies, and waits until each
/// one answers: what `accolade cluster-init` does before the nodes of a new cluster start, so
/// that no node's start waits on JetStream electing the leaders of fresh streams. Returns the
/// names made ready. Opening what is there already changes nothing, so it may be run again.
pub async fn init(client: async_nats::Client, replicas: usize) -> Result<Vec<String>, ClusterError> {
    let js = async_nats::jetstream::new(client.clone());
    let mut ready = Vec::new();
    for name in [node::NODES, node::LEASES, goals::BUCKET, hooks::BUCKET] {
        let kv = node::bucket(&js, name, replicas).await?;
        patiently(&format!("waiting for bucket {name} to answer"), || kv.status()).await?;
        ready.push(name.to_string());
    }
    let jobs = jobs::Jobs::open(&js, replicas).await?;
    patiently(&format!("waiting for bucket {} to answer", jobs::BUCKET), || jobs.status()).await?;
    ready.push(jobs::BUCKET.to_string());
    let partitions = patiently("opening the partition log", || log::PartitionLog::open(js.clone(), replicas)).await?;
    patiently(&format!("waiting for stream {} to answer", log::STREAM), || partitions.info()).await?;
    ready.push(log::STREAM.to_string());
    let catalogue = patiently("opening the catalogue history", || catalog::CatalogueLog::for_client(client.clone(), replicas)).await?;
    patiently(&format!("waiting for stream {} to answer", catalog::STREAM), || catalogue.info()).await?;
    ready.push(catalog::STREAM.to_string());
    Ok(ready)
}

