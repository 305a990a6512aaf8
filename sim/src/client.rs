//! A simulated client's side of one connection: how it behaves on the wire
//! and what it observed, kept apart from what the hub believes, so the
//! oracle can compare the two.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use hubbub_core::{CloseCode, Frame, MessageKind, RoomId, SeedMessage, SeedType};

use crate::network::Downstream;

/// How a client uses its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Time to read one batch; 0 reads everything as soon as it is written.
    pub read_interval_ms: u64,
    /// Frames read per batch (at least 1).
    pub read_batch: u32,
    /// Whether a ping is answered with a pong.
    pub answers_pings: bool,
}

impl Link {
    pub const FAST: Self = Self {
        read_interval_ms: 0,
        read_batch: 1,
        answers_pings: true,
    };
}

/// What a client made of one data frame.
#[derive(Debug)]
pub enum Seen {
    /// A relay connection's frame, verbatim.
    Relay(Frame),
    /// A room connection's frame parsed as the seed protocol; `tagged_presence`
    /// is whether the hub marked it as a presence snapshot.
    Room {
        msg: Rc<SeedMessage>,
        tagged_presence: bool,
    },
    /// A room frame that is not a seed message.
    Unparseable { why: String },
}

/// What a client saw on one connection, in counts and latest values.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub chats: u64,
    pub joined: u64,
    pub left: u64,
    pub presence_snapshots: u64,
    /// The latest `online_users` content.
    pub last_presence: Option<String>,
    pub relay_frames: u64,
    pub pings: u64,
    /// The close code, once the close frame arrived.
    pub close: Option<CloseCode>,
}

/// The client end of one connection.
#[derive(Debug)]
pub struct ClientView {
    pub link: Link,
    /// Relay connections see raw frames; room connections parse seed JSON.
    pub room_protocol: bool,
    /// A stalled client reads nothing: arrivals wait in `unread` and the
    /// server's writer stops (the TCP window is shut).
    pub reading: bool,
    /// The client takes no further part: it left, vanished, or saw its close.
    pub gone: bool,
    pub unread: VecDeque<Downstream>,
    pub observed: Observed,
}

impl ClientView {
    #[must_use]
    pub fn new(link: Link, room_protocol: bool) -> Self {
        Self {
            link,
            room_protocol,
            reading: true,
            gone: false,
            unread: VecDeque::new(),
            observed: Observed::default(),
        }
    }

    /// Reading, answering pings and still there: the hub must keep it.
    #[must_use]
    pub fn healthy(&self) -> bool {
        self.reading && self.link.answers_pings && !self.gone
    }

    /// Reads one data frame the way a real client would.
    pub fn see(&mut self, frame: &Frame, presence: Option<RoomId>, cache: &mut ParseCache) -> Seen {
        if !self.room_protocol {
            self.observed.relay_frames += 1;
            return Seen::Relay(frame.clone());
        }
        if frame.kind != MessageKind::Text {
            return Seen::Unparseable {
                why: "binary frame on a JSON connection".to_owned(),
            };
        }
        match cache.parse(&frame.payload) {
            Err(why) => Seen::Unparseable { why },
            Ok(msg) => {
                match msg.kind {
                    SeedType::Chat => self.observed.chats += 1,
                    SeedType::UserJoined => self.observed.joined += 1,
                    SeedType::UserLeft => self.observed.left += 1,
                    SeedType::OnlineUsers => {
                        self.observed.presence_snapshots += 1;
                        self.observed.last_presence = Some(msg.content.clone());
                    }
                }
                Seen::Room {
                    msg,
                    tagged_presence: presence.is_some(),
                }
            }
        }
    }
}

/// Seed messages parsed lately, by buffer: a broadcast is one shared buffer
/// that every member reads, so it is parsed once, not once per member.
/// Entries hold a clone of their buffer, so an equal address is the same
/// buffer (it cannot have been freed and reused).
#[derive(Debug, Default)]
pub struct ParseCache {
    entries: VecDeque<(Bytes, Result<Rc<SeedMessage>, String>)>,
}

impl ParseCache {
    const SIZE: usize = 16;

    fn parse(&mut self, payload: &Bytes) -> Result<Rc<SeedMessage>, String> {
        let same = |b: &Bytes| b.as_ptr() == payload.as_ptr() && b.len() == payload.len();
        if let Some((_, parsed)) = self.entries.iter().find(|(b, _)| same(b)) {
            return parsed.clone();
        }
        let parsed = serde_json::from_slice::<SeedMessage>(payload)
            .map(Rc::new)
            .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(payload)));
        if self.entries.len() == Self::SIZE {
            self.entries.pop_back();
        }
        self.entries.push_front((payload.clone(), parsed.clone()));
        parsed
    }
}
