//! Goal ids in cluster mode: the key-value bucket naming each goal id's assignee, so that an id
//! names one goal in a tenant across nodes (a goal itself lives with its assignee, on the node
//! serving her: `api/goals.rs`, `goals.rs`).

use super::node::bucket;
use super::ClusterError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

/// The bucket: key `<tenant hex>.<goal id hex>`, value the assignee.
pub const BUCKET: &str = "accolade-goal-ids";

fn key(tenant: &str, id: &str) -> String {
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    format!("{}.{}", hex(tenant), hex(id))
}

/// The cluster's goal ids.
pub struct GoalIds {
    kv: kv::Store,
}

impl GoalIds {
    /// Opens (or creates) the bucket on the JetStream of `client`.
    pub async fn for_client(client: async_nats::Client, replicas: usize) -> Result<GoalIds, ClusterError> {
        Ok(GoalIds { kv: bucket(&jetstream::new(client), BUCKET, replicas).await? })
    }

    /// Claims goal id `id` of `tenant` for `assignee` (a key-value create, which JetStream grants
    /// once), unless it names a goal already: the assignee it names, this one when the claim is
    /// new.
    pub async fn claim(&self, tenant: &str, id: &str, assignee: &str) -> Result<String, String> {
        match self.kv.create(key(tenant, id), Bytes::from(assignee.to_string())).await {
            Ok(_) => Ok(assignee.to_string()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => self.assignee(tenant, id).await?.ok_or_else(|| format!("goal id `{id}` is being claimed; try again")),
            Err(e) => Err(format!("claiming the goal id failed: {e}")),
        }
    }

    /// The assignee of goal `id` of `tenant`, if the id names a goal.
    pub async fn assignee(&self, tenant: &str, id: &str) -> Result<Option<String>, String> {
        // From the stream's leader: a claim made a moment ago, through any node, is seen.
        match super::node::fresh_entry(&self.kv, &key(tenant, id)).await {
            Ok(v) => Ok(v.map(|(b, _)| String::from_utf8_lossy(&b).into_owned())),
            Err(e) => Err(format!("reading the goal id failed: {e}")),
        }
    }
}
