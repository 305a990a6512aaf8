//! The store engine as the cluster world runs it: seeded latency, slow
//! commits, failures, crashes, and bugs planted on purpose.
//!
//! Hubs are built with [`hubbub_core::Hub::with_external_store`]; the
//! cluster hands every [`StoreRequest`] a hub emits to [`StoreModel::submit`]
//! and feeds the answer back when [`StoreModel::deliver`] says so. The
//! engine rules of `hubbub_core::store` hold here too:
//!
//! - **one queue per hub, answered in order**: each request gets a latency
//!   `0..=latency_max_ms`, and now and then (`slow_permille`) a slow commit
//!   of 50–500 ms; an answer is due no earlier than the one before it, so
//!   one hub's answers are never reordered (a slow commit holds up the
//!   batch behind it, as a group commit does);
//! - **durable = answered**: a request is carried out on the durable state
//!   at the moment its answer is delivered to the hub, not when it is
//!   submitted. So "the store holds it" is well defined at every instant,
//!   and an `Ok` can never overtake the write it reports;
//! - **failures**: with probability `fail_permille` an answer is an error
//!   (`Append` → `Err`, `Open` → `Err`) and nothing is written;
//! - **crash** ([`StoreModel::crash`]): answers in flight are lost. Of each
//!   hub's queue a seeded *prefix* was already on disk when the process
//!   died (durable, never acknowledged: legal, since nobody was told), the
//!   rest is lost (never acknowledged either). The durable state survives.
//!
//! The durable state follows `MemoryStore`'s rules exactly (offset
//! `top + 1`, an existing stream keeps its epoch, the tail trimmed to the
//! stream's limits), minus its LRU bound; `sim/tests/store.rs` checks the
//! two give the same answers. Besides the retained tail it keeps a record of
//! every publication ever made durable, retention aside, which the
//! durable-ack rule reads.

use std::collections::{BTreeMap, VecDeque};

use hubbub_core::bus::Stored;
use hubbub_core::{ChannelName, StoreError, StoreEvent, StoreRequest, StreamState, Timestamp};

use crate::rng::SimRng;

/// A planted bug in the store engine, for tests that the rules catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreFault {
    None,
    /// The `n`th `Append` is answered `Ok` (with offset `top + 1`) but never
    /// written: acknowledged before it was durable, then lost.
    AckBeforeDurable(u64),
    /// At every crash each stream's top goes back by one (its last
    /// publication is lost, the epoch stays): the next append reuses an
    /// offset somebody already saw.
    ReuseOffsetAfterCrash,
    /// The `n`th `Open` (or the first after it whose tail has three or
    /// more publications) loses the publication before the last from the
    /// stream's tail (not from its position): a hole in the middle, which
    /// this and every later `Open` of the stream returns.
    PartialTail(u64),
}

/// The store's knobs.
#[derive(Clone, Copy, Debug)]
pub struct StoreParams {
    pub latency_max_ms: u64,
    /// Of 1000 requests, how many are slow commits (50–500 ms more).
    pub slow_permille: u64,
    /// Of 1000 answers, how many are errors.
    pub fail_permille: u64,
    pub fault: StoreFault,
}

/// What the store did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub opens: u64,
    pub appends: u64,
    pub failures: u64,
    pub slow_commits: u64,
    /// Requests that were on disk when a crash lost their answers.
    pub durable_unanswered: u64,
    /// Requests lost in a crash.
    pub lost: u64,
}

#[derive(Clone, Debug)]
struct Stream {
    top: u64,
    epoch: u64,
    tail: VecDeque<Stored>,
}

/// The engine: per-hub queues in front of the durable state.
#[derive(Debug)]
pub struct StoreModel {
    params: StoreParams,
    rng: SimRng,
    streams: BTreeMap<ChannelName, Stream>,
    /// Every publication ever made durable, retention aside:
    /// (channel, epoch, offset) → its data's `text`.
    durable: BTreeMap<(String, u64, u64), String>,
    /// (channel, text) → (epoch, offset), the same record by text.
    by_text: BTreeMap<(String, String), (u64, u64)>,
    queues: Vec<VecDeque<StoreRequest>>,
    last_due: Vec<Timestamp>,
    /// `Ok` answers so far, for the planted faults.
    appends_answered: u64,
    opens_answered: u64,
    partial_done: bool,
    fresh: u64,
    pub counts: StoreCounts,
}

/// The `text` of a publication's data (`{"text": …}`), as clients read it.
#[must_use]
pub fn text_of(data: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

impl StoreModel {
    #[must_use]
    pub fn new(params: StoreParams, shards: u16, seed: u64) -> Self {
        Self {
            params,
            rng: SimRng::stream(seed, "store"),
            streams: BTreeMap::new(),
            durable: BTreeMap::new(),
            by_text: BTreeMap::new(),
            queues: vec![VecDeque::new(); usize::from(shards)],
            last_due: vec![Timestamp::ZERO; usize::from(shards)],
            appends_answered: 0,
            opens_answered: 0,
            partial_done: false,
            fresh: 0,
            counts: StoreCounts::default(),
        }
    }

    /// Queues `request` of `shard`'s hub; returns when its answer is due.
    pub fn submit(&mut self, shard: usize, now: Timestamp, request: StoreRequest) -> Timestamp {
        let mut latency = self.rng.between(0, self.params.latency_max_ms);
        if self.rng.below(1000) < self.params.slow_permille {
            latency += self.rng.between(50, 500);
            self.counts.slow_commits += 1;
        }
        let due = Timestamp::from_millis(now.as_millis() + latency).max(self.last_due[shard]);
        self.last_due[shard] = due;
        self.queues[shard].push_back(request);
        due
    }

    /// Answers the oldest request of `shard`'s hub, writing it now.
    pub fn deliver(&mut self, shard: usize) -> Option<StoreEvent> {
        let request = self.queues[shard].pop_front()?;
        if self.rng.below(1000) < self.params.fail_permille {
            self.counts.failures += 1;
            return Some(request.fail(StoreError::new("the model's disk said no")));
        }
        Some(match request {
            StoreRequest::Append {
                channel,
                token,
                publication,
                limits,
            } => {
                self.appends_answered += 1;
                self.counts.appends += 1;
                if self.params.fault == StoreFault::AckBeforeDurable(self.appends_answered) {
                    // Planted: the answer the write would get, not the write.
                    let (top, epoch) = self
                        .streams
                        .get(&channel)
                        .map_or((0, 0), |s| (s.top, s.epoch));
                    return Some(StoreEvent::Appended {
                        channel,
                        token,
                        result: Ok((top + 1, epoch)),
                    });
                }
                self.execute(StoreRequest::Append {
                    channel,
                    token,
                    publication,
                    limits,
                })
            }
            open @ StoreRequest::Open { .. } => {
                self.opens_answered += 1;
                self.counts.opens += 1;
                let mut event = self.execute(open);
                if let (
                    StoreFault::PartialTail(n),
                    StoreEvent::Opened {
                        result: Ok(state), ..
                    },
                ) = (self.params.fault, &mut event)
                {
                    if !self.partial_done && self.opens_answered >= n && state.tail.len() >= 3 {
                        // Planted: a hole just before the last publication,
                        // in the stored tail too (later opens read it again).
                        let at = state.tail.len() - 2;
                        let lost = state.tail.remove(at).offset;
                        if let StoreEvent::Opened { channel, .. } = &event {
                            if let Some(stream) = self.streams.get_mut(channel) {
                                stream.tail.retain(|p| p.offset != lost);
                            }
                        }
                        self.partial_done = true;
                    }
                }
                event
            }
        })
    }

    /// The process died: answers in flight are lost; of each hub's queue a
    /// seeded prefix had reached the disk.
    pub fn crash(&mut self) {
        for shard in 0..self.queues.len() {
            let queue = std::mem::take(&mut self.queues[shard]);
            let written = self.rng.between(0, queue.len() as u64) as usize;
            for (i, request) in queue.into_iter().enumerate() {
                if i < written {
                    self.counts.durable_unanswered += 1;
                    self.execute(request);
                } else {
                    self.counts.lost += 1;
                }
            }
            self.last_due[shard] = Timestamp::ZERO;
        }
        if self.params.fault == StoreFault::ReuseOffsetAfterCrash {
            for (channel, stream) in &mut self.streams {
                if stream.top == 0 {
                    continue;
                }
                let top = stream.top;
                stream.tail.retain(|p| p.offset != top);
                if let Some(text) =
                    self.durable
                        .remove(&(channel.as_str().to_owned(), stream.epoch, top))
                {
                    self.by_text.remove(&(channel.as_str().to_owned(), text));
                }
                stream.top -= 1;
            }
        }
    }

    /// Carries out `request` on the durable state, with no latency, failure
    /// or fault: `MemoryStore`'s rules.
    pub fn execute(&mut self, request: StoreRequest) -> StoreEvent {
        match request {
            StoreRequest::Open {
                channel,
                new_epoch,
                limits,
                now,
            } => {
                let stream = self.streams.entry(channel.clone()).or_insert(Stream {
                    top: 0,
                    epoch: new_epoch,
                    tail: VecDeque::new(),
                });
                hubbub_core::store::trim(&mut stream.tail, limits, now);
                let state = StreamState {
                    top: stream.top,
                    epoch: stream.epoch,
                    tail: stream.tail.iter().cloned().collect(),
                };
                StoreEvent::Opened {
                    channel,
                    result: Ok(state),
                }
            }
            StoreRequest::Append {
                channel,
                token,
                mut publication,
                limits,
            } => {
                self.fresh += 1;
                let fresh = crate::rng::mix64(self.fresh ^ 0x6e65_7765_706f_6368);
                let stream = self.streams.entry(channel.clone()).or_insert(Stream {
                    top: 0,
                    epoch: fresh,
                    tail: VecDeque::new(),
                });
                stream.top += 1;
                publication.offset = stream.top;
                let key = (channel.as_str().to_owned(), stream.epoch, stream.top);
                let text = text_of(&publication.data);
                self.by_text
                    .insert((channel.as_str().to_owned(), text.clone()), (key.1, key.2));
                self.durable.insert(key, text);
                let now = publication.at;
                stream.tail.push_back(publication);
                hubbub_core::store::trim(&mut stream.tail, limits, now);
                StoreEvent::Appended {
                    channel,
                    token,
                    result: Ok((stream.top, stream.epoch)),
                }
            }
        }
    }

    /// Where the store holds the publication `text` of `channel`, if it does.
    #[must_use]
    pub fn durable_at(&self, channel: &str, text: &str) -> Option<(u64, u64)> {
        self.by_text
            .get(&(channel.to_owned(), text.to_owned()))
            .copied()
    }

    /// The text the store holds at (`channel`, `epoch`, `offset`).
    #[must_use]
    pub fn durable(&self, channel: &str, epoch: u64, offset: u64) -> Option<&str> {
        self.durable
            .get(&(channel.to_owned(), epoch, offset))
            .map(String::as_str)
    }

    /// `channel`'s (top, epoch), if it has a stream.
    #[must_use]
    pub fn position(&self, channel: &str) -> Option<(u64, u64)> {
        self.streams.get(channel).map(|s| (s.top, s.epoch))
    }

    /// Whether a text was ever made durable in any channel.
    #[must_use]
    pub fn holds_text(&self, text: &str) -> bool {
        self.by_text.keys().any(|(_, t)| t == text)
    }

    /// Requests waiting for an answer, over all hubs.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}
