//! One catalogue history for the whole cluster: each tenant's versions are messages on a
//! subject of their own in a JetStream stream. A node appends a version only after the last one
//! it knows of (the subject's last sequence, checked by JetStream as it stores the message), so
//! two nodes changing a catalogue at once cannot both make the same version: one is refused and
//! says so. Every node reads the history at start and follows the stream from then on.

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The stream of every tenant's catalogue versions.
pub const STREAM: &str = "ACCOLADE_CATALOGUES";

/// The subject of a tenant's versions. Tenant ids are any text, subjects are not: the id is
/// written in hex.
pub fn subject(tenant: &str) -> String {
    let hex: String = tenant.bytes().map(|b| format!("{b:02x}")).collect();
    format!("accolade.catalogue.{hex}")
}

/// The tenant a subject is for, if it is one of `subject`'s.
pub fn tenant_of(subject: &str) -> Option<String> {
    let hex = subject.strip_prefix("accolade.catalogue.")?;
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogLogError {
    /// Another node appended a version after the one this node knew of.
    #[error("another node changed the tenant's catalogue at the same time")]
    Conflict,
    #[error("the catalogue history did not answer: {0}")]
    Nats(String),
}

/// A version as the stream holds it: its stream sequence and its body.
pub struct Entry {
    pub tenant: String,
    pub sequence: u64,
    pub body: Bytes,
}

/// The cluster's catalogue history.
#[derive(Clone)]
pub struct CatalogueLog {
    js: jetstream::Context,
    stream: stream::Stream,
}

impl CatalogueLog {
    /// Opens the stream, creating it with `replicas` copies if it is not there.
    pub async fn for_client(client: async_nats::Client, replicas: usize) -> Result<CatalogueLog, CatalogLogError> {
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec!["accolade.catalogue.*".into()],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| CatalogLogError::Nats(format!("creating stream {STREAM}: {e}")))?;
        Ok(CatalogueLog { js, stream })
    }

    /// The stream's state, once it has a leader.
    pub async fn info(&self) -> Result<stream::Info, String> {
        self.stream.get_info().await.map_err(|e| e.to_string())
    }

    /// Appends a version of `tenant`'s right after the message at stream sequence `after` (0:
    /// the tenant has none yet). `Conflict` if another version came first.
    pub async fn append(&self, tenant: &str, after: u64, body: Bytes) -> Result<u64, CatalogLogError> {
        // JetStream in a cluster refuses a write that checks a subject while another write
        // checking it is being replicated (error 10164; see `log.rs`): two nodes changing one
        // catalogue at once. Once that write is stored, this one is checked against it and is
        // taken or refused as a conflict, so it is sent again, for a bounded time.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let mut h = HeaderMap::new();
            h.insert("Nats-Expected-Last-Subject-Sequence", after.to_string().as_str());
            let ack = self.js.publish_with_headers(subject(tenant), h, body.clone()).await.map_err(|e| CatalogLogError::Nats(e.to_string()))?;
            match ack.await {
                Ok(a) => return Ok(a.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => return Err(CatalogLogError::Conflict),
                Err(e) if e.to_string().contains("10164") && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(CatalogLogError::Nats(e.to_string())),
            }
        }
    }

    /// The stream sequence of `tenant`'s last version, 0 if it has none.
    pub async fn last(&self, tenant: &str) -> Result<u64, CatalogLogError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self.stream.get_last_raw_message_by_subject(&subject(tenant)).await {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(CatalogLogError::Nats(e.to_string())),
        }
    }

    /// `tenant`'s versions after stream sequence `after`, oldest first.
    pub async fn history(&self, tenant: &str, after: u64) -> Result<Vec<Entry>, CatalogLogError> {
        let end = self.last(tenant).await?;
        if end <= after {
            return Ok(Vec::new());
        }
        let mut messages = self.follow_subject(subject(tenant), after).await?;
        let mut out = Vec::new();
        while let Some(e) = messages.next().await {
            let e = e?;
            let done = e.sequence >= end;
            out.push(e);
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Every tenant's versions after stream sequence `after`, as they are appended, for as long
    /// as the stream is read.
    pub async fn follow(&self, after: u64) -> Result<impl Stream<Item = Result<Entry, CatalogLogError>> + Send + use<>, CatalogLogError> {
        self.follow_subject("accolade.catalogue.*".into(), after).await
    }

    async fn follow_subject(&self, filter: String, after: u64) -> Result<impl Stream<Item = Result<Entry, CatalogLogError>> + Send + use<>, CatalogLogError> {
        use async_nats::jetstream::consumer::{self, DeliverPolicy};
        let consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
                ..Default::default()
            })
            .await
            .map_err(|e| CatalogLogError::Nats(e.to_string()))?;
        let messages = consumer.messages().await.map_err(|e| CatalogLogError::Nats(e.to_string()))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| CatalogLogError::Nats(e.to_string()))?;
            let sequence = m.info().map_err(|e| CatalogLogError::Nats(e.to_string()))?.stream_sequence;
            // A message on a subject that names no tenant (not written by a node) is nobody's:
            // an empty tenant, which no node has, so it is passed over.
            let tenant = tenant_of(m.subject.as_str()).unwrap_or_default();
            Ok(Entry { tenant, sequence, body: m.payload.clone() })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant id, whatever its characters, names one subject and comes back from it.
    #[test]
    fn a_tenant_id_names_a_subject_and_comes_back_from_it() {
        for t in ["demo", "acme corp", "a.b>*", "ünï"] {
            let s = subject(t);
            assert!(!s.contains(' ') && s.split('.').count() == 3, "{s}");
            assert_eq!(tenant_of(&s).as_deref(), Some(t), "{s}");
        }
        assert_eq!(subject("demo"), "accolade.catalogue.64656d6f");
        assert_eq!(tenant_of("accolade.catalogue.6"), None);
        assert_eq!(tenant_of("accolade.catalogue.aé1"), None, "not hex, and no panic");
        assert_eq!(tenant_of("accolade.other.64"), None);
    }
}
