//! What a cluster node's sled says about the partitions it holds: how far it holds each
//! partition's changelog (its checkpoint, where a later rebuild on this node starts), and a
//! partition's leaderboard records. Partitions themselves are the cluster's idea (the caller
//! says which users are in one); this module only keeps the numbers.

use super::*;

/// The key of partition `p`'s checkpoint in the default tree (node-local: never in a
/// changelog, like the id counters).
fn checkpoint_key(partition: u16) -> Vec<u8> {
    let mut k = b"checkpoint/".to_vec();
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

impl Store {
    /// The changelog stream sequence up to which this sled holds partition `partition`'s
    /// records, if it ever held any: every batch at or below it is applied here, and none of
    /// another node's after it.
    pub fn checkpoint(&self, partition: u16) -> Result<Option<u64>, StoreError> {
        self.readable()?;
        Ok(self.db.get(checkpoint_key(partition))?.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok()).map(u64::from_be_bytes))
    }

    /// Records, once everything submitted before is durable, that this sled holds partition
    /// `partition`'s changelog up to stream sequence `seq`. The record is written then (after
    /// the flush that made those writes durable) and is itself durable with the next flush;
    /// until then a rebuild starts from the checkpoint before, which only replays more. A
    /// checkpoint never moves back.
    pub fn checkpoint_after_pending(&self, partition: u16, seq: u64) {
        let db = self.db.clone();
        let _ = self.submit(vec![], move |r| {
            if r.is_ok() {
                let _ = db.fetch_and_update(checkpoint_key(partition), |old| {
                    let old = old.and_then(|v| <[u8; 8]>::try_from(v).ok()).map_or(0, u64::from_be_bytes);
                    Some(old.max(seq).to_be_bytes().to_vec())
                });
            }
        });
    }

    /// The scores in the leaderboard records of the users `mine` picks (those of one
    /// partition): what a node that rebuilt a partition from its checkpoint ranks again,
    /// since the records it did not replay are in its sled already.
    pub fn board_entries_where(&self, mine: impl Fn(&str, &str) -> bool) -> Result<Vec<(BoardKey, String, BoardEntry)>, StoreError> {
        self.readable()?;
        let mut out = Vec::new();
        for kv in self.boards.iter() {
            let (k, v) = kv?;
            let mut parts = k[..k.len().saturating_sub(1)].splitn(2, |&b| b == 0);
            let (tenant, user) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
            if mine(&String::from_utf8_lossy(tenant), &String::from_utf8_lossy(user)) {
                board_record(&k, &v, &mut out)?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint is recorded once what was submitted before it is durable, survives a
    /// reopen, and never moves back.
    #[tokio::test]
    async fn a_checkpoint_follows_what_was_written_before_it_and_never_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.checkpoint(7).unwrap(), None);
            store.checkpoint_after_pending(7, 40);
            store.sync().await.unwrap();
            assert_eq!(store.checkpoint(7).unwrap(), Some(40));
            store.checkpoint_after_pending(7, 12);
            store.checkpoint_after_pending(8, 3);
            store.sync().await.unwrap();
            store.sync().await.unwrap();
            assert_eq!((store.checkpoint(7).unwrap(), store.checkpoint(8).unwrap()), (Some(40), Some(3)));
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!((store.checkpoint(7).unwrap(), store.checkpoint(8).unwrap(), store.checkpoint(9).unwrap()), (Some(40), Some(3), None));
    }
}
