//! The webhook records in sled: each endpoint's outbox (notifications still to deliver) and
//! delivery log (how the last ones ended), read by the delivery workers and the API, and the
//! writes that trim, clear and forget them.

use super::*;

impl Store {
    /// Notifications waiting for a webhook endpoint, oldest first, handed to `more` one by one
    /// until it answers false or `cap` were read (the worker reads only as deep as the head of
    /// its line, past the rows set aside and those waiting behind them).
    pub fn outbox_scan<T: serde::de::DeserializeOwned>(&self, tenant: &str, hook: u64, cap: usize, mut more: impl FnMut(u64, T) -> bool) -> Result<(), StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        for kv in self.outbox.scan_prefix(&p).take(cap) {
            let (k, v) = kv?;
            let id = u64::from_be_bytes(k[p.len()..].try_into().unwrap_or_default());
            if !more(id, decode(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }

    /// One notification waiting for a webhook endpoint, if it still waits.
    pub fn outbox_get<T: serde::de::DeserializeOwned>(&self, tenant: &str, hook: u64, id: u64) -> Result<Option<T>, StoreError> {
        self.readable()?;
        let k = seq_key(&hook_prefix(tenant, hook), id);
        match self.outbox.get(&k)? {
            Some(v) => Ok(Some(decode(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// An endpoint's finished deliveries, newest first, with ids below `before`, handed to
    /// `more` one by one until it answers false.
    pub fn hook_log_scan<T: serde::de::DeserializeOwned>(&self, tenant: &str, hook: u64, before: Option<u64>, mut more: impl FnMut(u64, T) -> bool) -> Result<(), StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        for kv in self.hooklog.range(seq_key(&p, 0)..seq_key(&p, before.unwrap_or(u64::MAX))).rev() {
            let (k, v) = kv?;
            let id = u64::from_be_bytes(k[p.len()..].try_into().unwrap_or_default());
            if !more(id, decode(&k, &v)?) {
                break;
            }
        }
        Ok(())
    }

    /// The writes that remove outbox rows whose endpoint `exists` says is gone.
    pub fn outbox_orphans(&self, exists: impl Fn(&str, u64) -> bool) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for k in self.outbox.iter().keys() {
            let k = k?;
            let Some(split) = k.iter().position(|&b| b == 0) else { continue };
            let Some(hook) = k.get(split + 1..split + 9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { continue };
            if !exists(&String::from_utf8_lossy(&k[..split]), hook) {
                out.push(Write::Del(TreeId::Outbox, k.to_vec()));
            }
        }
        Ok(out)
    }

    /// The writes that remove everything of an endpoint: its record, outbox and log.
    pub fn drop_hook(&self, tenant: &str, hook: u64) -> Result<Vec<Write>, StoreError> {
        self.readable()?;
        let p = hook_prefix(tenant, hook);
        let mut out = vec![writes::delete(Kind::Webhook, tenant, hook)];
        for (tree, id) in [(&self.outbox, TreeId::Outbox), (&self.hooklog, TreeId::HookLog)] {
            for k in tree.scan_prefix(&p).keys() {
                out.push(Write::Del(id, k?.to_vec()));
            }
        }
        Ok(out)
    }

    /// The writes that remove the outbox and delivery-log rows `remove` picks, given each
    /// row's tenant and the body of its notification (which names the user): what a cluster
    /// node clears of a partition before it rebuilds the partition from its changelog, so that
    /// rows delivered meanwhile by another node are not found here again.
    pub fn hook_rows_where(&self, mut remove: impl FnMut(&str, &str) -> bool) -> Result<Vec<Write>, StoreError> {
        Ok(self.hook_rows(|tenant, _, body| remove(tenant, body).then_some(()))?.into_iter().map(|(_, w)| w).collect())
    }

    /// The outbox and delivery-log rows `pick` names, each with what it said of the row and
    /// the write that removes it. `pick` is given the row's tenant, endpoint and the body of
    /// its notification (which names the user).
    pub fn hook_rows<T>(&self, mut pick: impl FnMut(&str, u64, &str) -> Option<T>) -> Result<Vec<(T, Write)>, StoreError> {
        self.readable()?;
        #[derive(serde::Deserialize)]
        struct Body {
            #[allow(dead_code)]
            kind: String,
            body: String,
        }
        let mut out = Vec::new();
        for (tree, id) in [(&self.outbox, TreeId::Outbox), (&self.hooklog, TreeId::HookLog)] {
            for kv in tree.iter() {
                let (k, v) = kv?;
                let Some(split) = k.iter().position(|&b| b == 0) else { continue };
                let Some(hook) = k.get(split + 1..split + 9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) else { continue };
                // Both rows (`Pending`, `Finished`) begin with their kind and body, and bincode
                // reads a struct's fields in order: the rest of the row is left unread.
                let row: Body = decode(&k, &v)?;
                if let Some(t) = pick(&String::from_utf8_lossy(&k[..split]), hook, &row.body) {
                    out.push((t, Write::Del(id, k.to_vec())));
                }
            }
        }
        Ok(out)
    }
}
