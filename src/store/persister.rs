//! The group-commit persister: one thread takes whatever jobs have queued up as one batch,
//! inserts it (a large batch on two threads, each user's jobs always on the same one), flushes
//! once and tells every job; a failed write fails the store closed. Also the debug builds'
//! fault injection.

use super::*;
use std::collections::VecDeque;
use std::sync::mpsc;

/// Runs once a job is durable (`Ok`) or failed (`Err`, why).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

pub(super) struct Job {
    pub(super) writes: Vec<Write>,
    pub(super) done: Done,
    /// Which of the persister's two threads inserts it (see `run_persister`).
    pub(super) lane: u8,
    /// The hash of the user whose job it is; `None` for a job of no user, which waits for
    /// everything submitted before it (see `fair_batch`).
    pub(super) user: Option<u64>,
}

pub(super) struct PersisterThread(pub(super) std::sync::Mutex<Option<std::thread::JoinHandle<()>>>);

impl Drop for PersisterThread {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().ok().and_then(|mut h| h.take())
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

#[derive(Clone)]
pub(super) struct PersisterSide {
    pub(super) db: sled::Db,
    pub(super) trees: [sled::Tree; 20],
    pub(super) stats: Arc<PersistStats>,
}

/// FNV-1a, to split jobs between the persister's two threads by user.
pub(super) fn fnv(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Fault injection for the watchdog's tests, in debug builds only (release builds ignore the
/// variable): while the file named by `ACCOLADE_FAULT_STALL_PERSIST` exists, the persister's
/// batch waits instead of writing, the way sled 0.34 can hang in `flush` (which no test can
/// bring about on purpose, docs/reliability.md), or as a disk far slower than the load would.
pub(super) fn fault_stall_file() -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os("ACCOLADE_FAULT_STALL_PERSIST").map(Into::into)
}

/// Fault injection for the full-disk tests, in debug builds only (release builds ignore the
/// variable): while the file named by `ACCOLADE_FAULT_FAIL_PERSIST` exists, a batch's inserts
/// are made and its flush then fails, which is what a full disk does to sled: the trees in
/// memory hold the batch, the disk does not. Unlike a file-size limit, it fails the batch the
/// test chooses, so a test can put several users' events in it.
pub(super) fn fault_fail_file() -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var_os("ACCOLADE_FAULT_FAIL_PERSIST").map(Into::into)
}

/// Jobs taken into one batch at most; past that the next batch starts.
pub(super) const MAX_BATCH_JOBS: usize = 8192;

/// Jobs of one user a batch takes; the rest of that user's wait for the next batch.
pub(super) const MAX_USER_JOBS_PER_BATCH: usize = 32;

/// Writes a batch must hold before half of it goes to the helper thread. Handing a half over
/// and waiting for it costs two thread wake-ups, which only a batch with enough inserts to
/// share pays back; at low load a batch is one or two events, and its few inserts are done
/// here without waking anyone (bench/README.md, issue 22).
pub(super) const HELPER_MIN_WRITES: usize = 64;

/// Picks the next batch from `queued` (oldest first) and leaves the rest, in order, in
/// `carry`. A user with a burst queued (hundreds of events at once) would otherwise fill the
/// batch, and every other user's event in it would wait for all of the burst's inserts; now a
/// batch takes at most `MAX_USER_JOBS_PER_BATCH` jobs of each user (bench/README.md, fix 23).
/// Order is kept where anything depends on it: a user's jobs never pass each other, since
/// once one is left the user's later ones are left too; and a job of no user (`sync`, API and
/// leaderboard writes, which mean "after everything before me") never passes a job left
/// behind, nor does anything after it.
pub(super) fn fair_batch<J>(queued: Vec<J>, carry: &mut VecDeque<J>, user_of: impl Fn(&J) -> Option<u64>) -> Vec<J> {
    let mut taken: HashMap<u64, usize> = HashMap::new();
    let mut jobs = Vec::with_capacity(queued.len());
    let mut blocked = false;
    for job in queued {
        let user = user_of(&job);
        let take = !blocked
            && match user {
                Some(u) => {
                    let n = taken.entry(u).or_insert(0);
                    *n += 1;
                    *n <= MAX_USER_JOBS_PER_BATCH
                }
                None => carry.is_empty(),
            };
        if take {
            jobs.push(job);
        } else {
            blocked |= user.is_none();
            carry.push_back(job);
        }
    }
    jobs
}

/// Leaves one write of each user's leaderboard record in a batch: the last value, in the place
/// of the first; returns how many writes it took out. The record is the user's whole set of
/// scores, rewritten by every scoring event, and at saturation a batch holds several events of
/// each user (about eight at 1,000 connections), so most of those inserts were overwritten
/// before the flush that makes any of them count (bench/README.md, issue 22).
///
/// What a crash can leave is unchanged in kind. sled recovers a prefix of its log, and before,
/// every prefix that held an event's log entry also held the record written just before it,
/// with that event's scores: the record never lagged the durable log, and could be ahead of it
/// only by scores of events not yet acknowledged, which their resends write again. Now the
/// record that comes first in the batch holds the scores after the user's last event in the
/// batch: still never behind the durable log, and ahead of it only by events of this batch,
/// none of which is acknowledged before its flush. A deletion of the record (none is written
/// today) ends a group: nothing moves across it. Only jobs of a user are touched, and a user's
/// jobs are inserted by one thread in order, so the record keeps its place among them.
pub(super) fn coalesce_boards<'a>(jobs: impl Iterator<Item = (Option<u64>, &'a mut Vec<Write>)>) -> usize {
    let mut jobs: Vec<&mut Vec<Write>> = jobs.filter_map(|(user, w)| user.map(|_| w)).collect();
    // (job, write) of each group's first record, and every later record moved onto it.
    let mut moves: Vec<((usize, usize), (usize, usize))> = Vec::new();
    {
        let mut first: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for (j, writes) in jobs.iter().enumerate() {
            for (i, w) in writes.iter().enumerate() {
                match w {
                    Write::Put(TreeId::Boards, k, _) => match first.get(k.as_slice()) {
                        Some(&at) => moves.push((at, (j, i))),
                        None => {
                            first.insert(k.as_slice(), (j, i));
                        }
                    },
                    Write::Del(TreeId::Boards, k) => {
                        first.remove(k.as_slice());
                    }
                    _ => {}
                }
            }
        }
    }
    if moves.is_empty() {
        return 0;
    }
    // In batch order, so the first place ends up holding the last value.
    for &((j0, i0), (j, i)) in &moves {
        let value = match &mut jobs[j][i] {
            Write::Put(_, _, v) => std::mem::take(v),
            Write::Del(..) => unreachable!("only puts are moved"),
        };
        if let Write::Put(_, _, v) = &mut jobs[j0][i0] {
            *v = value;
        }
    }
    let mut gone: Vec<(usize, usize)> = moves.into_iter().map(|(_, from)| from).collect();
    gone.sort_unstable();
    let taken = gone.len();
    let mut gone = gone.into_iter().peekable();
    for (j, writes) in jobs.iter_mut().enumerate() {
        let mut i = 0;
        writes.retain(|_| {
            let keep = gone.next_if_eq(&(j, i)).is_none();
            i += 1;
            keep
        });
    }
    taken
}

impl PersisterSide {
    fn tree(&self, t: TreeId) -> usize {
        match t {
            TreeId::Users => 0,
            TreeId::Events => 1,
            TreeId::Dedup => 2,
            TreeId::SnapSeq => 3,
            TreeId::Catalogues => 4,
            TreeId::Dead => 5,
            TreeId::Jobs => 6,
            TreeId::Boards => 7,
            TreeId::Archive => 8,
            TreeId::Closed => 9,
            TreeId::Goals => 10,
            TreeId::Hooks => 11,
            TreeId::Outbox => 12,
            TreeId::HookLog => 13,
            TreeId::Links => 14,
            TreeId::Mail => 15,
            TreeId::Expiries => 16,
            TreeId::Analytics => 17,
            TreeId::Ids => 18,
            TreeId::Community => 19,
        }
    }

    /// Applies writes in order; returns how many.
    fn apply(&self, writes: Vec<Write>) -> Result<u64, sled::Error> {
        let mut n = 0;
        for w in writes {
            n += 1;
            match w {
                Write::Put(t, k, v) => {
                    self.trees[self.tree(t)].insert(k, v)?;
                }
                Write::Del(t, k) => {
                    self.trees[self.tree(t)].remove(k)?;
                }
            }
        }
        Ok(n)
    }

    pub(super) fn run_persister(self, rx: mpsc::Receiver<Job>) {
        // A second thread inserts about half of every large batch. Inserting is CPU work in sled (a
        // tree walk, and a node copied on most inserts), and one thread doing all of it got
        // only its fair share of the cores while the runtime's workers, with events queued,
        // took the rest: it was busy 93% of the time and acks waited behind it. Two threads get
        // two shares, and run in parallel when a core is free (bench/README.md, fix 19).
        //
        // Jobs are split whole, by user, never write by write. After a crash sled recovers a
        // prefix of its log, so the order of a job's writes is what makes a recovered dedup key
        // imply its log entry: split by key, a dedup key could land before its event, and the
        // client's resend of the unacknowledged event would be taken for a duplicate and never
        // counted (tests/crash_loop.rs caught exactly that). Every job of a user goes to the
        // same thread (`submit_user`), so a user's snapshot and board scores keep their order
        // too. Between users nothing depends on order, because nothing is acknowledged before
        // the flush that covers both threads.
        let (to_helper, helper_rx) = mpsc::channel::<Vec<Write>>();
        let (helper_tx, from_helper) = mpsc::channel::<Result<u64, sled::Error>>();
        let helper = self.clone();
        let spawned = std::thread::Builder::new().name("accolade-persist2".into()).spawn(move || {
            while let Ok(writes) = helper_rx.recv() {
                if helper_tx.send(helper.apply(writes)).is_err() {
                    break;
                }
            }
        });
        // Without the helper (the thread could not start), this thread does it all.
        let (to_helper, helper) = match spawned {
            Ok(h) => (Some(to_helper), Some(h)),
            Err(_) => (None, None),
        };
        // Jobs a batch left for the next one (see `fair_batch`), oldest first.
        let mut carry: VecDeque<Job> = VecDeque::new();
        let stall_file = fault_stall_file();
        let fail_file = fault_fail_file();
        loop {
            let mut queued: Vec<Job> = carry.drain(..).collect();
            if queued.is_empty() {
                match rx.recv() {
                    Ok(j) => queued.push(j),
                    Err(_) => break,
                }
            }
            while queued.len() < MAX_BATCH_JOBS {
                match rx.try_recv() {
                    Ok(j) => queued.push(j),
                    Err(_) => break,
                }
            }
            let mut jobs = fair_batch(queued, &mut carry, |j| j.user);
            coalesce_boards(jobs.iter_mut().map(|j| (j.user, &mut j.writes)));
            let mut n = 0u64;
            let mut dones = Vec::with_capacity(jobs.len());
            let started = std::time::Instant::now();
            let mut applied = started;
            // Plain inserts, not `apply_batch`: sled's batches take a global write lock that
            // stalls every concurrent reader (the actors' dedup lookups), which made them ten
            // times slower here. Atomicity across one event's writes is not needed, because
            // nothing is acknowledged before the flush below; a crash in between loses the
            // unacknowledged event, which the client resends.
            // Every job's completion is taken out first: when a write fails part way through
            // the batch, every job of it (written or not) is told, so no actor waits for ever.
            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            let share = to_helper.is_some() && jobs.iter().map(|j| j.writes.len()).sum::<usize>() >= HELPER_MIN_WRITES;
            for job in jobs {
                dones.push(job.done);
                if share && job.lane == 1 { theirs.extend(job.writes) } else { mine.extend(job.writes) }
            }
            // Once a batch has failed, sled refuses every write (its error is sticky) and its
            // trees hold what the disk refused: nothing more is written, and every job is told
            // at once that it failed, so no actor waits and nothing is acknowledged.
            if let Some(why) = self.stats.disk.failure() {
                let failed = Err(why.to_string());
                for done in dones {
                    done(failed.clone());
                }
                continue;
            }
            let busy = self.stats.disk.begin("persist batch", started);
            // The injected fault: this batch waits, as in sled's hang, until the file is gone.
            while stall_file.as_ref().is_some_and(|f| f.exists()) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let fail_now = fail_file.as_ref().is_some_and(|f| f.exists());
            let result = (|| -> Result<(), sled::Error> {
                let helped = match &to_helper {
                    Some(tx) if !theirs.is_empty() => match tx.send(theirs) {
                        Ok(()) => true,
                        // The helper is gone: its half is written here.
                        Err(mpsc::SendError(back)) => {
                            mine.extend(back);
                            false
                        }
                    },
                    _ => false,
                };
                let here = self.apply(mine);
                // Wait for the helper even when this half failed: the batch is over only when
                // both are, and a half that cannot be confirmed fails the batch.
                let there = if helped { from_helper.recv().unwrap_or_else(|_| Err(sled::Error::ReportableBug("the persister's helper thread stopped".into()))) } else { Ok(0) };
                n += here? + there?;
                applied = std::time::Instant::now();
                if fail_now {
                    // The injected fault fails the flush after the inserts, as a full disk does.
                    return Err(sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected)")));
                }
                self.db.flush()?;
                Ok(())
            })()
            .map_err(|e| e.to_string());
            drop(busy);
            if let Err(e) = &result {
                // Recorded before any job is told: an actor that fails on this rebuilds from the
                // store, and by then the store must refuse to be read.
                self.stats.disk.fail(e.clone(), std::time::Instant::now());
                tracing::error!(error = %e, "persist batch failed; its events are not acknowledged, and the store fails closed until the server restarts");
            }
            let s = &self.stats;
            s.batches.fetch_add(1, Ordering::Relaxed);
            s.jobs.fetch_add(dones.len() as u64, Ordering::Relaxed);
            s.last_batch_jobs.store(dones.len() as u64, Ordering::Relaxed);
            s.writes.fetch_add(n, Ordering::Relaxed);
            s.apply_micros_total.fetch_add(applied.duration_since(started).as_micros() as u64, Ordering::Relaxed);
            s.flush_micros_total.fetch_add(applied.elapsed().as_micros() as u64, Ordering::Relaxed);
            for done in dones {
                done(result.clone());
            }
        }
        // The helper holds the database too: it must be gone before the database counts as
        // closed (see `PersisterThread`).
        drop(to_helper);
        if let Some(h) = helper {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job for `fair_batch`: its submission index and its user (`None`: a job of no user).
    type J = (usize, Option<u64>);

    /// Random batches shaped like the actors' (each user's events: sometimes its leaderboard
    /// record, then the log entry and the dedup key, sometimes a snapshot; jobs of no user in
    /// between), coalesced: applying the batch leaves every tree as before; each user's record
    /// is written once (a deletion starts a new group); and in every prefix of a user's writes,
    /// which is what a crash can leave, the record holds the scores of every scoring event whose
    /// log entry is there (it is never behind the durable log).
    #[test]
    fn a_batch_writes_each_leaderboard_record_once_and_never_behind_its_events() {
        let mut rnd = crate::testing::rng(0x5eed_b0a4_d5c0_4e11);
        let key = |u: u64| format!("t\0u{u}\0").into_bytes();
        for _ in 0..400 {
            let users = 1 + rnd(6);
            let mut jobs: Vec<(Option<u64>, Vec<Write>)> = Vec::new();
            let mut seq = vec![0u64; users as usize];
            let mut board_writes = 0;
            for _ in 0..1 + rnd(40) {
                if rnd(10) == 0 {
                    jobs.push((None, vec![Write::Put(TreeId::Catalogues, b"c".to_vec(), vec![rnd(9) as u8])]));
                    continue;
                }
                let u = rnd(users);
                seq[u as usize] += 1;
                let n = seq[u as usize];
                let mut w = Vec::new();
                if rnd(4) != 0 {
                    // The record holds the scores after event `n`.
                    w.push(Write::Put(TreeId::Boards, key(u), n.to_be_bytes().to_vec()));
                    board_writes += 1;
                }
                if rnd(50) == 0 {
                    w.insert(0, Write::Del(TreeId::Boards, key(u)));
                }
                let mut ek = key(u);
                ek.extend_from_slice(&n.to_be_bytes());
                w.push(Write::Put(TreeId::Events, ek, vec![u8::from(w.iter().any(|x| matches!(x, Write::Put(TreeId::Boards, ..))))]));
                w.push(Write::Put(TreeId::Dedup, format!("t\0e{u}-{n}").into_bytes(), vec![]));
                if rnd(8) == 0 {
                    w.extend([Write::Put(TreeId::Users, key(u), n.to_be_bytes().to_vec()), Write::Put(TreeId::SnapSeq, key(u), vec![])]);
                }
                jobs.push((Some(u), w));
            }
            let apply = |jobs: &[(Option<u64>, Vec<Write>)]| {
                let mut trees: HashMap<(u8, Vec<u8>), Vec<u8>> = HashMap::new();
                for w in jobs.iter().flat_map(|j| &j.1) {
                    match w {
                        Write::Put(t, k, v) => trees.insert((t.code(), k.clone()), v.clone()),
                        Write::Del(t, k) => trees.remove(&(t.code(), k.clone())),
                    };
                }
                trees
            };
            let before = apply(&jobs);
            let mut after = jobs.clone();
            let taken = coalesce_boards(after.iter_mut().map(|(u, w)| (*u, w)));
            assert_eq!(apply(&after), before, "the batch leaves every tree as it did");
            let left = after.iter().flat_map(|j| &j.1).filter(|w| matches!(w, Write::Put(TreeId::Boards, ..))).count();
            assert_eq!(left + taken, board_writes);
            for u in 0..users {
                let mine: Vec<&Write> = after.iter().filter(|j| j.0 == Some(u)).flat_map(|j| &j.1).collect();
                let puts = mine.iter().filter(|w| matches!(w, Write::Put(TreeId::Boards, ..))).count();
                let groups = 1 + mine.iter().filter(|w| matches!(w, Write::Del(TreeId::Boards, ..))).count();
                assert!(puts <= groups, "user {u}: {puts} records in {groups} groups");
                // Every prefix: the record present against the last scoring event present.
                let mut record = 0u64;
                for w in mine {
                    match w {
                        Write::Put(TreeId::Boards, _, v) => record = u64::from_be_bytes(v.as_slice().try_into().unwrap()),
                        Write::Del(TreeId::Boards, _) => record = 0,
                        Write::Put(TreeId::Events, k, v) if v == &[1] => {
                            let scored = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                            assert!(record >= scored, "user {u}: event {scored} durable with the record of event {record}");
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn a_burst_does_not_fill_the_batch_of_a_user_behind_it() {
        let mut queued: Vec<J> = (0..100).map(|i| (i, Some(1))).collect();
        queued.push((100, Some(2)));
        let mut carry = VecDeque::new();
        let batch = fair_batch(queued, &mut carry, |j| j.1);
        assert_eq!(batch.len(), MAX_USER_JOBS_PER_BATCH + 1);
        assert_eq!(batch.last(), Some(&(100, Some(2))), "the other user's job goes in this batch");
        assert_eq!(carry.len(), 100 - MAX_USER_JOBS_PER_BATCH);
        assert_eq!(carry.front(), Some(&(MAX_USER_JOBS_PER_BATCH, Some(1))), "the burst goes on, in order, in the next batch");
    }

    /// Random streams of jobs (a few users with bursts, many with one or two jobs, and jobs of
    /// no user) arriving between the persister's rounds: every job is written exactly once,
    /// no batch holds more than the cap of one user, a user's jobs complete in the order they
    /// were submitted, and a job of no user completes after everything submitted before it
    /// and before everything submitted after it.
    #[test]
    fn fair_batches_keep_every_order_that_matters() {
        let mut rnd = crate::testing::rng(0x9e37_79b9_7f4a_7c15);
        let mut carried = 0;
        for _ in 0..300 {
            let n = 1 + rnd(600) as usize;
            let jobs: Vec<J> = (0..n)
                .map(|i| {
                    let user = match rnd(100) {
                        0..=2 => None,
                        3..=59 => Some(rnd(3)),
                        _ => Some(3 + rnd(500)),
                    };
                    (i, user)
                })
                .collect();
            let (mut arrived, mut carry) = (0, VecDeque::new());
            // For each job: (batch, position in the order completions are reported).
            let mut done: Vec<Option<(usize, usize)>> = vec![None; n];
            let (mut batches, mut reported) = (0, 0);
            while reported < n {
                let mut queued: Vec<J> = carry.drain(..).collect();
                let upto = (arrived + rnd(250) as usize).min(n);
                queued.extend_from_slice(&jobs[arrived..upto]);
                arrived = upto;
                if queued.is_empty() {
                    continue;
                }
                let batch = fair_batch(queued, &mut carry, |j| j.1);
                assert!(!batch.is_empty(), "every round writes something");
                carried += carry.len();
                let mut per_user: HashMap<u64, usize> = HashMap::new();
                for &(i, user) in &batch {
                    if let Some(u) = user {
                        *per_user.entry(u).or_default() += 1;
                    }
                    assert!(done[i].replace((batches, reported)).is_none(), "job {i} written twice");
                    reported += 1;
                }
                assert!(per_user.values().all(|&c| c <= MAX_USER_JOBS_PER_BATCH), "a batch over the cap: {per_user:?}");
                batches += 1;
            }
            let done: Vec<(usize, usize)> = done.into_iter().map(|d| d.expect("every job is written")).collect();
            for (i, &(_, user)) in jobs.iter().enumerate() {
                for (j, &(_, other)) in jobs.iter().enumerate().skip(i + 1) {
                    if user.is_some() && user == other {
                        assert!(done[i].1 < done[j].1, "user {user:?}: job {i} reported after job {j}");
                    }
                    if user.is_none() {
                        assert!(done[j].0 >= done[i].0, "job {j} written in a batch before the earlier job {i} of no user");
                    }
                    if other.is_none() {
                        assert!(done[i].0 <= done[j].0, "job {i} written after the later job {j} of no user");
                    }
                }
            }
        }
        assert!(carried > 1000, "the streams must make batches leave jobs behind ({carried})");
    }
}
