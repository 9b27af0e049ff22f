//! Messages for a partition's owner over core NATS: a node that serves a partition answers on
//! its subject, and any node can ask, or send with an inbox of its own for what comes back.
//! Nobody answering (the partition is between owners, or its owner died and the lease has not
//! run out) is told at once by NATS ("no responders"), so a caller can say `unavailable`
//! instead of waiting.

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

/// A message for a partition's owner: its body, and where an answer goes, if anywhere.
pub struct Incoming {
    pub body: Bytes,
    pub reply: Option<String>,
}

/// What handles the messages of a partition. It is called for each message in the order they
/// arrived, before the next one is looked at (so whatever it hands on keeps the sender's
/// order); the future it may return makes the reply, in a task of its own.
pub type Handler = Arc<dyn Fn(Incoming) -> Option<BoxFuture<'static, Bytes>> + Send + Sync>;

/// What arrives on an inbox.
pub enum Note {
    Message(Bytes),
    /// A message sent with this inbox for its reply found nobody serving its partition.
    NoResponders,
}

/// A subscription to an inbox of this node's; dropping it unsubscribes.
pub struct Inbox(async_nats::Subscriber);

impl Inbox {
    /// The next note, or `None` once the connection is gone for good.
    pub async fn next(&mut self) -> Option<Note> {
        let m = self.0.next().await?;
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Some(Note::NoResponders);
        }
        Some(Note::Message(m.payload))
    }
}

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
                let reply = m.reply.map(|r| r.to_string());
                let answer = handler(Incoming { body: m.payload, reply: reply.clone() });
                if let (Some(answer), Some(reply)) = (answer, reply) {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let body = answer.await;
                        let _ = client.publish(reply, body).await;
                    });
                }
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

    /// A fresh inbox subject, unique to this connection.
    pub fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    /// Listens on `inbox`; registered with the server once this returns.
    pub async fn listen(&self, inbox: &str) -> Result<Inbox, RouteError> {
        let sub = self.client.subscribe(inbox.to_string()).await.map_err(|e| RouteError::Nats(e.to_string()))?;
        self.client.flush().await.map_err(|e| RouteError::Nats(e.to_string()))?;
        Ok(Inbox(sub))
    }

    /// Sends to the node serving `partition`, its answers (if any) to go to `inbox`. Messages
    /// sent one after another by one task arrive in that order.
    pub async fn send(&self, partition: u16, body: Bytes, inbox: &str) -> Result<(), RouteError> {
        self.client.publish_with_reply(subject(partition), inbox.to_string(), body).await.map_err(|e| RouteError::Nats(e.to_string()))
    }

    /// Sends to an inbox.
    pub async fn tell(&self, inbox: &str, body: Bytes) -> Result<(), RouteError> {
        self.client.publish(inbox.to_string(), body).await.map_err(|e| RouteError::Nats(e.to_string()))
    }

    /// Answers every message on `subject` with `answer`, each in a task of its own. Every node
    /// listens on it (no queue group), so a message sent there is answered by all of them.
    pub async fn answer_all(&self, subject: &str, answer: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>) -> Result<JoinHandle<()>, RouteError> {
        let mut sub = self.client.subscribe(subject.to_string()).await.map_err(|e| RouteError::Nats(e.to_string()))?;
        self.client.flush().await.map_err(|e| RouteError::Nats(e.to_string()))?;
        let client = self.client.clone();
        Ok(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Some(reply) = m.reply else { continue };
                let (client, body) = (client.clone(), answer(m.payload));
                tokio::spawn(async move {
                    let body = body.await;
                    let size = body.len();
                    // Said, not dropped silently: the asker sees this node's partitions
                    // unanswered (an answer larger than the server's `max_payload`, say).
                    if let Err(e) = client.publish(reply, body).await {
                        tracing::warn!(bytes = size, error = %e, "an answer to another node could not be sent");
                    }
                });
            }
        }))
    }

    /// Asks every node listening on `subject` and gathers their answers, until `enough` says
    /// the ones so far are enough or `timeout` has passed; returns those that came.
    pub async fn gather(&self, subject: &str, body: Bytes, timeout: Duration, mut enough: impl FnMut(&[Bytes]) -> bool) -> Result<Vec<Bytes>, RouteError> {
        let inbox = self.new_inbox();
        let mut sub = self.listen(&inbox).await?;
        self.client.publish_with_reply(subject.to_string(), inbox, body).await.map_err(|e| RouteError::Nats(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while !enough(&got) {
            match tokio::time::timeout_at(deadline, sub.next()).await {
                Ok(Some(Note::Message(b))) => got.push(b),
                Ok(Some(Note::NoResponders)) | Ok(None) | Err(_) => break,
            }
        }
        Ok(got)
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
