//! Linearizability checker: the Wing & Gong / Lowe (WGL) search as porcupine implements it,
//! over a sequential [`Model`], with per-key partitioning and a cache of visited
//! (linearized-set, model state) configurations.
//!
//! A history is a list of [`Operation`]s, each with a call time and an [`Outcome`]: either the
//! client saw a return (time and output), or the outcome is unknown (timeout, crash, still in
//! flight at the end). An unknown operation may take effect at any moment after its call, so
//! its return is placed after every other event. That also covers "never took effect": an
//! operation linearized after everything else influences no observed output. Models can
//! therefore stay deterministic.

use std::collections::{BTreeMap, HashSet};
use std::fmt::{self, Debug};
use std::hash::Hash;

/// A sequential specification of the object under test.
pub trait Model {
    /// Operations on different keys are independent and checked separately.
    type Key: Ord + Clone + Debug;
    type Input: Debug;
    type Output: Debug;
    type State: Clone + Eq + Hash + Debug;

    /// The partition an operation belongs to.
    fn key(&self, input: &Self::Input) -> Self::Key;
    /// The state of every key before the first operation.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`; `None` if `output` cannot be what the operation returned
    /// in that state. `output` is `None` for an operation with unknown outcome: accept it
    /// and apply its effect (it not taking effect is covered by linearizing it last).
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
    /// True if the input never changes the state. Such operations with an unknown outcome
    /// constrain nothing and are dropped before the search.
    fn is_read_only(&self, _input: &Self::Input) -> bool {
        false
    }
}

/// How an operation ended, as far as the client knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The client got `output` at time `ret`.
    Returned { ret: u64, output: O },
    /// No answer: the operation may or may not take effect, at any time after its call.
    Unknown,
}

/// One client operation. Times are on one clock shared by all clients (a sequence number
/// of events works); a call and a return with equal times count as concurrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Client (process) that issued the operation; used for reporting only.
    pub client: u64,
    pub call: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// The return time, `u64::MAX` (after everything) for an unknown outcome.
    fn ret_time(&self) -> u64 {
        match &self.outcome {
            Outcome::Returned { ret, .. } => *ret,
            Outcome::Unknown => u64::MAX,
        }
    }

    fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }
}

impl<I: Debug, O: Debug> Operation<I, O> {
    /// One-line rendering: `p3 Write(4) -> Written [10, 12]`.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Returned { ret, output } => format!(
                "p{} {:?} -> {:?} [{}, {}]",
                self.client, self.input, output, self.call, ret
            ),
            Outcome::Unknown => {
                format!(
                    "p{} {:?} -> unknown [{}, ...]",
                    self.client, self.input, self.call
                )
            }
        }
    }
}

/// The result of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K> {
    Linearizable,
    NotLinearizable(Violation<K>),
}

impl<K> Verdict<K> {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Why a history is not linearizable: the first key (in key order) whose sub-history fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<K> {
    pub key: K,
    /// Indices into the checked history of the operations on `key` (the offending
    /// sub-history), in call order.
    pub ops: Vec<usize>,
    /// The longest linearizable prefix the search found, as indices into the history in
    /// linearization order.
    pub longest_prefix: Vec<usize>,
    /// Human-readable summary: the end of that prefix and the operations that could not
    /// come next.
    pub description: String,
}

impl<K: Debug> fmt::Display for Violation<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?}: {}", self.key, self.description)
    }
}

/// Checks `history` against `model`, key by key.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict<M::Key> {
    check_with_budget(model, history, u64::MAX).expect("an unlimited search always ends")
}

/// Like [`check`], but gives up (`None`) after `max_steps` search steps over all keys, to
/// bound time and memory (the cache grows with the steps) on histories too concurrent to
/// check exhaustively.
pub fn check_with_budget<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    max_steps: u64,
) -> Option<Verdict<M::Key>> {
    let mut partitions: BTreeMap<M::Key, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        if matches!(op.outcome, Outcome::Unknown) && model.is_read_only(&op.input) {
            continue;
        }
        partitions.entry(model.key(&op.input)).or_default().push(i);
    }
    // Search the partitions round-robin with a growing step quantum, so that a key that
    // fails quickly is reported even when another key's search space is huge (as porcupine
    // does by running partitions in parallel and stopping at the first failure).
    let mut searches: Vec<(M::Key, Search<M>)> = partitions
        .into_iter()
        .map(|(key, mut ops)| {
            ops.sort_by_key(|&i| history[i].call);
            (key, Search::new(model, history, ops))
        })
        .collect();
    let mut quantum: u64 = 1 << 10;
    let mut spent: u64 = 0;
    while !searches.is_empty() {
        let mut i = 0;
        while i < searches.len() {
            if spent >= max_steps {
                return None;
            }
            let search = &mut searches[i].1;
            let before = search.steps;
            let progress = search.run(quantum.min(max_steps - spent));
            spent += search.steps - before;
            match progress {
                Progress::Running => i += 1,
                Progress::Linearizable => {
                    searches.remove(i);
                }
                Progress::NotLinearizable(longest) => {
                    let (key, search) = searches.swap_remove(i);
                    let ops = search.ops;
                    let description =
                        describe_failure(model, history, &ops, &longest, search.steps);
                    let longest_prefix = longest.iter().map(|&local| ops[local]).collect();
                    return Some(Verdict::NotLinearizable(Violation {
                        key,
                        ops,
                        longest_prefix,
                        description,
                    }));
                }
            }
        }
        quantum = (quantum * 2).min(1 << 20);
    }
    Some(Verdict::Linearizable)
}

/// Sentinel "no node" index of the entry list.
const NIL: usize = usize::MAX;
/// Index of the list head (a sentinel node that is never lifted).
const HEAD: usize = 0;

/// A call or return event in the doubly linked entry list.
struct Node {
    /// Local operation index (into the partition's `ops`).
    op: usize,
    /// For a call node, the index of its return node; `NIL` for a return node.
    ret: usize,
    prev: usize,
    next: usize,
}

/// The entries of one partition, in time order, with O(1) lift/unlift (dancing links).
struct Entries {
    nodes: Vec<Node>,
}

impl Entries {
    fn new(times: &[(u64, u64)]) -> Self {
        // (time, is_return, op): at equal times calls sort first, so such ops overlap.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (op, &(call, ret)) in times.iter().enumerate() {
            events.push((call, false, op));
            events.push((ret, true, op));
        }
        events.sort();
        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(Node {
            op: NIL,
            ret: NIL,
            prev: NIL,
            next: NIL,
        });
        let mut call_node = vec![NIL; times.len()];
        let mut ret_node = vec![NIL; times.len()];
        for (pos, &(_, is_return, op)) in events.iter().enumerate() {
            let idx = pos + 1;
            if is_return {
                ret_node[op] = idx;
            } else {
                call_node[op] = idx;
            }
            nodes.push(Node {
                op,
                ret: NIL,
                prev: idx - 1,
                next: if pos + 1 < events.len() { idx + 1 } else { NIL },
            });
        }
        for (op, &call) in call_node.iter().enumerate() {
            nodes[call].ret = ret_node[op];
        }
        if !events.is_empty() {
            nodes[HEAD].next = 1;
        }
        Entries { nodes }
    }

    fn is_call(&self, idx: usize) -> bool {
        self.nodes[idx].ret != NIL
    }

    fn unlink(&mut self, idx: usize) {
        let (prev, next) = (self.nodes[idx].prev, self.nodes[idx].next);
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    /// Undoes `unlink(idx)`; valid only in the reverse order of the unlinks, because the
    /// removed node keeps its own prev/next pointers.
    fn relink(&mut self, idx: usize) {
        let (prev, next) = (self.nodes[idx].prev, self.nodes[idx].next);
        self.nodes[prev].next = idx;
        if next != NIL {
            self.nodes[next].prev = idx;
        }
    }

    /// Removes a call and its return from the list (the op is now linearized).
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        self.unlink(self.nodes[call].ret);
    }

    /// Reinserts a lifted call and its return.
    fn unlift(&mut self, call: usize) {
        self.relink(self.nodes[call].ret);
        self.relink(call);
    }
}

/// A fixed-size set of local operation indices.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Box<[u64]>);

impl Bitset {
    fn new(n: usize) -> Self {
        Bitset(vec![0; n.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Where a partition's search stands.
enum Progress {
    Running,
    Linearizable,
    /// No linearization covers every op; carries the longest one found (local indices in
    /// linearization order).
    NotLinearizable(Vec<usize>),
}

/// WGL search over one partition (`ops` are history indices), resumable so that `check`
/// can interleave the partitions.
struct Search<'a, M: Model> {
    model: &'a M,
    history: &'a [Operation<M::Input, M::Output>],
    ops: Vec<usize>,
    entries: Entries,
    /// The next entry to consider.
    entry: usize,
    state: M::State,
    linearized: Bitset,
    /// Configurations already entered. What can follow a configuration depends only on
    /// which ops are linearized and the model state, not on their order; so reaching a
    /// cached (set, state) again, by another order of the same ops, would only repeat a
    /// search that has failed (or is still under way further down the stack).
    cache: HashSet<(Bitset, M::State)>,
    /// The current partial linearization: each lifted call node with the state before it.
    calls: Vec<(usize, M::State)>,
    longest: Vec<usize>,
    steps: u64,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, history: &'a [Operation<M::Input, M::Output>], ops: Vec<usize>) -> Self {
        let times: Vec<(u64, u64)> = ops
            .iter()
            .map(|&i| {
                let (call, ret) = (history[i].call, history[i].ret_time());
                assert!(call <= ret, "operation #{i} returns before its call");
                (call, ret)
            })
            .collect();
        let entries = Entries::new(&times);
        Search {
            model,
            history,
            entry: entries.nodes[HEAD].next,
            entries,
            state: model.init(),
            linearized: Bitset::new(ops.len()),
            cache: HashSet::new(),
            calls: Vec::new(),
            longest: Vec::new(),
            steps: 0,
            ops,
        }
    }

    /// Advances the search by at most `budget` steps.
    fn run(&mut self, budget: u64) -> Progress {
        let Search {
            model,
            history,
            ops,
            entries,
            entry,
            state,
            linearized,
            cache,
            calls,
            longest,
            steps,
        } = self;
        let op = |local: usize| &history[ops[local]];
        for _ in 0..budget {
            if entries.nodes[HEAD].next == NIL {
                return Progress::Linearizable;
            }
            *steps += 1;
            // Invariant: every node before `entry` in the list is a call already tried as
            // the next op from the current configuration, and the list still contains the
            // first return event (so `entry` never runs off the end).
            if entries.is_call(*entry) {
                let local = entries.nodes[*entry].op;
                let o = op(local);
                if let Some(next_state) = model.step(state, &o.input, o.output()) {
                    linearized.set(local);
                    if cache.insert((linearized.clone(), next_state.clone())) {
                        calls.push((*entry, std::mem::replace(state, next_state)));
                        entries.lift(*entry);
                        if calls.len() > longest.len() {
                            *longest = calls.iter().map(|&(c, _)| entries.nodes[c].op).collect();
                        }
                        *entry = entries.nodes[HEAD].next;
                        continue;
                    }
                    linearized.clear(local);
                }
                *entry = entries.nodes[*entry].next;
            } else {
                // A return: its op had to be linearized before this point and was not.
                // Undo the last choice and try the call after it.
                let Some((call, prev_state)) = calls.pop() else {
                    return Progress::NotLinearizable(std::mem::take(longest));
                };
                *state = prev_state;
                linearized.clear(entries.nodes[call].op);
                entries.unlift(call);
                *entry = entries.nodes[call].next;
            }
        }
        Progress::Running
    }
}

/// Summarizes a failed partition: how far the longest linearization got, its last few
/// operations, and the operations that could not be linearized after it.
fn describe_failure<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    ops: &[usize],
    longest: &[usize],
    steps: u64,
) -> String {
    const TAIL: usize = 8;
    let op = |local: usize| &history[ops[local]];
    let mut state = model.init();
    for &l in longest {
        let o = op(l);
        state = model
            .step(&state, &o.input, o.output())
            .expect("the longest linearization replays");
    }
    // The candidates for the next step: unlinearized ops called before the earliest return
    // of an unlinearized op.
    let done: HashSet<usize> = longest.iter().copied().collect();
    let rest: Vec<usize> = (0..ops.len()).filter(|l| !done.contains(l)).collect();
    let first_ret = rest.iter().map(|&l| op(l).ret_time()).min().unwrap_or(0);
    let stuck: Vec<String> = rest
        .iter()
        .filter(|&&l| op(l).call <= first_ret)
        .map(|&l| format!("#{} {}", ops[l], op(l).describe()))
        .collect();
    let tail: Vec<String> = longest[longest.len().saturating_sub(TAIL)..]
        .iter()
        .map(|&l| format!("#{} {}", ops[l], op(l).describe()))
        .collect();
    format!(
        "{} ops, {steps} search steps; the longest linearization covers {}, ending with\n  {}\nin state {:?}; none of these fits next:\n  {}",
        ops.len(),
        longest.len(),
        if tail.is_empty() { "(nothing)".to_string() } else { tail.join("\n  ") },
        state,
        stuck.join("\n  "),
    )
}

/// omnikv's key-value map as seen by clients: put, delete, get and compare-and-set on
/// byte-string keys.
pub struct KvModel;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    /// Compare-and-set: puts `value` if the key holds `expect` (`None`: if it is absent),
    /// else changes nothing (a transaction comparing the value, or the create revision or
    /// version with 0, then putting).
    Cas {
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A put or delete was acknowledged.
    Written,
    /// What a get returned; `None` when the key was absent.
    Read(Option<Vec<u8>>),
    /// A compare-and-set was answered: whether the compare held (and the value was put).
    Swapped(bool),
}

impl Model for KvModel {
    type Key = Vec<u8>;
    type Input = KvInput;
    type Output = KvOutput;
    /// The key's value; `None` when absent.
    type State = Option<Vec<u8>>;

    fn key(&self, input: &KvInput) -> Vec<u8> {
        match input {
            KvInput::Put { key, .. }
            | KvInput::Delete { key }
            | KvInput::Get { key }
            | KvInput::Cas { key, .. } => key.clone(),
        }
    }

    fn init(&self) -> Self::State {
        None
    }

    fn step(
        &self,
        state: &Self::State,
        input: &KvInput,
        output: Option<&KvOutput>,
    ) -> Option<Self::State> {
        match (input, output) {
            (KvInput::Put { value, .. }, None | Some(KvOutput::Written)) => {
                Some(Some(value.clone()))
            }
            (KvInput::Delete { .. }, None | Some(KvOutput::Written)) => Some(None),
            (KvInput::Get { .. }, None) => Some(state.clone()),
            (KvInput::Get { .. }, Some(KvOutput::Read(read))) => {
                (read == state).then(|| state.clone())
            }
            // Unknown: the effect it has if it applies at this point (a swap when the compare
            // holds, nothing otherwise); not applying at all is linearizing it last.
            (KvInput::Cas { expect, value, .. }, None) => Some(if state == expect {
                Some(value.clone())
            } else {
                state.clone()
            }),
            (KvInput::Cas { expect, value, .. }, Some(KvOutput::Swapped(swapped))) => {
                if *swapped != (state == expect) {
                    None
                } else if *swapped {
                    Some(Some(value.clone()))
                } else {
                    Some(state.clone())
                }
            }
            (input, Some(output)) => panic!("malformed operation: {input:?} -> {output:?}"),
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> KvInput {
        KvInput::Put {
            key: k.into(),
            value: v.into(),
        }
    }
    fn del(k: &str) -> KvInput {
        KvInput::Delete { key: k.into() }
    }
    fn get(k: &str) -> KvInput {
        KvInput::Get { key: k.into() }
    }
    fn cas(k: &str, expect: Option<&str>, v: &str) -> KvInput {
        KvInput::Cas {
            key: k.into(),
            expect: expect.map(Into::into),
            value: v.into(),
        }
    }
    fn swapped(ok: bool) -> KvOutput {
        KvOutput::Swapped(ok)
    }
    fn read(v: Option<&str>) -> KvOutput {
        KvOutput::Read(v.map(|v| v.as_bytes().to_vec()))
    }
    fn op(
        client: u64,
        call: u64,
        ret: u64,
        input: KvInput,
        output: KvOutput,
    ) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            call,
            input,
            outcome: Outcome::Returned { ret, output },
        }
    }
    fn unknown(client: u64, call: u64, input: KvInput) -> Operation<KvInput, KvOutput> {
        Operation {
            client,
            call,
            input,
            outcome: Outcome::Unknown,
        }
    }

    #[test]
    fn linearizability_kv_sequential_and_concurrent() {
        let h = vec![
            op(0, 0, 1, get("a"), read(None)),
            op(0, 2, 3, put("a", "1"), KvOutput::Written),
            op(1, 4, 8, put("a", "2"), KvOutput::Written),
            // Concurrent with the put of 2: may see either value.
            op(2, 5, 6, get("a"), read(Some("2"))),
            op(3, 5, 7, get("a"), read(Some("1"))),
            op(0, 9, 10, del("a"), KvOutput::Written),
            op(0, 11, 12, get("a"), read(None)),
            op(0, 0, 12, get("b"), read(None)),
        ];
        assert_eq!(check(&KvModel, &h), Verdict::Linearizable);
    }

    #[test]
    fn linearizability_kv_stale_read_is_caught() {
        let h = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            op(0, 2, 3, put("a", "2"), KvOutput::Written),
            op(1, 4, 5, get("a"), read(Some("1"))),
            op(1, 0, 9, get("b"), read(None)),
        ];
        let Verdict::NotLinearizable(v) = check(&KvModel, &h) else {
            panic!("stale read accepted");
        };
        assert_eq!(v.key, b"a".to_vec());
        assert_eq!(v.ops, vec![0, 1, 2]);
        assert_eq!(v.longest_prefix, vec![0, 1]);
        assert!(v.to_string().contains("none of these fits next"), "{v}");
    }

    #[test]
    fn linearizability_kv_unknown_writes_may_or_may_not_apply() {
        // Applied, after its call, even long after the client gave up.
        let applied = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, put("a", "2")),
            op(0, 3, 4, get("a"), read(Some("1"))),
            op(0, 5, 6, get("a"), read(Some("2"))),
        ];
        assert!(check(&KvModel, &applied).is_linearizable());
        // Never applied.
        let lost = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, del("a")),
            op(0, 3, 4, get("a"), read(Some("1"))),
        ];
        assert!(check(&KvModel, &lost).is_linearizable());
        // Not before its call, and once seen it cannot be undone.
        let early = vec![
            op(0, 0, 1, get("a"), read(Some("2"))),
            unknown(1, 2, put("a", "2")),
        ];
        assert!(!check(&KvModel, &early).is_linearizable());
        let flicker = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, put("a", "2")),
            op(0, 3, 4, get("a"), read(Some("2"))),
            op(0, 5, 6, get("a"), read(Some("1"))),
        ];
        assert!(!check(&KvModel, &flicker).is_linearizable());
        // A budget too small for the search gives up instead of answering.
        assert_eq!(check_with_budget(&KvModel, &flicker, 2), None);
        assert!(check_with_budget(&KvModel, &flicker, 1000).is_some());
        // A get with unknown outcome constrains nothing.
        let unknown_get = vec![unknown(0, 0, get("a"))];
        assert!(check(&KvModel, &unknown_get).is_linearizable());
    }

    #[test]
    fn linearizability_cas_races_have_one_winner() {
        let h = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            // Two concurrent swaps from 1: one wins, the other sees the winner's value.
            op(1, 2, 6, cas("a", Some("1"), "2"), swapped(false)),
            op(2, 3, 5, cas("a", Some("1"), "3"), swapped(true)),
            op(0, 7, 8, get("a"), read(Some("3"))),
            // Create-if-absent, then again: the second finds the key.
            op(1, 0, 1, cas("b", None, "x"), swapped(true)),
            op(2, 2, 3, cas("b", None, "y"), swapped(false)),
            op(0, 4, 5, get("b"), read(Some("x"))),
            // A failed swap changes nothing; a delete makes create-if-absent hold again.
            op(0, 0, 1, cas("c", Some("1"), "2"), swapped(false)),
            op(0, 2, 3, get("c"), read(None)),
            op(0, 4, 5, put("c", "1"), KvOutput::Written),
            op(0, 6, 7, del("c"), KvOutput::Written),
            op(0, 8, 9, cas("c", None, "3"), swapped(true)),
            op(0, 10, 11, get("c"), read(Some("3"))),
        ];
        assert_eq!(check(&KvModel, &h), Verdict::Linearizable);
    }

    #[test]
    fn linearizability_cas_violations_are_caught() {
        // Two successful swaps from the same expected value: only one can have seen it.
        let two_winners = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            op(1, 2, 5, cas("a", Some("1"), "2"), swapped(true)),
            op(2, 3, 6, cas("a", Some("1"), "3"), swapped(true)),
        ];
        let Verdict::NotLinearizable(v) = check(&KvModel, &two_winners) else {
            panic!("two winners accepted");
        };
        assert_eq!(v.key, b"a".to_vec());
        assert_eq!(v.longest_prefix.len(), 2, "{v}");
        // A swap that failed although nothing else could have changed the value.
        let lost_swap = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            op(0, 2, 3, cas("a", Some("1"), "2"), swapped(false)),
        ];
        assert!(!check(&KvModel, &lost_swap).is_linearizable());
        // A failed swap must not write.
        let failed_but_wrote = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            op(0, 2, 3, cas("a", Some("0"), "2"), swapped(false)),
            op(0, 4, 5, get("a"), read(Some("2"))),
        ];
        assert!(!check(&KvModel, &failed_but_wrote).is_linearizable());
        // Create-if-absent on a present key.
        let created_twice = vec![
            op(0, 0, 1, cas("b", None, "x"), swapped(true)),
            op(0, 2, 3, cas("b", None, "y"), swapped(true)),
        ];
        assert!(!check(&KvModel, &created_twice).is_linearizable());
    }

    #[test]
    fn linearizability_unknown_cas_applies_only_where_its_compare_holds() {
        // Applied after its call, where the value was the expected one.
        let applied = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, cas("a", Some("1"), "2")),
            op(0, 3, 4, get("a"), read(Some("1"))),
            op(0, 5, 6, get("a"), read(Some("2"))),
        ];
        assert!(check(&KvModel, &applied).is_linearizable());
        // Never applied.
        let lost = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, cas("a", Some("1"), "2")),
            op(0, 3, 4, get("a"), read(Some("1"))),
        ];
        assert!(check(&KvModel, &lost).is_linearizable());
        // Its compare never held: it cannot have written.
        let never_held = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, cas("a", Some("0"), "2")),
            op(0, 3, 4, get("a"), read(Some("2"))),
        ];
        assert!(!check(&KvModel, &never_held).is_linearizable());
        // It could only have applied before the put of 3, which then overwrote it.
        let overwritten = vec![
            op(0, 0, 1, put("a", "1"), KvOutput::Written),
            unknown(1, 2, cas("a", Some("1"), "2")),
            op(0, 3, 4, put("a", "3"), KvOutput::Written),
            op(0, 5, 6, get("a"), read(Some("2"))),
        ];
        assert!(!check(&KvModel, &overwritten).is_linearizable());
        // An unknown create-if-absent, seen later; and it makes a later one fail.
        let created = vec![
            unknown(1, 0, cas("b", None, "x")),
            op(0, 1, 2, cas("b", None, "y"), swapped(false)),
            op(0, 3, 4, get("b"), read(Some("x"))),
        ];
        assert!(check(&KvModel, &created).is_linearizable());
    }
}
