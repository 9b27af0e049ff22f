//! Requests for a partition's owner over core NATS: a node that serves a partition answers on
//! its subject, and any node can ask. Nobody answering (the partition is between owners, or
//! its owner died and the lease has not run out) is told at once by NATS ("no responders"),
//! so a caller can say `unavailable` instead of waiting.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The subject a partition's owner answers on.
pub fn subject(partition: u16) -> String {
    format!("accolade.route.{partition}")
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no node serves partition {0} at the moment")]
    NoOwner(u16),
    #[error("the node serving partition {0} did not answer in time")]
    TimedOut(u16),
    #[error("NATS: {0}")]
    Nats(String),
}

/// What answers a request: the request's body in, the reply's body out.
pub type Handler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>;

/// This node's side of routing: its answers for the partitions it serves, and its requests.
pub struct Routes {
    client: async_nats::Client,
    served: Mutex<HashMap<u16, JoinHandle<()>>>,
}

impl Drop for Routes {
    fn drop(&mut self) {
        for (_, t) in self.served.lock().expect("not poisoned").drain() {
            t.abort();
        }
    }
}

impl Routes {
    pub fn new(client: async_nats::Client) -> Routes {
        Routes { client, served: Mutex::default() }
    }

    /// Answers requests for `partition` with `handler`, each in a task of its own, until
    /// `unserve`.
    pub async fn serve(&self, partition: u16, handler: Handler) -> Result<(), RouteError> {
        let mut sub = self.client.subscribe(subject(partition)).await.map_err(|e| RouteError::Nats(e.to_string()))?;
        // The subscription is registered once the server has it: a request sent after this
        // returns finds this node.
        self.client.flush().await.map_err(|e| RouteError::Nats(e.to_string()))?;
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(reply) = m.reply.clone() else { continue };
                let (client, handler) = (client.clone(), handler.clone());
                tokio::spawn(async move {
                    let body = handler(m.payload).await;
                    let _ = client.publish(reply, body).await;
                });
            }
        });
        if let Some(old) = self.served.lock().expect("not poisoned").insert(partition, task) {
            old.abort();
        }
        Ok(())
    }

    /// Stops answering for `partition` (its subscription ends with its task).
    pub fn unserve(&self, partition: u16) {
        if let Some(t) = self.served.lock().expect("not poisoned").remove(&partition) {
            t.abort();
        }
    }

    /// Asks the node serving `partition`.
    pub async fn request(&self, partition: u16, body: Bytes, timeout: Duration) -> Result<Bytes, RouteError> {
        use async_nats::client::RequestErrorKind;
        let req = async_nats::Request::new().payload(body).timeout(Some(timeout));
        match self.client.send_request(subject(partition), req).await {
            Ok(m) => Ok(m.payload),
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Err(RouteError::NoOwner(partition)),
            Err(e) if e.kind() == RequestErrorKind::TimedOut => Err(RouteError::TimedOut(partition)),
            Err(e) => Err(RouteError::Nats(e.to_string())),
        }
    }
}
