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
//! they are found; their types do (`legacy::format1_found_by_place`). Its tenant-wide `dedup` tree
//! is not enough: where two users' events shared an id (cluster mode accepted that across
//! partitions) it names only one of them. The first load of such a user reads her whole
//! retained log, and her next write stores what it found as her first chunk.
//!
//! Two ids of one user may share a hash: both are kept, and each match is read back from the
//! log, so a collision costs a read, never a duplicate or a forgotten id.

use super::keys::*;
use super::{Store, StoreError};
use std::collections::HashMap;

/// Ids in one chunk record at most: a user's first chunk after an upgrade can hold her whole
/// retained log, and in cluster mode a record must fit in one changelog message (NATS refuses
/// more than 1 MiB); 16,384 ids encode to about 300 KiB.
const CHUNK_IDS: usize = 16_384;

/// One user's ids: what her actor checks an incoming id against.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdIndex {
    /// Every retained id found by id, by its stable hash: the sequence number of its record.
    known: HashMap<u64, u64>,
    /// The rare hashes that more than one retained id has: every other record's seq (the
    /// first stays in `known`), so that no id is forgotten behind another.
    shared: HashMap<u64, Vec<u64>>,
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
    /// The sequence numbers of the records that may hold `event_id` (its hash matched), the
    /// oldest first: the caller reads them to be sure, since two ids can share a hash. Nearly
    /// always none or one.
    pub fn get(&self, event_id: &str) -> Vec<u64> {
        let h = id_hash(event_id);
        let mut out: Vec<u64> = self.known.get(&h).copied().into_iter().collect();
        out.extend(self.shared.get(&h).into_iter().flatten());
        out
    }

    /// Adds the id (by its hash) of record `seq`, found by id, to be written with the next
    /// chunk unless a chunk on disk covers it already.
    pub fn add(&mut self, hash: u64, seq: u64) {
        self.remember(hash, seq);
        if seq > self.chunked_to {
            self.pending.push((hash, seq));
        }
    }

    /// Knows the id of record `seq` (what a chunk on disk says, or `add`).
    fn remember(&mut self, hash: u64, seq: u64) {
        match self.known.get(&hash) {
            Some(&first) if first != seq => {
                let more = self.shared.entry(hash).or_default();
                if !more.contains(&seq) {
                    more.push(seq);
                }
            }
            Some(_) => {}
            None => {
                self.known.insert(hash, seq);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// The chunk to write once a snapshot at `through` is planned: the pending ids up to it,
    /// keyed by `through`, in records of at most `CHUNK_IDS` ids (each but the last keyed by
    /// its own last id's seq). None when the chunks already cover it.
    pub fn chunk(&mut self, tenant: &str, user: &str, through: u64) -> Vec<Write> {
        if through <= self.chunked_to {
            return vec![];
        }
        let split = self.pending.partition_point(|&(_, seq)| seq <= through);
        let ids: Vec<(u64, u64)> = self.pending.drain(..split).collect();
        self.chunked_to = through;
        let uk = user_key(tenant, user);
        let pieces: Vec<&[(u64, u64)]> = if ids.is_empty() { vec![&[]] } else { ids.chunks(CHUNK_IDS).collect() };
        let last = pieces.len() - 1;
        pieces.iter().enumerate().map(|(i, piece)| {
            let key = if i == last { through } else { piece.last().map_or(through, |p| p.1) };
            Write::Put(TreeId::Ids, seq_key(&uk, key), encode(&piece.to_vec()))
        }).collect()
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
                ix.remember(h, seq);
            }
            ix.chunked_to = ix.chunked_to.max(through);
        }
        let start = from.min(ix.chunked_to + 1);
        Ok((ix, start))
    }

    /// The last seq each of a user's id chunks covers, in order (what is on disk, for tests
    /// and diagnostics).
    pub fn id_chunks(&self, tenant: &str, user: &str) -> Result<Vec<u64>, StoreError> {
        let uk = user_key(tenant, user);
        self.ids.scan_prefix(&uk).keys().map(|k| Ok(u64::from_be_bytes(k?[uk.len()..].try_into().unwrap_or_default()))).collect()
    }

    /// Adds record `seq` (`key`, `bytes` as stored) to the index if it is found by its id.
    pub(super) fn index_record(&self, ix: &mut IdIndex, tenant: &str, key: &[u8], bytes: &[u8], ev: &StoredEvent, seq: u64) -> Result<(), StoreError> {
        let by_id = match found_by_id(bytes) {
            Some(b) => b,
            // A record of format 1 says nothing, so its type does: every record was found by
            // id but the ones the server made for itself, whose types no client could send
            // (only an `accolade.` type the catalogue would have had to declare). The legacy
            // tree can name another record for a shared id (two users' events under one id,
            // which cluster mode accepted across partitions), so it only adds: an id it says
            // is this record's is indexed whatever the type.
            None => !super::legacy::format1_found_by_place(&ev.event.event_type) || self.dedup.get(dedup_key(tenant, &ev.event.event_id))?.is_some_and(|w| w.as_ref() == key),
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
        let Some(Write::Put(TreeId::Ids, k, v)) = ix.chunk("t", "u", 3).pop() else { panic!("a chunk is due") };
        assert_eq!(k, seq_key(&user_key("t", "u"), 3));
        let ids: Vec<(u64, u64)> = decode(&k, &v).unwrap();
        assert_eq!(ids, (1..=3).map(|s| (id_hash(&format!("e{s}")), s)).collect::<Vec<_>>());
        assert_eq!(ix.chunk("t", "u", 3), vec![], "nothing more up to the same snapshot");
        assert_eq!(ix.pending, vec![(id_hash("e4"), 4), (id_hash("e5"), 5)]);
        // Every id stays known, chunked or not.
        assert!((1..=5).all(|s| ix.get(&format!("e{s}")) == vec![s]));
        assert_eq!(ix.get("e6"), Vec::<u64>::new());
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
        writes.extend(ix.chunk("t", "u", 1));
        let snap = UserRecord { seq: 3, ..UserRecord::default() };
        writes.extend(super::super::writes::snapshot("t", "u", 3, encode_user(&snap)));
        write(&store, writes);

        let mut loaded = store.load_user("t", "u").unwrap();
        assert_eq!(loaded.tail.iter().map(|e| e.event.event_id.as_str()).collect::<Vec<_>>(), ["e4", "e5"], "the tail is still what follows the snapshot");
        assert_eq!((1..=5).map(|s| loaded.ids.get(&format!("e{s}"))).collect::<Vec<_>>(), [vec![1], vec![2], vec![3], vec![], vec![5]]);
        let Some(Write::Put(TreeId::Ids, k, v)) = loaded.ids.chunk("t", "u", 3).pop() else { panic!("the chunk up to the snapshot is due") };
        assert_eq!(decode::<Vec<(u64, u64)>>(&k, &v).unwrap(), [(id_hash("e2"), 2), (id_hash("e3"), 3)]);
    }

    /// Two ids of one user that share a hash are both kept (the second does not hide the
    /// first), and a large first chunk is split into records that each fit a changelog message.
    #[test]
    fn ids_sharing_a_hash_are_all_kept_and_a_large_chunk_is_split() {
        let mut ix = IdIndex::default();
        ix.add(7, 1);
        ix.add(7, 4);
        ix.add(7, 4);
        assert_eq!((ix.known.get(&7), ix.shared.get(&7)), (Some(&1), Some(&vec![4])));
        let mut big = IdIndex::default();
        let n = CHUNK_IDS as u64 * 2 + 5;
        for seq in 1..=n {
            big.add(seq * 31, seq);
        }
        let writes = big.chunk("t", "u", n + 3);
        let keys: Vec<u64> = writes.iter().map(|w| match w {
            Write::Put(TreeId::Ids, k, v) => {
                assert!(v.len() < 1 << 20, "a piece fits a changelog message: {} bytes", v.len());
                u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap())
            }
            other => panic!("{other:?}"),
        }).collect();
        assert_eq!(keys, [CHUNK_IDS as u64, 2 * CHUNK_IDS as u64, n + 3]);
    }
}
