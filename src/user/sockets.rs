//! Push delivery: the sockets of one user that this process holds, and the only way a frame
//! reaches them. A socket whose bounded outbox is full is a slow client and is let go (its
//! session closes it), so one client never holds up its user's actor.
//!
//! In cluster mode a socket another node holds is here too, as a connection like any other:
//! its outbox is drained onto NATS by `remote.rs`, so the actor does not know the difference.

use super::Conn;
use crate::metrics::Metrics;
use crate::protocol::Frame;
use tokio::sync::mpsc;

/// The sockets of one user held by this process.
#[derive(Default)]
pub struct Sockets {
    conns: Vec<Conn>,
}

impl Sockets {
    /// How many sockets are held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Holds a socket that has had its welcome.
    pub fn add(&mut self, conn: Conn) {
        self.conns.push(conn);
    }

    /// Lets a socket go (its session ended).
    pub fn remove(&mut self, conn_id: u64) {
        self.conns.retain(|c| c.id != conn_id);
    }

    /// A frame for one socket (an ack or an error), if it is still held.
    pub fn one(&mut self, conn_id: u64, f: Frame, m: &Metrics) {
        if let Some(i) = self.conns.iter().position(|c| c.id == conn_id) {
            self.send_to(i, f, m);
        }
    }

    /// A push, to every socket of the user.
    pub fn all(&mut self, f: &Frame, m: &Metrics) {
        let mut i = 0;
        while i < self.conns.len() {
            if self.send_to(i, f.clone(), m) {
                i += 1;
            }
        }
    }

    /// Tells every socket why it is about to close (the session sends this code once it has
    /// written what was queued).
    pub fn closing(&self, code: u16, why: &'static str) {
        for c in &self.conns {
            let _ = c.closing.set((code, why));
        }
    }

    /// Writes to socket `i`; a full outbox means a slow client, which is let go. Returns
    /// whether the socket is still held.
    fn send_to(&mut self, i: usize, f: Frame, m: &Metrics) -> bool {
        match self.conns[i].tx.try_send(f) {
            Ok(()) => {
                m.pushes.inc();
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.conns[i].slow.notify_one();
                m.slow_closed.inc();
                self.conns.swap_remove(i);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.conns.swap_remove(i);
                false
            }
        }
    }
}
