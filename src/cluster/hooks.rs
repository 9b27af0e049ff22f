//! Webhook endpoints in cluster mode: the key-value bucket holding each tenant's endpoints as
//! one record, changed by compare-and-set, and watched by every node (which starts a delivery
//! worker per endpoint for the users it serves: `webhooks.rs`). The record is opaque here
//! (`webhooks::Endpoints`, as JSON).

use super::node::bucket;
use super::ClusterError;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::mpsc;

/// The bucket: key the tenant in hex, value the tenant's endpoints.
pub const BUCKET: &str = "accolade-webhooks";

fn key(tenant: &str) -> String {
    tenant.bytes().map(|b| format!("{b:02x}")).collect()
}

fn tenant_of(key: &str) -> Option<String> {
    let bytes: Option<Vec<u8>> = (0..key.len()).step_by(2).map(|i| key.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    bytes.and_then(|b| String::from_utf8(b).ok())
}

/// The cluster's webhook endpoints.
pub struct HookBucket {
    kv: kv::Store,
}

impl HookBucket {
    /// Opens (or creates) the bucket on the JetStream of `client`.
    pub async fn for_client(client: async_nats::Client, replicas: usize) -> Result<HookBucket, ClusterError> {
        Ok(HookBucket { kv: bucket(&jetstream::new(client), BUCKET, replicas).await? })
    }

    /// A tenant's record and its revision (for `put`), if it has one.
    pub async fn get(&self, tenant: &str) -> Result<Option<(Bytes, u64)>, String> {
        // From the stream's leader: an endpoint registered a moment ago is listed.
        super::node::fresh_entry(&self.kv, &key(tenant)).await.map_err(|e| format!("reading the webhook endpoints failed: {e}"))
    }

    /// Stores a tenant's record if it is still at `revision` (`None`: if it has none yet).
    /// `Ok(false)` when another node changed it first: read it again and redo the change.
    pub async fn put(&self, tenant: &str, value: Bytes, revision: Option<u64>) -> Result<bool, String> {
        let k = key(tenant);
        match revision {
            None => match self.kv.create(&k, value).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(format!("storing the webhook endpoints failed: {e}")),
            },
            Some(r) => match self.kv.update(&k, value, r).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) => Err(format!("storing the webhook endpoints failed: {e}")),
            },
        }
    }

    /// Every tenant's record as it is now, then each change (an empty record: deleted), for
    /// as long as the receiver is kept, caught up again after any reconnect.
    pub fn follow(&self) -> mpsc::UnboundedReceiver<(String, Bytes)> {
        let mut changes = super::node::follow_bucket(self.kv.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some((key, value)) = changes.recv().await {
                let Some(tenant) = tenant_of(&key) else { continue };
                if tx.send((tenant, value.unwrap_or_default())).is_err() {
                    return;
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenants_key_names_it_back() {
        for t in ["demo", "ü-tenant_1", ""] {
            assert_eq!(super::tenant_of(&super::key(t)).as_deref(), Some(t));
        }
        assert_eq!(super::tenant_of("zz"), None);
    }
}
