//! The team records in sled (docs/teams.md): memberships both ways (`links`: a user's teams
//! under her key, a team's members under the team's) and the contributions still to be
//! delivered to teams (`mail`), read by the actors, the mail worker and the API.

use super::*;
use crate::core::Event;
use serde::{Deserialize, Serialize};

/// A membership, as either side keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub since: Millis,
}

/// A contribution to a team: the member's event as the team counts it, and when the member's
/// node received it (the team judges it by that time, however late it is delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailRow {
    pub event: Event,
    pub received_at: Millis,
}

/// A contribution waiting, as the mail worker reads it: whose it is (the sender writes its
/// removal through her own log) and the key that removes it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub tenant: String,
    pub sender: String,
    pub row: MailRow,
    pub key: Vec<u8>,
}

impl Store {
    /// The entities `entity` is linked to, in id order: a user's team entities, or a team's
    /// members.
    pub fn links_of(&self, tenant: &str, entity: &str) -> Result<Vec<String>, StoreError> {
        self.readable()?;
        let p = user_key(tenant, entity);
        let mut out = Vec::new();
        for k in self.links.scan_prefix(&p).keys() {
            out.push(String::from_utf8_lossy(&k?[p.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Up to `limit` rows of mail waiting after key `after` (from the first without it), in
    /// key order (each sender's in the order of her changes).
    pub fn mail_scan(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<Mail>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        let from = match after {
            Some(k) => std::ops::Bound::Excluded(k.to_vec()),
            None => std::ops::Bound::Unbounded,
        };
        for kv in self.mail.range::<Vec<u8>, _>((from, std::ops::Bound::Unbounded)).take(limit) {
            let (k, v) = kv?;
            let mut parts = k.splitn(3, |&b| b == 0);
            let (Some(tenant), Some(sender)) = (parts.next(), parts.next()) else { continue };
            out.push(Mail { tenant: String::from_utf8_lossy(tenant).into_owned(), sender: String::from_utf8_lossy(sender).into_owned(), row: decode(&k, &v)?, key: k.to_vec() });
        }
        Ok(out)
    }
}

/// The writes that link `entity` to `other` (or unlink them), on `entity`'s side.
pub fn link(tenant: &str, entity: &str, other: &str, since: Millis) -> Write {
    Write::Put(TreeId::Links, link_key(tenant, entity, other), encode(&Link { since }))
}

pub fn unlink(tenant: &str, entity: &str, other: &str) -> Write {
    Write::Del(TreeId::Links, link_key(tenant, entity, other))
}

fn link_key(tenant: &str, entity: &str, other: &str) -> Vec<u8> {
    let mut k = user_key(tenant, entity);
    k.extend_from_slice(other.as_bytes());
    k
}

/// A contribution of `sender`'s event number `seq` to `team` (an entity id), in her batch.
pub fn mail(tenant: &str, sender: &str, seq: u64, team: &str, row: &MailRow) -> Write {
    let mut k = seq_key(&user_key(tenant, sender), seq);
    k.extend_from_slice(team.as_bytes());
    Write::Put(TreeId::Mail, k, encode(row))
}

/// The write that removes a delivered contribution.
pub fn mail_done(m: &Mail) -> Write {
    Write::Del(TreeId::Mail, m.key.clone())
}
