//! Each user's index of the event ids in her log: which ids were accepted before (a resend is
//! a duplicate), for as long as their records are retained, at no write per event.
//!
//! The index lives in her actor's memory as id hash -> sequence number. It goes to disk in
//! chunks, one record per snapshot rather than one per event: the chunk written with a
//! snapshot at sequence `S` holds the ids of the records after the previous chunk up to `S`.
//! A record after the last chunk is in the log itself, and an event record says whether it is
//! found by its id (`FORMAT_EVENT_V3`), so loading reads the chunks and then the log from the
//! last chunk on (the snapshot's tail, which the rebuild reads anyway). A chunk is written
//! after the records it names, in the same job, so a durable chunk never names a record the
//! disk lacks; a crash before it only means the next load reads a little more of the log.
//!
//! A store written before the index (format 1) has no chunks and records that do not say how
//! they are found; its tenant-wide `dedup` tree does (an id whose entry there names this very
//! record is found by id). The first load of such a user reads her whole retained log, and
//! her next write stores what it found as her first chunk.

use super::keys::*;
use super::{Store, StoreError};
use std::collections::HashMap;

/// One user's ids: what her actor checks an incoming id against.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdIndex {
    /// Every retained id found by id, by its stable hash: the sequence number of its record.
    known: HashMap<u64, u64>,
    /// The ids not yet in a chunk on disk (hash, seq), oldest first.
    pending: Vec<(u64, u64)>,
    /// The last sequence number the chunks on disk cover.
    chunked_to: u64,
}

/// The stable hash an id is indexed under (the same as the state's recent-id ring).
pub fn id_hash(event_id: &str) -> u64 {
    crate::core::value::stable_hash(event_id.as_bytes())
}

impl IdIndex {
    /// The sequence number of the record that may hold `event_id` (the hash matched): the
    /// caller reads it to be sure, since two ids can share a hash.
    pub fn get(&self, event_id: &str) -> Option<u64> {
        self.known.get(&id_hash(event_id)).copied()
    }

    /// Adds the id (by its hash) of record `seq`, found by id.
    pub fn add(&mut self, hash: u64, seq: u64) {
        self.known.insert(hash, seq);
        if seq > self.chunked_to {
            self.pending.push((hash, seq));
        }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The chunk to write once a snapshot at `through` is planned: the pending ids up to it,
    /// keyed by `through`. `None` when the chunks already cover it.
    pub fn chunk(&mut self, tenant: &str, user: &str, through: u64) -> Option<Write> {
        if through <= self.chunked_to {
            return None;
        }
        let split = self.pending.partition_point(|&(_, seq)| seq <= through);
        let ids: Vec<(u64, u64)> = self.pending.drain(..split).collect();
        self.chunked_to = through;
        Some(Write::Put(TreeId::Ids, seq_key(&user_key(tenant, user), through), encode(&ids)))
    }
}

impl Store {
    /// A user's id chunks, then her log from the last chunk on (`from`, where the caller reads
    /// the log anyway, is the first sequence number past the snapshot): the ids in records
    /// after the last chunk and up to `from - 1` are read here, the caller adds the rest as it
    /// reads them (`index_record`). Returns the index and the first sequence number to read
    /// the log from.
    pub(super) fn load_ids(&self, uk: &[u8], from: u64) -> Result<(IdIndex, u64), StoreError> {
        let mut ix = IdIndex::default();
        for kv in self.ids.scan_prefix(uk) {
            let (k, v) = kv?;
            let through = u64::from_be_bytes(k[uk.len()..].try_into().unwrap_or_default());
            let chunk: Vec<(u64, u64)> = decode(&k, &v)?;
            for (h, seq) in chunk {
                ix.known.insert(h, seq);
            }
            ix.chunked_to = ix.chunked_to.max(through);
        }
        let start = from.min(ix.chunked_to + 1);
        Ok((ix, start))
    }

    /// Adds record `seq` (`key`, `bytes` as stored) to the index if it is found by its id.
    pub(super) fn index_record(&self, ix: &mut IdIndex, tenant: &str, key: &[u8], bytes: &[u8], ev: &StoredEvent, seq: u64) -> Result<(), StoreError> {
        let by_id = match found_by_id(bytes) {
            Some(b) => b,
            // A record of format 1: found by id if the legacy tree says this record holds it.
            None => self.dedup.get(dedup_key(tenant, &ev.event.event_id))?.is_some_and(|w| w.as_ref() == key),
        };
        if by_id {
            ix.add(id_hash(&ev.event.event_id), seq);
        }
        Ok(())
    }

    /// The id of a user's record `seq`, if it is still there. Blocking.
    pub fn event_id_at(&self, tenant: &str, user: &str, seq: u64) -> Result<Option<String>, StoreError> {
        self.readable()?;
        let k = seq_key(&user_key(tenant, user), seq);
        let found = match self.events.get(&k)? {
            Some(v) => Some(decode::<StoredEvent>(&k, &v)?.event.event_id),
            None => None,
        };
        self.readable()?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_takes_the_pending_ids_up_to_the_snapshot_and_only_once() {
        let mut ix = IdIndex::default();
        for seq in 1..=5 {
            ix.add(id_hash(&format!("e{seq}")), seq);
        }
        let Some(Write::Put(TreeId::Ids, k, v)) = ix.chunk("t", "u", 3) else { panic!("a chunk is due") };
        assert_eq!(k, seq_key(&user_key("t", "u"), 3));
        let ids: Vec<(u64, u64)> = decode(&k, &v).unwrap();
        assert_eq!(ids, (1..=3).map(|s| (id_hash(&format!("e{s}")), s)).collect::<Vec<_>>());
        assert_eq!(ix.chunk("t", "u", 3), None, "nothing more up to the same snapshot");
        assert_eq!(ix.pending, vec![(id_hash("e4"), 4), (id_hash("e5"), 5)]);
        // Every id stays known, chunked or not.
        assert!((1..=5).all(|s| ix.get(&format!("e{s}")) == Some(s)));
        assert_eq!(ix.get("e6"), None);
    }

    /// Writes through the persister and waits until they are durable.
    fn write(store: &Store, writes: Vec<Write>) {
        let (tx, rx) = std::sync::mpsc::channel();
        store.submit(writes, move |r| tx.send(r).unwrap()).unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn record(seq: u64, by_id: bool) -> Write {
        let ev = StoredEvent { event: crate::core::Event::new(&format!("e{seq}"), "login", 1_000, &[]), received_at: 1_000, catalogue_version: 1, pushes: vec![] };
        super::super::writes::event("t", "u", seq, &ev, by_id)
    }

    /// A crash after a snapshot but before the chunk that goes with it (or a store whose last
    /// chunk is older than its snapshot for any reason): loading reads the log from the last
    /// chunk on, so the ids between the chunk and the snapshot are known, and are the next
    /// chunk's. Records the server made for itself are not indexed.
    #[test]
    fn a_load_reads_the_log_from_the_last_chunk_and_indexes_only_records_found_by_id() {
        let store = Store::open_temporary().unwrap();
        let mut writes: Vec<Write> = (1..=5).map(|seq| record(seq, seq != 4)).collect();
        let mut ix = IdIndex::default();
        ix.add(id_hash("e1"), 1);
        writes.push(ix.chunk("t", "u", 1).unwrap());
        let snap = UserRecord { seq: 3, ..UserRecord::default() };
        writes.extend(super::super::writes::snapshot("t", "u", 3, encode_user(&snap)));
        write(&store, writes);

        let mut loaded = store.load_user("t", "u").unwrap();
        assert_eq!(loaded.tail.iter().map(|e| e.event.event_id.as_str()).collect::<Vec<_>>(), ["e4", "e5"], "the tail is still what follows the snapshot");
        assert_eq!((1..=5).map(|s| loaded.ids.get(&format!("e{s}"))).collect::<Vec<_>>(), [Some(1), Some(2), Some(3), None, Some(5)]);
        let Some(Write::Put(TreeId::Ids, k, v)) = loaded.ids.chunk("t", "u", 3) else { panic!("the chunk up to the snapshot is due") };
        assert_eq!(decode::<Vec<(u64, u64)>>(&k, &v).unwrap(), [(id_hash("e2"), 2), (id_hash("e3"), 3)]);
    }
}
