//! The engine boundary: where a channel's stream is made durable.
//!
//! A channel whose namespace keeps history has a **stream**: an epoch and
//! publications numbered 1, 2, 3… The home shard does not number them
//! itself. It asks the driver's engine to [`StoreRequest::Append`] each one,
//! and fans it out (and answers its publisher) only when the engine says
//! [`StoreEvent::Appended`] with the offset it assigned: subscribers never
//! see an offset that a crash could take back. Before a home first uses a
//! stream it [`StoreRequest::Open`]s it, to learn its position and the
//! retained tail (its window: what `history` and recovery read).
//!
//! Engines: [`MemoryStore`] (here, pure: `--store memory` and the
//! simulation's model), SQLite (the transport's default, on a thread of its
//! own, group commit), and Redis (several nodes share the streams; offsets
//! are assigned in Redis). Every engine follows the same rules, so the
//! home's logic does not change with the engine:
//!
//! - answers come back in the order the requests were made (per hub);
//! - an `Append` is answered `Ok` only once it is durable, with offset
//!   `top + 1` of the stream in the epoch it reports;
//! - an `Open` of a channel with no stream creates one with the proposed
//!   epoch; an existing one keeps its epoch for ever (a new epoch means the
//!   stream really was lost);
//! - the tail an `Open` returns is the stream's latest publications, oldest
//!   first, at most `limits.size`, none older than `limits.ttl`.
//!
//! An engine shared by several nodes (Redis) also **delivers**: from an
//! `Open` until the hub lets the channel go ([`crate::Hub::poll_unfollow`]),
//! it sends [`StoreEvent::Delivered`] for every publication appended to the
//! stream after its read, by any node (this hub's own appends included),
//! in offset order; and [`StoreEvent::Resync`] when it may have missed
//! some (its subscription was lost and is back). The home fans out offset
//! `top + 1` only, drops what it has already seen (offset ≤ top: its own
//! appends come back too), and opens the stream again to fill a gap. Such
//! a hub is made with [`crate::Hub::with_delivering_store`]. Channels
//! without a stream cross nodes too, without a position: the hub hands
//! their publications to the engine ([`crate::Hub::poll_broadcast`]), which
//! delivers them (offset 0) to the other nodes that follow the channel
//! ([`crate::Hub::poll_follow`]), with no order across nodes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::bus::{Infos, Stored};
use crate::channel::ChannelName;
use crate::hub::ClientId;
use crate::route::Name;
use crate::time::Timestamp;

/// How much of a stream is retained: the channel's `history_size` and
/// `history_ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    pub size: u32,
    pub ttl: Duration,
}

/// What a hub asks its engine to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreRequest {
    /// Load `channel`'s stream, creating it with `new_epoch` if it has none.
    Open {
        channel: ChannelName,
        new_epoch: u64,
        limits: StreamLimits,
        now: Timestamp,
    },
    /// Append `publication` (its `offset` is ignored: the engine assigns
    /// the next one) and trim the stream to `limits`.
    Append {
        channel: ChannelName,
        /// Comes back in [`StoreEvent::Appended`].
        token: u64,
        publication: Stored,
        limits: StreamLimits,
    },
}

impl StoreRequest {
    /// The answer that refuses this request with `error`: its publisher
    /// gets error 100, a join waiting for the stream is refused.
    #[must_use]
    pub fn fail(self, error: StoreError) -> StoreEvent {
        match self {
            StoreRequest::Open { channel, .. } => StoreEvent::Opened {
                channel,
                result: Err(error),
            },
            StoreRequest::Append { channel, token, .. } => StoreEvent::Appended {
                channel,
                token,
                result: Err(error),
            },
        }
    }

    #[must_use]
    pub fn channel(&self) -> &ChannelName {
        match self {
            Self::Open { channel, .. } | Self::Append { channel, .. } => channel,
        }
    }
}

/// A stream's position and retained tail, as an `Open` found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The offset of the last publication ever appended (0: none yet).
    pub top: u64,
    pub epoch: u64,
    /// The latest retained publications, oldest first.
    pub tail: Vec<Stored>,
}

/// Why an engine could not do what was asked. Publishers get error 100
/// (temporary) and may retry; nothing else is affected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    pub message: String,
}

impl StoreError {
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// An engine's answer, fed back with [`crate::Hub::handle_store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    Opened {
        channel: ChannelName,
        result: Result<StreamState, StoreError>,
    },
    Appended {
        channel: ChannelName,
        token: u64,
        /// The offset assigned and the stream's epoch.
        result: Result<(u64, u64), StoreError>,
    },
    /// A publication appended to a stream this hub follows, by this node
    /// or another, with its offset set; or (offset 0, epoch 0) another
    /// node's publication in a channel without a stream (delivering engines
    /// only; not an answer to a request).
    Delivered {
        channel: ChannelName,
        epoch: u64,
        publication: Stored,
    },
    /// Deliveries for `channel` may have been missed (the engine lost its
    /// subscription and has it again): the home reads the stream again.
    Resync { channel: ChannelName },
    /// A client joined `channel` on another node (delivering engines only).
    RemoteJoined {
        channel: ChannelName,
        member: RemoteMember,
    },
    /// A client left `channel` on another node.
    RemoteLeft {
        channel: ChannelName,
        node: u64,
        client: ClientId,
    },
    /// Every member of `channel` on the other nodes, as the engine read
    /// them: replaces what the home knew (those gone leave, those new join).
    RemoteMembers {
        channel: ChannelName,
        members: Vec<RemoteMember>,
    },
    /// Another node stopped (its liveness expired): its members leave
    /// every channel. Sent to every shard.
    NodeGone { node: u64 },
}

/// A member of a channel on another node, as a delivering engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMember {
    /// The node's id (the engine's; never this node's).
    pub node: u64,
    pub client: ClientId,
    pub user: Option<Name>,
    pub infos: Infos,
}

/// A local member joined (`joined`) or left a channel: what a delivering
/// engine tells the other nodes ([`crate::Hub::poll_presence`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceChange {
    pub channel: ChannelName,
    pub joined: bool,
    pub client: ClientId,
    pub user: Option<Name>,
    pub infos: Infos,
}

/// A stream as [`MemoryStore`] keeps it.
#[derive(Clone, Debug)]
struct MemoryStream {
    top: u64,
    epoch: u64,
    tail: VecDeque<Stored>,
    /// When it was last used, for evicting the least recently used.
    used: u64,
}

/// The in-memory engine: every stream in memory, answered at once.
///
/// Bounded: beyond `max_streams` the least recently used stream is
/// forgotten (its channel starts a new epoch when opened again, which
/// recovery reports honestly). It survives a hub that is replaced (the
/// simulation's restarts), not a process.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    streams: BTreeMap<ChannelName, MemoryStream>,
    /// (last use, channel), oldest first.
    by_use: BTreeMap<u64, ChannelName>,
    clock: u64,
    max_streams: usize,
}

impl MemoryStore {
    #[must_use]
    pub fn new(max_streams: usize) -> Self {
        Self {
            streams: BTreeMap::new(),
            by_use: BTreeMap::new(),
            clock: 0,
            max_streams: max_streams.max(1),
        }
    }

    /// Streams kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The position of `channel`'s stream, if it has one.
    #[must_use]
    pub fn position(&self, channel: &str) -> Option<(u64, u64)> {
        self.streams.get(channel).map(|s| (s.top, s.epoch))
    }

    /// The retained publications of `channel`, oldest first.
    pub fn publications(&self, channel: &str) -> impl Iterator<Item = &Stored> {
        self.streams
            .get(channel)
            .into_iter()
            .flat_map(|s| s.tail.iter())
    }

    /// Forgets every stream (as a deleted store would).
    pub fn clear(&mut self) {
        self.streams.clear();
        self.by_use.clear();
    }

    /// Carries out `request` and answers it.
    pub fn execute(&mut self, request: StoreRequest) -> StoreEvent {
        match request {
            StoreRequest::Open {
                channel,
                new_epoch,
                limits,
                now,
            } => {
                let stream = self.touch(&channel, new_epoch);
                trim(&mut stream.tail, limits, now);
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
                // Appending to a stream this engine forgot starts a new one;
                // the epoch is derived so that it differs from the old.
                let fresh = crate::hub::mix64(self.clock ^ 0x6e65_7765_706f_6368);
                let stream = self.touch(&channel, fresh);
                stream.top += 1;
                publication.offset = stream.top;
                let now = publication.at;
                stream.tail.push_back(publication);
                trim(&mut stream.tail, limits, now);
                let result = Ok((stream.top, stream.epoch));
                StoreEvent::Appended {
                    channel,
                    token,
                    result,
                }
            }
        }
    }

    /// The stream of `channel`, created with `epoch` if missing, marked used.
    fn touch(&mut self, channel: &ChannelName, epoch: u64) -> &mut MemoryStream {
        self.clock += 1;
        let clock = self.clock;
        if let Some(stream) = self.streams.get(channel) {
            self.by_use.remove(&stream.used);
        } else {
            while self.streams.len() >= self.max_streams {
                let Some((_, oldest)) = self.by_use.pop_first() else {
                    break;
                };
                self.streams.remove(&oldest);
            }
        }
        self.by_use.insert(clock, channel.clone());
        let stream = self
            .streams
            .entry(channel.clone())
            .or_insert_with(|| MemoryStream {
                top: 0,
                epoch,
                tail: VecDeque::new(),
                used: clock,
            });
        stream.used = clock;
        stream
    }
}

/// Drops what is beyond `limits` at `now`: the oldest first.
pub fn trim(tail: &mut VecDeque<Stored>, limits: StreamLimits, now: Timestamp) {
    let size = limits.size as usize;
    while tail.len() > size {
        tail.pop_front();
    }
    while tail.front().is_some_and(|p| now.since(p.at) > limits.ttl) {
        tail.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::ClientId;
    use bytes::Bytes;

    fn publication(at: u64, text: &str) -> Stored {
        Stored {
            offset: 0,
            at: Timestamp::from_millis(at),
            data: Bytes::from(format!("{{\"text\":\"{text}\"}}")),
            text: Some(text.into()),
            user: None,
            client: ClientId(7),
            infos: None,
        }
    }

    const LIMITS: StreamLimits = StreamLimits {
        size: 2,
        ttl: Duration::from_secs(10),
    };

    fn append(store: &mut MemoryStore, channel: &str, at: u64) -> (u64, u64) {
        match store.execute(StoreRequest::Append {
            channel: ChannelName::new(channel),
            token: 0,
            publication: publication(at, "x"),
            limits: LIMITS,
        }) {
            StoreEvent::Appended { result: Ok(r), .. } => r,
            other => panic!("{other:?}"),
        }
    }

    fn open(store: &mut MemoryStore, channel: &str, epoch: u64, now: u64) -> StreamState {
        match store.execute(StoreRequest::Open {
            channel: ChannelName::new(channel),
            new_epoch: epoch,
            limits: LIMITS,
            now: Timestamp::from_millis(now),
        }) {
            StoreEvent::Opened { result: Ok(s), .. } => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offsets_count_up_and_the_epoch_stays() {
        let mut store = MemoryStore::new(10);
        assert_eq!(open(&mut store, "a", 42, 0).epoch, 42);
        assert_eq!(append(&mut store, "a", 1), (1, 42));
        assert_eq!(append(&mut store, "a", 2), (2, 42));
        assert_eq!(append(&mut store, "a", 3), (3, 42));
        let state = open(&mut store, "a", 99, 3);
        assert_eq!((state.top, state.epoch), (3, 42), "an open keeps the epoch");
        let offsets: Vec<u64> = state.tail.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, [2, 3], "trimmed to the size");
        // After the ttl nothing is retained, but the position stays.
        let state = open(&mut store, "a", 99, 20_000);
        assert_eq!((state.top, state.tail.len()), (3, 0));
    }

    #[test]
    fn the_least_recently_used_stream_is_forgotten() {
        let mut store = MemoryStore::new(2);
        open(&mut store, "a", 1, 0);
        open(&mut store, "b", 2, 0);
        append(&mut store, "a", 0);
        open(&mut store, "c", 3, 0);
        assert_eq!(store.len(), 2);
        assert!(store.position("b").is_none(), "b was used least recently");
        assert_eq!(store.position("a"), Some((1, 1)));
        assert_eq!(open(&mut store, "b", 5, 0).epoch, 5, "a new stream");
    }
}
