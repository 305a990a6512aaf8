//! The input recording format: what a driver gave one hub, so that a fresh
//! hub can be given it again (`hubbub --record-inputs`, `hubbub-sim replay`).
//!
//! Pure encoding and decoding; the driver does the IO. A recording is:
//!
//! ```text
//! magic "HUBBUBRC" · version (u8, = 3) · header · record* · trailer?
//! header  : config fields (limits, entropy, shards, rate limits), server
//!           version, flags (bit 0 redacted), engine (v2: 0 inline memory
//!           store · 1 external store · 2 delivering store, i.e. Redis)
//! record  : tag (u8) · at (varint ms) · fields
//!   1 input open      conn · route (0 relay | 1 room: room, username, history | 2 centrifuge)
//!   2 input message   conn · kind (0 text | 1 binary) · payload (varint length · bytes)
//!   3 input pong      conn
//!   4 input queue full conn
//!   5 input disconnect conn · close reason (index in CloseReason::ALL)
//!   6 input shutdown
//!   7 timeout
//!   8 unsupported     kind (1 api · 2 bus · 3 store): an input this version cannot carry
//!   9 store event     (v2) kind · channel · fields (see `encode_store`)
//!  10 api request     (v2) id · method · body · uptime (seconds, as the server filled it)
//!   0xFF trailer      records · records dropped · outputs hash (u64 LE)
//! ```
//!
//! Integers are LEB128 varints; strings are a varint length and UTF-8.
//!
//! **Version rule:** a reader refuses a version it does not know. Any
//! change to what an existing tag or header field means, or to their
//! order, takes a new version number; new record tags may be added within
//! a version only if a reader can skip them, which in version 1 it cannot,
//! so in practice every change bumps the version. A reader may keep
//! reading older versions: this one reads 1 (no store or API records, the
//! inline store), 2 and 3 (v3 added the store event kinds 6–9: members
//! on other nodes).
//!
//! [`OutputHash`] fingerprints what the hub produced, the same way on the
//! server and in the replay, so the two can be compared.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;

use crate::bus::{InfoPair, Infos, Stored};
use crate::store::{RemoteMember, StoreError, StoreEvent, StreamState};
use crate::{
    ApiRequest, ChannelName, ClientId, CloseReason, Config, ConnId, Frame, Input, MessageKind,
    Name, Output, Route, Timestamp,
};

pub const MAGIC: &[u8; 8] = b"HUBBUBRC";
/// The version this build writes.
pub const VERSION: u8 = 3;
/// The oldest version this build still reads.
pub const OLDEST_READABLE: u8 = 1;

const TAG_OPEN: u8 = 1;
const TAG_MESSAGE: u8 = 2;
const TAG_PONG: u8 = 3;
const TAG_QUEUE_FULL: u8 = 4;
const TAG_DISCONNECT: u8 = 5;
const TAG_SHUTDOWN: u8 = 6;
const TAG_TIMEOUT: u8 = 7;
const TAG_UNSUPPORTED: u8 = 8;
const TAG_STORE: u8 = 9;
const TAG_API: u8 = 10;
const TAG_TRAILER: u8 = 0xFF;

/// One thing the driver gave the hub, at a time in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Input {
        at: u64,
        input: Input,
    },
    Timeout {
        at: u64,
    },
    /// The store engine's answer or delivery (`handle_store`).
    Store {
        at: u64,
        event: StoreEvent,
    },
    /// A server API request (`handle_api`), as it came over HTTP.
    Api {
        at: u64,
        call: ApiCall,
    },
    /// An input this version does not carry (a bus message, or a store
    /// event newer than the format): a replay cannot go on past it
    /// faithfully.
    Unsupported {
        at: u64,
        kind: Unsupported,
    },
    /// Written at a clean end: how many records were written and dropped
    /// (the recorder never blocks the hub: a full buffer drops), and the
    /// hash of every output the hub produced.
    Trailer {
        records: u64,
        dropped: u64,
        outputs_hash: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    Api = 1,
    Bus = 2,
    Store = 3,
}

/// A server API request as recorded: the method and body as they came,
/// and the uptime the server filled into `info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub id: u64,
    pub method: String,
    pub body: Bytes,
    pub uptime: u64,
}

impl ApiCall {
    /// The request the hub got, decoded again the way the server did.
    ///
    /// # Errors
    /// The body does not decode (a redacted recording's may not).
    pub fn request(&self) -> Result<ApiRequest, crate::api::DecodeError> {
        let mut command = crate::api::decode(&self.method, &self.body)?;
        crate::api::fill_uptime(&mut command, self.uptime);
        Ok(ApiRequest {
            id: self.id,
            command,
        })
    }
}

/// Which store engine the recorded hub was made with, so that a replay
/// makes its hub the same way (`Hub::new`, `with_external_store`,
/// `with_delivering_store`) and feeds it the recorded store events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    /// The in-memory store the hub runs itself: no store events.
    #[default]
    Inline = 0,
    /// An engine outside the hub (SQLite): its answers are recorded.
    External = 1,
    /// A shared engine that also delivers (Redis): answers and deliveries.
    Delivering = 2,
}

/// What a recording's header keeps of the hub's [`Config`]: everything but
/// namespaces, tokens and the server version, whose absence the header
/// says ([`Header::replayable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub config: Config,
    /// Message contents were replaced with `x` bytes of the same length.
    pub redacted: bool,
    /// The hub had namespaces other than the default, or a token verifier:
    /// a replay runs with the defaults and may answer differently.
    pub config_incomplete: bool,
    pub engine: Engine,
}

impl Header {
    #[must_use]
    pub fn new(config: &Config, redacted: bool, engine: Engine) -> Self {
        let config_incomplete = config.namespaces != crate::Namespaces::default()
            || config.tokens != crate::Tokens::default();
        Self {
            config: config.clone(),
            redacted,
            config_incomplete,
            engine,
        }
    }

    /// The magic, the version and the header, to start a file with.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let c = &self.config;
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [
            millis(c.ping_interval),
            millis(c.pong_timeout),
            c.max_message_bytes as u64,
            c.send_queue as u64,
            c.max_connections as u64,
            c.max_command_bytes as u64,
            millis(c.connect_timeout),
            c.channel_limit as u64,
            c.max_channel_bytes as u64,
            c.idle_streams as u64,
            c.store_queue as u64,
            c.entropy,
            u64::from(c.shards),
            u64::from(c.shard.0),
            u64::from(c.allow_anonymous),
            millis(c.expired_close_delay),
            c.user_connection_limit as u64,
        ] {
            varint(&mut out, v);
        }
        for rate in [c.command_rate, c.user_publish_rate, c.presence_rate] {
            // 0: no limit; else the rate + 1, then the burst.
            let (per_second, burst) = rate.map_or((0, 0), |r| {
                (u64::from(r.per_second) + 1, u64::from(r.burst))
            });
            varint(&mut out, per_second);
            varint(&mut out, burst);
        }
        string(&mut out, &c.server_version);
        out.push(u8::from(self.redacted) | (u8::from(self.config_incomplete) << 1));
        out.push(self.engine as u8);
        out
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Appends `input` at `at` to `out`; with `redact`, a message's payload is
/// replaced with as many `x` bytes.
pub fn encode_input(out: &mut Vec<u8>, at: u64, input: &Input, redact: bool) {
    let tag = match input {
        Input::Open { .. } => TAG_OPEN,
        Input::Message { .. } => TAG_MESSAGE,
        Input::Pong { .. } => TAG_PONG,
        Input::QueueFull { .. } => TAG_QUEUE_FULL,
        Input::Disconnect { .. } => TAG_DISCONNECT,
        Input::Shutdown => TAG_SHUTDOWN,
    };
    out.push(tag);
    varint(out, at);
    match input {
        Input::Open { conn, route } => {
            varint(out, conn.0);
            match route {
                Route::Relay => out.push(0),
                Route::Room {
                    room,
                    username,
                    history,
                } => {
                    out.push(1);
                    string(out, room.as_str());
                    string(out, username.as_str());
                    out.push(*history);
                }
                Route::Centrifuge => out.push(2),
            }
        }
        Input::Message { conn, frame } => {
            varint(out, conn.0);
            out.push(match frame.kind {
                MessageKind::Text => 0,
                MessageKind::Binary => 1,
            });
            varint(out, frame.payload.len() as u64);
            if redact {
                out.resize(out.len() + frame.payload.len(), b'x');
            } else {
                out.extend_from_slice(&frame.payload);
            }
        }
        Input::Pong { conn } | Input::QueueFull { conn } => varint(out, conn.0),
        Input::Disconnect { conn, reason } => {
            varint(out, conn.0);
            let index = CloseReason::ALL
                .iter()
                .position(|r| r == reason)
                .unwrap_or(0);
            varint(out, index as u64);
        }
        Input::Shutdown => {}
    }
}

/// Appends a `handle_timeout(at)`.
pub fn encode_timeout(out: &mut Vec<u8>, at: u64) {
    out.push(TAG_TIMEOUT);
    varint(out, at);
}

/// Appends a store event at `at`; with `redact`, publication contents
/// (data and seed text) are replaced with as many `x` bytes.
///
/// ```text
/// kind · channel · fields
///   0 opened ok     top · epoch · count · stored*
///   1 opened error  message
///   2 appended ok   token · offset · epoch
///   3 appended err  token · message
///   4 delivered     epoch · stored
///   5 resync
///   6 remote joined  member                          (v3)
///   7 remote left    node · client (16 bytes LE)     (v3)
///   8 remote members count · member*                 (v3)
///   9 node gone      node (the channel is empty)     (v3)
/// member: node · client (16 bytes LE) · user? · conn_info? · chan_info?
/// stored: offset · at · data · text? · user? · client (16 bytes LE) · infos
/// optional fields: a byte 0 (absent) or 1 then the value
/// ```
pub fn encode_store(out: &mut Vec<u8>, at: u64, event: &StoreEvent, redact: bool) {
    out.push(TAG_STORE);
    varint(out, at);
    match event {
        StoreEvent::Opened { channel, result } => {
            out.push(if result.is_ok() { 0 } else { 1 });
            string(out, channel.as_str());
            match result {
                Ok(state) => {
                    varint(out, state.top);
                    varint(out, state.epoch);
                    varint(out, state.tail.len() as u64);
                    for p in &state.tail {
                        stored(out, p, redact);
                    }
                }
                Err(e) => string(out, &e.message),
            }
        }
        StoreEvent::Appended {
            channel,
            token,
            result,
        } => {
            out.push(if result.is_ok() { 2 } else { 3 });
            string(out, channel.as_str());
            varint(out, *token);
            match result {
                Ok((offset, epoch)) => {
                    varint(out, *offset);
                    varint(out, *epoch);
                }
                Err(e) => string(out, &e.message),
            }
        }
        StoreEvent::Delivered {
            channel,
            epoch,
            publication,
        } => {
            out.push(4);
            string(out, channel.as_str());
            varint(out, *epoch);
            stored(out, publication, redact);
        }
        StoreEvent::Resync { channel } => {
            out.push(5);
            string(out, channel.as_str());
        }
        StoreEvent::RemoteJoined { channel, member } => {
            out.push(6);
            string(out, channel.as_str());
            remote_member(out, member);
        }
        StoreEvent::RemoteLeft {
            channel,
            node,
            client,
        } => {
            out.push(7);
            string(out, channel.as_str());
            varint(out, *node);
            out.extend_from_slice(&client.0.to_le_bytes());
        }
        StoreEvent::RemoteMembers { channel, members } => {
            out.push(8);
            string(out, channel.as_str());
            varint(out, members.len() as u64);
            for member in members {
                remote_member(out, member);
            }
        }
        StoreEvent::NodeGone { node } => {
            out.push(9);
            string(out, "");
            varint(out, *node);
        }
    }
}

fn remote_member(out: &mut Vec<u8>, m: &RemoteMember) {
    varint(out, m.node);
    out.extend_from_slice(&m.client.0.to_le_bytes());
    optional(out, m.user.as_ref().map(|u| u.as_str().as_bytes()), false);
    let pair = m.infos.as_deref();
    optional(out, pair.and_then(|i| i.conn_info.as_deref()), false);
    optional(out, pair.and_then(|i| i.chan_info.as_deref()), false);
}

fn contents(out: &mut Vec<u8>, bytes: &[u8], redact: bool) {
    varint(out, bytes.len() as u64);
    if redact {
        out.resize(out.len() + bytes.len(), b'x');
    } else {
        out.extend_from_slice(bytes);
    }
}

fn optional(out: &mut Vec<u8>, value: Option<&[u8]>, redact: bool) {
    match value {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            contents(out, bytes, redact);
        }
    }
}

fn stored(out: &mut Vec<u8>, p: &Stored, redact: bool) {
    varint(out, p.offset);
    varint(out, p.at.as_millis());
    contents(out, &p.data, redact);
    optional(out, p.text.as_deref().map(str::as_bytes), redact);
    optional(out, p.user.as_ref().map(|u| u.as_str().as_bytes()), false);
    out.extend_from_slice(&p.client.0.to_le_bytes());
    let pair = p.infos.as_deref();
    optional(out, pair.and_then(|i| i.conn_info.as_deref()), false);
    optional(out, pair.and_then(|i| i.chan_info.as_deref()), false);
}

/// Appends a server API request at `at`; with `redact`, the body is
/// replaced with as many `x` bytes (a replay then cannot decode it).
pub fn encode_api(out: &mut Vec<u8>, at: u64, call: &ApiCall, redact: bool) {
    out.push(TAG_API);
    varint(out, at);
    varint(out, call.id);
    string(out, &call.method);
    contents(out, &call.body, redact);
    varint(out, call.uptime);
}

/// Appends an input this version cannot carry.
pub fn encode_unsupported(out: &mut Vec<u8>, at: u64, kind: Unsupported) {
    out.push(TAG_UNSUPPORTED);
    varint(out, at);
    out.push(kind as u8);
}

/// Appends the trailer.
pub fn encode_trailer(out: &mut Vec<u8>, records: u64, dropped: u64, outputs_hash: u64) {
    out.push(TAG_TRAILER);
    varint(out, records);
    varint(out, dropped);
    out.extend_from_slice(&outputs_hash.to_le_bytes());
}

/// Why a recording cannot be read (from a byte offset on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotARecording,
    UnknownVersion(u8),
    /// The bytes end inside a record (a recording cut short, e.g. by a crash).
    Truncated {
        offset: usize,
    },
    Malformed {
        offset: usize,
        what: &'static str,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotARecording => f.write_str("not a hubbub recording (bad magic)"),
            Self::UnknownVersion(v) => write!(
                f,
                "recording format version {v}; this build reads version {VERSION}"
            ),
            Self::Truncated { offset } => {
                write!(f, "the recording ends inside a record at byte {offset}")
            }
            Self::Malformed { offset, what } => write!(f, "malformed {what} at byte {offset}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads a recording from its bytes: the header, then records one by one.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// # Errors
    /// Not a recording, an unknown version, or a damaged header.
    pub fn new(data: &'a [u8]) -> Result<(Self, Header), ReadError> {
        if data.len() < 9 || &data[..8] != MAGIC {
            return Err(ReadError::NotARecording);
        }
        let version = data[8];
        if !(OLDEST_READABLE..=VERSION).contains(&version) {
            return Err(ReadError::UnknownVersion(version));
        }
        let mut r = Self { data, pos: 9 };
        let mut v = [0u64; 17];
        for slot in &mut v {
            *slot = r.varint()?;
        }
        let mut rates = [None; 3];
        for rate in &mut rates {
            let (per_second, burst) = (r.varint()?, r.varint()?);
            *rate = per_second.checked_sub(1).map(|p| {
                crate::Rate::new(
                    u32::try_from(p).unwrap_or(u32::MAX),
                    u32::try_from(burst).unwrap_or(u32::MAX),
                )
            });
        }
        let [command_rate, user_publish_rate, presence_rate] = rates;
        let server_version = r.string()?;
        let flags = r.byte()?;
        let engine = if version >= 2 {
            match r.byte()? {
                0 => Engine::Inline,
                1 => Engine::External,
                2 => Engine::Delivering,
                _ => {
                    return Err(ReadError::Malformed {
                        offset: r.pos - 1,
                        what: "engine",
                    })
                }
            }
        } else {
            Engine::Inline
        };
        let size = |x: u64| usize::try_from(x).unwrap_or(usize::MAX);
        let config = Config {
            ping_interval: Duration::from_millis(v[0]),
            pong_timeout: Duration::from_millis(v[1]),
            max_message_bytes: size(v[2]),
            send_queue: size(v[3]),
            max_connections: size(v[4]),
            max_command_bytes: size(v[5]),
            connect_timeout: Duration::from_millis(v[6]),
            channel_limit: size(v[7]),
            max_channel_bytes: size(v[8]),
            idle_streams: size(v[9]),
            store_queue: size(v[10]),
            entropy: v[11],
            shards: u16::try_from(v[12]).unwrap_or(1),
            shard: crate::ShardId(u16::try_from(v[13]).unwrap_or(0)),
            allow_anonymous: v[14] != 0,
            expired_close_delay: Duration::from_millis(v[15]),
            user_connection_limit: size(v[16]),
            command_rate,
            user_publish_rate,
            presence_rate,
            server_version,
            ..Config::default()
        };
        let header = Header {
            config,
            redacted: flags & 1 != 0,
            config_incomplete: flags & 2 != 0,
            engine,
        };
        Ok((r, header))
    }

    /// The next record; `None` at the end of the bytes.
    ///
    /// # Errors
    /// A damaged or cut-short record.
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        if self.pos >= self.data.len() {
            return Ok(None);
        }
        let tag = self.byte()?;
        if tag == TAG_TRAILER {
            let records = self.varint()?;
            let dropped = self.varint()?;
            let bytes = self.take(8)?;
            let mut hash = [0u8; 8];
            hash.copy_from_slice(bytes);
            return Ok(Some(Record::Trailer {
                records,
                dropped,
                outputs_hash: u64::from_le_bytes(hash),
            }));
        }
        let at = self.varint()?;
        let offset = self.pos;
        let record = match tag {
            TAG_TIMEOUT => Record::Timeout { at },
            TAG_UNSUPPORTED => {
                let kind = match self.byte()? {
                    1 => Unsupported::Api,
                    2 => Unsupported::Bus,
                    3 => Unsupported::Store,
                    _ => return Err(self.malformed(offset, "unsupported-input kind")),
                };
                Record::Unsupported { at, kind }
            }
            TAG_STORE => Record::Store {
                at,
                event: self.store_event(offset)?,
            },
            TAG_API => {
                let id = self.varint()?;
                let method = self.string()?;
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                let body = Bytes::copy_from_slice(self.take(len)?);
                let uptime = self.varint()?;
                Record::Api {
                    at,
                    call: ApiCall {
                        id,
                        method,
                        body,
                        uptime,
                    },
                }
            }
            TAG_OPEN => {
                let conn = ConnId(self.varint()?);
                let route = match self.byte()? {
                    0 => Route::Relay,
                    1 => {
                        let room = Name::new(&self.string()?)
                            .map_err(|_| self.malformed(offset, "room name"))?;
                        let username = Name::new(&self.string()?)
                            .map_err(|_| self.malformed(offset, "username"))?;
                        let history = self.byte()?;
                        Route::Room {
                            room,
                            username,
                            history,
                        }
                    }
                    2 => Route::Centrifuge,
                    _ => return Err(self.malformed(offset, "route")),
                };
                Record::Input {
                    at,
                    input: Input::Open { conn, route },
                }
            }
            TAG_MESSAGE => {
                let conn = ConnId(self.varint()?);
                let kind = self.byte()?;
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                let payload = self.take(len)?.to_vec();
                let frame = match kind {
                    0 => Frame::text(payload),
                    1 => Frame::binary(payload),
                    _ => return Err(self.malformed(offset, "message kind")),
                };
                Record::Input {
                    at,
                    input: Input::Message { conn, frame },
                }
            }
            TAG_PONG => Record::Input {
                at,
                input: Input::Pong {
                    conn: ConnId(self.varint()?),
                },
            },
            TAG_QUEUE_FULL => Record::Input {
                at,
                input: Input::QueueFull {
                    conn: ConnId(self.varint()?),
                },
            },
            TAG_DISCONNECT => {
                let conn = ConnId(self.varint()?);
                let index = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                let reason = *CloseReason::ALL
                    .get(index)
                    .ok_or_else(|| self.malformed(offset, "close reason"))?;
                Record::Input {
                    at,
                    input: Input::Disconnect { conn, reason },
                }
            }
            TAG_SHUTDOWN => Record::Input {
                at,
                input: Input::Shutdown,
            },
            _ => return Err(self.malformed(offset, "record tag")),
        };
        Ok(Some(record))
    }

    fn store_event(&mut self, offset: usize) -> Result<StoreEvent, ReadError> {
        let kind = self.byte()?;
        let channel = ChannelName::new(&self.string()?);
        let error = |r: &mut Self| -> Result<StoreError, ReadError> {
            Ok(StoreError {
                message: r.string()?,
            })
        };
        Ok(match kind {
            0 => {
                let (top, epoch) = (self.varint()?, self.varint()?);
                let count = self.varint()?;
                let mut tail = Vec::new();
                for _ in 0..count {
                    tail.push(self.stored(offset)?);
                }
                StoreEvent::Opened {
                    channel,
                    result: Ok(StreamState { top, epoch, tail }),
                }
            }
            1 => StoreEvent::Opened {
                channel,
                result: Err(error(self)?),
            },
            2 => StoreEvent::Appended {
                channel,
                token: self.varint()?,
                result: Ok((self.varint()?, self.varint()?)),
            },
            3 => StoreEvent::Appended {
                channel,
                token: self.varint()?,
                result: Err(error(self)?),
            },
            4 => StoreEvent::Delivered {
                channel,
                epoch: self.varint()?,
                publication: self.stored(offset)?,
            },
            5 => StoreEvent::Resync { channel },
            6 => StoreEvent::RemoteJoined {
                channel,
                member: self.remote_member(offset)?,
            },
            7 => StoreEvent::RemoteLeft {
                channel,
                node: self.varint()?,
                client: self.client_id()?,
            },
            8 => {
                let count = self.varint()?;
                let mut members = Vec::new();
                for _ in 0..count {
                    members.push(self.remote_member(offset)?);
                }
                StoreEvent::RemoteMembers { channel, members }
            }
            9 => StoreEvent::NodeGone {
                node: self.varint()?,
            },
            _ => return Err(self.malformed(offset, "store event kind")),
        })
    }

    fn client_id(&mut self) -> Result<ClientId, ReadError> {
        let mut client = [0u8; 16];
        client.copy_from_slice(self.take(16)?);
        Ok(ClientId(u128::from_le_bytes(client)))
    }

    fn user(&mut self, offset: usize) -> Result<Option<Name>, ReadError> {
        match self.optional()? {
            None => Ok(None),
            Some(b) => Ok(Some(
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|u| Name::new(u).ok())
                    .ok_or_else(|| self.malformed(offset, "user"))?,
            )),
        }
    }

    fn infos(&mut self) -> Result<Infos, ReadError> {
        let conn_info = self.optional()?;
        let chan_info = self.optional()?;
        Ok((conn_info.is_some() || chan_info.is_some()).then(|| {
            Arc::new(InfoPair {
                conn_info,
                chan_info,
            })
        }))
    }

    fn remote_member(&mut self, offset: usize) -> Result<RemoteMember, ReadError> {
        Ok(RemoteMember {
            node: self.varint()?,
            client: self.client_id()?,
            user: self.user(offset)?,
            infos: self.infos()?,
        })
    }

    fn stored(&mut self, offset: usize) -> Result<Stored, ReadError> {
        let offset_in_stream = self.varint()?;
        let at = Timestamp::from_millis(self.varint()?);
        let data = self.bytes()?;
        let text = match self.optional()? {
            None => None,
            Some(b) => Some(Arc::<str>::from(
                std::str::from_utf8(&b).map_err(|_| self.malformed(offset, "seed text"))?,
            )),
        };
        let user = match self.optional()? {
            None => None,
            Some(b) => Some(
                std::str::from_utf8(&b)
                    .ok()
                    .and_then(|u| Name::new(u).ok())
                    .ok_or_else(|| self.malformed(offset, "user"))?,
            ),
        };
        let mut client = [0u8; 16];
        client.copy_from_slice(self.take(16)?);
        let conn_info = self.optional()?;
        let chan_info = self.optional()?;
        let infos: Infos = (conn_info.is_some() || chan_info.is_some()).then(|| {
            Arc::new(InfoPair {
                conn_info,
                chan_info,
            })
        });
        Ok(Stored {
            offset: offset_in_stream,
            at,
            data,
            text,
            user,
            client: ClientId(u128::from_le_bytes(client)),
            infos,
        })
    }

    fn bytes(&mut self) -> Result<Bytes, ReadError> {
        let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    fn optional(&mut self) -> Result<Option<Bytes>, ReadError> {
        match self.byte()? {
            0 => Ok(None),
            1 => Ok(Some(self.bytes()?)),
            _ => Err(ReadError::Malformed {
                offset: self.pos - 1,
                what: "optional field",
            }),
        }
    }

    fn malformed(&self, offset: usize, what: &'static str) -> ReadError {
        let _ = self;
        ReadError::Malformed { offset, what }
    }

    fn byte(&mut self) -> Result<u8, ReadError> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or(ReadError::Truncated { offset: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ReadError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.data.len())
            .ok_or(ReadError::Truncated { offset: self.pos })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn varint(&mut self) -> Result<u64, ReadError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ReadError::Malformed {
            offset: self.pos,
            what: "varint",
        })
    }

    fn string(&mut self) -> Result<String, ReadError> {
        let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        let offset = self.pos;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ReadError::Malformed {
            offset,
            what: "string",
        })
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A running FNV-1a fingerprint of a hub's outputs: each output as its
/// kind, connection, and for a send the payload's own FNV (computed once
/// per shared broadcast buffer) and presence tag, or the close code.
#[derive(Clone, Debug)]
pub struct OutputHash {
    hash: u64,
    outputs: u64,
    /// The last payload hashed: a broadcast's sends come one after another
    /// with one shared buffer.
    last: Option<(bytes::Bytes, u64)>,
}

impl Default for OutputHash {
    fn default() -> Self {
        Self {
            hash: FNV_OFFSET,
            outputs: 0,
            last: None,
        }
    }
}

impl OutputHash {
    pub fn output(&mut self, out: &Output) {
        self.outputs += 1;
        let mut word = [0u8; 25];
        match out {
            Output::Send {
                conn,
                frame,
                presence,
            } => {
                let p = &frame.payload;
                let payload = match &self.last {
                    // Holding the buffer, an equal address is the same bytes.
                    Some((b, h)) if b.as_ptr() == p.as_ptr() && b.len() == p.len() => *h,
                    _ => {
                        let h = fnv(FNV_OFFSET, p);
                        self.last = Some((p.clone(), h));
                        h
                    }
                };
                word[0] = match frame.kind {
                    MessageKind::Text => 0,
                    MessageKind::Binary => 1,
                };
                word[1..9].copy_from_slice(&conn.0.to_le_bytes());
                word[9..17].copy_from_slice(&payload.to_le_bytes());
                let tag = presence.map_or(u64::MAX, |r| r.0);
                word[17..25].copy_from_slice(&tag.to_le_bytes());
            }
            Output::Ping { conn } => {
                word[0] = 2;
                word[1..9].copy_from_slice(&conn.0.to_le_bytes());
            }
            Output::Close { conn, reason } => {
                word[0] = 3;
                word[1..9].copy_from_slice(&conn.0.to_le_bytes());
                word[9..11].copy_from_slice(&reason.code().0.to_le_bytes());
            }
        }
        self.hash = fnv(self.hash, &word);
    }

    /// An API reply (its id and body) into the fingerprint.
    pub fn api_reply(&mut self, reply: &crate::ApiReply) {
        self.outputs += 1;
        let mut word = [0u8; 17];
        word[0] = 4;
        word[1..9].copy_from_slice(&reply.id.to_le_bytes());
        word[9..17].copy_from_slice(&fnv(FNV_OFFSET, &reply.body).to_le_bytes());
        self.hash = fnv(self.hash, &word);
    }

    #[must_use]
    pub fn finish(&self) -> u64 {
        self.hash
    }

    /// Outputs hashed so far.
    #[must_use]
    pub fn outputs(&self) -> u64 {
        self.outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let config = Config {
            entropy: 0xfeed,
            ping_interval: Duration::from_millis(1_500),
            // The limits round-trip, a turned-off one included.
            command_rate: Some(crate::Rate::new(7, 9)),
            presence_rate: None,
            user_connection_limit: 3,
            ..Config::default()
        };
        let header = Header::new(&config, false, Engine::Delivering);
        let mut bytes = header.encode();
        let room = Route::Room {
            room: Name::new("lobby").expect("valid"),
            username: Name::new("ann").expect("valid"),
            history: 3,
        };
        let inputs = [
            Input::Open {
                conn: ConnId(1),
                route: room,
            },
            Input::Open {
                conn: ConnId(300),
                route: Route::Centrifuge,
            },
            Input::Message {
                conn: ConnId(1),
                frame: Frame::text("hé \"x\""),
            },
            Input::Message {
                conn: ConnId(2),
                frame: Frame::binary(vec![0, 255]),
            },
            Input::Pong { conn: ConnId(1) },
            Input::QueueFull { conn: ConnId(2) },
            Input::Disconnect {
                conn: ConnId(1),
                reason: CloseReason::InvalidUtf8,
            },
            Input::Shutdown,
        ];
        for (i, input) in inputs.iter().enumerate() {
            encode_input(&mut bytes, 1_000 + i as u64, input, false);
        }
        encode_timeout(&mut bytes, 99_999);
        encode_unsupported(&mut bytes, 100_000, Unsupported::Bus);
        let stores = store_events();
        for event in &stores {
            encode_store(&mut bytes, 100_001, event, false);
        }
        let call = ApiCall {
            id: 42,
            method: "info".to_owned(),
            body: Bytes::from_static(b"{}"),
            uptime: 7,
        };
        encode_api(&mut bytes, 100_002, &call, false);
        encode_trailer(&mut bytes, 10, 2, 0xabcd);
        let (mut reader, back) = Reader::new(&bytes).expect("a recording");
        assert_eq!(back, header);
        assert_eq!(back.config.entropy, 0xfeed);
        for (i, input) in inputs.iter().enumerate() {
            assert_eq!(
                reader.next_record(),
                Ok(Some(Record::Input {
                    at: 1_000 + i as u64,
                    input: input.clone()
                }))
            );
        }
        assert_eq!(
            reader.next_record(),
            Ok(Some(Record::Timeout { at: 99_999 }))
        );
        assert_eq!(
            reader.next_record(),
            Ok(Some(Record::Unsupported {
                at: 100_000,
                kind: Unsupported::Bus
            }))
        );
        for event in stores {
            assert_eq!(
                reader.next_record(),
                Ok(Some(Record::Store { at: 100_001, event }))
            );
        }
        let Ok(Some(Record::Api {
            at: 100_002,
            call: back,
        })) = reader.next_record()
        else {
            panic!("an API record");
        };
        assert_eq!(back, call);
        assert_eq!(
            back.request().map(|r| r.command),
            Ok(crate::ApiCommand::Info { uptime: 7 })
        );
        assert_eq!(
            reader.next_record(),
            Ok(Some(Record::Trailer {
                records: 10,
                dropped: 2,
                outputs_hash: 0xabcd
            }))
        );
        assert_eq!(reader.next_record(), Ok(None));
    }

    /// One of each store event, with publications that use every field.
    fn store_events() -> Vec<StoreEvent> {
        let channel = ChannelName::new("news");
        let full = Stored {
            offset: 3,
            at: Timestamp::from_millis(1_700_000_000_123),
            data: Bytes::from_static(b"{\"text\":\"hi\"}"),
            text: Some(Arc::from("hidden line")),
            user: Some(Name::new("ann").expect("valid")),
            client: ClientId(u128::MAX - 5),
            infos: crate::bus::infos(Some(Bytes::from_static(b"{\"a\":1}")), None),
        };
        let bare = Stored {
            offset: 4,
            text: None,
            user: None,
            infos: None,
            ..full.clone()
        };
        let err = || StoreError {
            message: "disk full".to_owned(),
        };
        vec![
            StoreEvent::Opened {
                channel: channel.clone(),
                result: Ok(StreamState {
                    top: 4,
                    epoch: 0xdead_beef,
                    tail: vec![full.clone(), bare],
                }),
            },
            StoreEvent::Opened {
                channel: channel.clone(),
                result: Err(err()),
            },
            StoreEvent::Appended {
                channel: channel.clone(),
                token: 9,
                result: Ok((5, 0xdead_beef)),
            },
            StoreEvent::Appended {
                channel: channel.clone(),
                token: 10,
                result: Err(err()),
            },
            StoreEvent::Delivered {
                channel: channel.clone(),
                epoch: 0xdead_beef,
                publication: full,
            },
            StoreEvent::Resync {
                channel: channel.clone(),
            },
            StoreEvent::RemoteJoined {
                channel: channel.clone(),
                member: RemoteMember {
                    node: 77,
                    client: ClientId(42),
                    user: Some(Name::new("bob").expect("valid")),
                    infos: crate::bus::infos(None, Some(Bytes::from_static(b"{\"r\":1}"))),
                },
            },
            StoreEvent::RemoteLeft {
                channel: channel.clone(),
                node: 77,
                client: ClientId(42),
            },
            StoreEvent::RemoteMembers {
                channel,
                members: vec![RemoteMember {
                    node: 78,
                    client: ClientId(u128::MAX),
                    user: None,
                    infos: None,
                }],
            },
            StoreEvent::NodeGone { node: 78 },
        ]
    }

    #[test]
    fn version_1_recordings_still_read() {
        let mut bytes = Header::new(&Config::default(), false, Engine::Inline).encode();
        // Version 1: no engine byte after the flags.
        bytes[8] = 1;
        bytes.pop();
        encode_timeout(&mut bytes, 5);
        let (mut r, header) = Reader::new(&bytes).expect("a version 1 recording");
        assert_eq!(header.engine, Engine::Inline);
        assert_eq!(r.next_record(), Ok(Some(Record::Timeout { at: 5 })));
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        let mut bytes = Header::new(&Config::default(), true, Engine::External).encode();
        assert!(Reader::new(&bytes).expect("header").1.redacted);
        encode_input(
            &mut bytes,
            5,
            &Input::Message {
                conn: ConnId(1),
                frame: Frame::text("secret"),
            },
            true,
        );
        for event in store_events() {
            encode_store(&mut bytes, 6, &event, true);
        }
        let call = ApiCall {
            id: 1,
            method: "publish".to_owned(),
            body: Bytes::from_static(b"{\"channel\":\"c\",\"data\":\"secret\"}"),
            uptime: 0,
        };
        encode_api(&mut bytes, 7, &call, true);
        assert!(!bytes.windows(6).any(|w| w == b"secret"), "redacted");
        assert!(
            !bytes.windows(6).any(|w| w == b"hidden"),
            "seed text redacted"
        );
        let (mut r, _) = Reader::new(&bytes[..bytes.len() - 2]).expect("header");
        let end = loop {
            match r.next_record() {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert!(matches!(end, Err(ReadError::Truncated { .. })), "{end:?}");
        assert_eq!(
            Reader::new(b"HUBBUBRC\x04").err(),
            Some(ReadError::UnknownVersion(4))
        );
        assert_eq!(Reader::new(b"nope").err(), Some(ReadError::NotARecording));
        // Every prefix and every single-byte change reads without panicking.
        for cut in 0..bytes.len() {
            if let Ok((mut r, _)) = Reader::new(&bytes[..cut]) {
                while let Ok(Some(_)) = r.next_record() {}
            }
        }
    }

    #[test]
    fn the_output_hash_sees_every_field() {
        let send = |conn, text: &str| Output::Send {
            conn: ConnId(conn),
            frame: Frame::text(text.to_owned()),
            presence: None,
        };
        let hash = |outs: &[Output]| {
            let mut h = OutputHash::default();
            for o in outs {
                h.output(o);
            }
            h.finish()
        };
        let a = hash(&[send(1, "x"), send(2, "x")]);
        assert_eq!(a, hash(&[send(1, "x"), send(2, "x")]));
        assert_ne!(a, hash(&[send(2, "x"), send(1, "x")]));
        assert_ne!(a, hash(&[send(1, "x"), send(2, "y")]));
        assert_ne!(
            hash(&[Output::Close {
                conn: ConnId(1),
                reason: CloseReason::PeerClosed
            }]),
            hash(&[Output::Close {
                conn: ConnId(1),
                reason: CloseReason::MessageTooBig
            }])
        );
    }
}
