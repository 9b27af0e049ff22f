//! Questions about an endpoint's deliveries and their answers: what one node answers from
//! the notifications of the users it serves, and the merge of several nodes' answers into
//! what one node holding them all would have said (cluster mode asks every node). Pure.

use super::{Finished, Pending};
use serde::{Deserialize, Serialize};

/// How far waiting notifications are counted (an endpoint that has been down for days can
/// have a long outbox, and this is read per API call).
pub const COUNT_CAP: usize = 100_000;

/// A question about an endpoint's deliveries. One node alone answers it from its own sled;
/// in a cluster every node answers for the users it serves, and the answers are merged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ask {
    /// How many notifications wait, counted up to `COUNT_CAP`.
    Count,
    /// What waits (oldest first) and what finished (newest first, ids below `before`), at
    /// most `limit` of each.
    Deliveries { before: Option<u64>, limit: usize },
    /// The set-aside notifications among the oldest `SCAN_DEPTH` waiting, at most `limit`.
    SetAside { limit: usize },
    /// Send a set-aside or given-up delivery again.
    Retry { delivery: u64 },
}

/// Why a delivery cannot be retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Refusal {
    /// It waits in line, and is sent in its turn.
    NotSetAside,
    /// It was delivered.
    Delivered,
}

/// An answer to an `Ask`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Told {
    pub pending: Vec<(u64, Pending)>,
    pub finished: Vec<(u64, Finished)>,
    pub count: usize,
    /// For `Retry`: the delivery as it waits now, or why it cannot be retried; `None` when
    /// the answering node has no such delivery.
    pub retried: Option<Result<(u64, Pending), Refusal>>,
    /// Whether `pending` (`finished`) was cut short to fit the answer in one message: the
    /// answering node holds more after its last one, which the merge must not skip.
    pub pending_cut: bool,
    pub finished_cut: bool,
}

impl Told {
    /// The answers of several nodes, each about its own users, as one node holding them all
    /// would have answered `ask`: waiting ones oldest first and finished ones newest first, in
    /// id order (a user's ids rise, so her notifications keep their order), cut to the limit.
    ///
    /// An answer cut short (`pending_cut`, `finished_cut`) holds rows past its last one that
    /// the others' rows may come between: the merged list then stops at the earliest such
    /// last row, and is marked cut, so the next page goes on from there and nothing is skipped.
    pub fn merge(ask: &Ask, answers: Vec<Told>) -> Told {
        let mut all = Told::default();
        // The last id each cut list reached: no row past the earliest of them is certain.
        let (mut pending_until, mut finished_from) = (None::<u64>, None::<u64>);
        for a in answers {
            if a.pending_cut && let Some((last, _)) = a.pending.last() {
                pending_until = Some(pending_until.map_or(*last, |u| u.min(*last)));
            }
            if a.finished_cut && let Some((last, _)) = a.finished.last() {
                finished_from = Some(finished_from.map_or(*last, |f| f.max(*last)));
            }
            all.pending_cut |= a.pending_cut;
            all.finished_cut |= a.finished_cut;
            all.pending.extend(a.pending);
            all.finished.extend(a.finished);
            all.count += a.count;
            all.retried = all.retried.or(a.retried);
        }
        all.pending.sort_by_key(|(id, _)| *id);
        all.finished.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        all.pending.retain(|(id, _)| pending_until.is_none_or(|u| *id <= u));
        all.finished.retain(|(id, _)| finished_from.is_none_or(|f| *id >= f));
        all.count = all.count.min(COUNT_CAP);
        let limit = match ask {
            Ask::Deliveries { limit, .. } | Ask::SetAside { limit } => *limit,
            Ask::Count | Ask::Retry { .. } => usize::MAX,
        };
        all.pending_cut |= all.pending.len() > limit;
        all.finished_cut |= all.finished.len() > limit;
        all.pending.truncate(limit);
        all.finished.truncate(limit);
        all
    }

    /// Cuts the lists until the answer, as JSON, fits in `bytes` (a NATS message carries at
    /// most 1 MiB by default): the newest waiting rows and the oldest finished ones go first,
    /// each list halved at a time and marked cut. Returns the JSON.
    pub fn fitted(mut self, bytes: usize) -> Vec<u8> {
        loop {
            let json = serde_json::to_vec(&self).expect("an answer encodes");
            if json.len() <= bytes || (self.pending.len() <= 1 && self.finished.len() <= 1) {
                return json;
            }
            if self.pending.len() >= self.finished.len() {
                self.pending.truncate(self.pending.len() / 2);
                self.pending_cut = true;
            } else {
                self.finished.truncate(self.finished.len() / 2);
                self.finished_cut = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::Attempt;

    fn pending(created_at: crate::core::Millis, next_at: crate::core::Millis, attempts: u32) -> Pending {
        Pending { kind: "unlock".into(), body: "{}".into(), created_at, attempts, next_at, last: None }
    }

    fn told(waiting: &[u64], pending_cut: bool, finished: &[u64], finished_cut: bool) -> Told {
        let rows = |ids: &[u64]| ids.iter().map(|&id| (id, pending(0, 0, 0))).collect();
        let done = |ids: &[u64]| {
            ids.iter().map(|&id| (id, Finished { kind: "unlock".into(), body: "{}".into(), created_at: 0, attempts: 1, delivered: true, finished_at: 0, last: Attempt { at: 0, status: Some(204), error: None, millis: 1 } })).collect()
        };
        Told { pending: rows(waiting), finished: done(finished), pending_cut, finished_cut, ..Told::default() }
    }

    /// Nodes' answers merge into what one node holding every row would answer: in id order,
    /// cut to the limit, and never past the last row of an answer that was cut short (the rows
    /// it left out may come before the others' next ones).
    #[test]
    fn answers_merge_in_id_order_up_to_the_limit_and_never_past_a_cut_answers_last_row() {
        let ids = |t: &Told| (t.pending.iter().map(|r| r.0).collect::<Vec<_>>(), t.finished.iter().map(|r| r.0).collect::<Vec<_>>(), t.pending_cut, t.finished_cut);
        let ask = Ask::Deliveries { before: None, limit: 3 };
        // (answers, merged pending, merged finished, pending cut, finished cut)
        let table: [(Vec<Told>, Vec<u64>, Vec<u64>, bool, bool); 4] = [
            (vec![told(&[1, 5], false, &[9, 4], false), told(&[2], false, &[7], false)], vec![1, 2, 5], vec![9, 7, 4], false, false),
            (vec![told(&[1, 5, 6], false, &[9, 8, 4, 3], false), told(&[2, 3], false, &[7], false)], vec![1, 2, 3], vec![9, 8, 7], true, true),
            // Node one was cut after 2 (it holds more, maybe 3): node two's 4 waits for the next page.
            (vec![told(&[1, 2], true, &[9], true), told(&[4], false, &[3], false)], vec![1, 2], vec![9], true, true),
            (vec![told(&[], false, &[], false), told(&[], false, &[], false)], vec![], vec![], false, false),
        ];
        for (answers, p, f, pc, fc) in table {
            assert_eq!(ids(&Told::merge(&ask, answers)), (p, f, pc, fc));
        }
    }

    #[test]
    fn an_answer_too_large_for_one_message_is_cut_and_says_so() {
        let big = Pending { body: "x".repeat(1000), ..pending(0, 0, 0) };
        let t = Told { pending: (0..100).map(|i| (i, big.clone())).collect(), ..Told::default() };
        let json = t.fitted(20_000);
        assert!(json.len() <= 20_000, "{}", json.len());
        let back: Told = serde_json::from_slice(&json).unwrap();
        assert!(back.pending_cut && !back.finished_cut);
        assert_eq!(back.pending.first().map(|r| r.0), Some(0), "the oldest are kept");
    }
}
