//! The Centrifugo client protocol v2, JSON flavour (`/connection/websocket`):
//! decoding a frame's commands and encoding replies and pushes.
//!
//! A frame holds one or more JSON objects separated by `\n` (one trailing
//! `\n` allowed). An empty object is a pong; anything else is a command with
//! exactly one method key, the first non-null one in Centrifugo's order.
//! Everything written here is compact, omits empty fields (proto3 style)
//! except result keys, which are always present, and never contains a raw
//! newline.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::push_json_string;

/// A reply error code (brief section 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorCode {
    Internal = 100,
    Unauthorized = 101,
    UnknownChannel = 102,
    PermissionDenied = 103,
    MethodNotFound = 104,
    AlreadySubscribed = 105,
    LimitExceeded = 106,
    BadRequest = 107,
    NotAvailable = 108,
    TokenExpired = 109,
    Expired = 110,
    TooManyRequests = 111,
    UnrecoverablePosition = 112,
}

impl ErrorCode {
    #[must_use]
    pub const fn code(self) -> u32 {
        self as u32
    }

    #[must_use]
    pub const fn message(self) -> &'static str {
        match self {
            Self::Internal => "internal server error",
            Self::Unauthorized => "unauthorized",
            Self::UnknownChannel => "unknown channel",
            Self::PermissionDenied => "permission denied",
            Self::MethodNotFound => "method not found",
            Self::AlreadySubscribed => "already subscribed",
            Self::LimitExceeded => "limit exceeded",
            Self::BadRequest => "bad request",
            Self::NotAvailable => "not available",
            Self::TokenExpired => "token expired",
            Self::Expired => "expired",
            Self::TooManyRequests => "too many requests",
            Self::UnrecoverablePosition => "unrecoverable position",
        }
    }

    /// Whether the client may retry as is.
    #[must_use]
    pub const fn temporary(self) -> bool {
        matches!(self, Self::Internal | Self::TooManyRequests)
    }
}

/// A stream position: the offset of the last publication and the epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    pub token: String,
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub channel: String,
    pub token: String,
    pub recover: bool,
    pub offset: u64,
    pub epoch: String,
    pub positioned: bool,
    pub recoverable: bool,
    pub join_leave: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRequest {
    pub channel: String,
    pub limit: i32,
    pub since: Option<StreamPosition>,
    pub reverse: bool,
}

/// A client command, once decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe {
        channel: String,
    },
    /// `data` is the raw JSON value as sent; `None` when absent or null.
    Publish {
        channel: String,
        data: Option<Bytes>,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    History(HistoryRequest),
    Ping,
    Send {
        data: Option<Bytes>,
    },
    Rpc {
        method: String,
        data: Option<Bytes>,
    },
    Refresh {
        token: String,
    },
    SubRefresh {
        channel: String,
        token: String,
    },
}

/// One line of a client frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// `{}`: the answer to a server ping.
    Pong,
    /// `id` 0 only for `send`.
    Command { id: u32, command: Command },
    /// An object with no known method (or `id` 0 on something other than `send`).
    Unknown { id: u32 },
}

#[derive(Deserialize, Default)]
struct ChannelOnly<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct RawConnect<'a> {
    #[serde(borrow, default)]
    token: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    version: Cow<'a, str>,
}

#[derive(Deserialize, Default)]
struct RawSubscribe<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
    #[serde(borrow, default)]
    token: Cow<'a, str>,
    #[serde(default)]
    recover: bool,
    #[serde(default)]
    offset: u64,
    #[serde(borrow, default)]
    epoch: Cow<'a, str>,
    #[serde(default)]
    positioned: bool,
    #[serde(default)]
    recoverable: bool,
    #[serde(default)]
    join_leave: bool,
}

#[derive(Deserialize, Default)]
struct RawPublish<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawHistory<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
    #[serde(default)]
    limit: i32,
    #[serde(default)]
    since: Option<StreamPosition>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize, Default)]
struct RawData<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawRpc<'a> {
    #[serde(borrow, default)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct RawToken<'a> {
    #[serde(borrow, default)]
    token: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawCommand<'a> {
    #[serde(default)]
    id: u32,
    #[serde(borrow, default)]
    connect: Option<RawConnect<'a>>,
    #[serde(borrow, default)]
    subscribe: Option<RawSubscribe<'a>>,
    #[serde(borrow, default)]
    unsubscribe: Option<ChannelOnly<'a>>,
    #[serde(borrow, default)]
    publish: Option<RawPublish<'a>>,
    #[serde(borrow, default)]
    presence: Option<ChannelOnly<'a>>,
    #[serde(borrow, default)]
    presence_stats: Option<ChannelOnly<'a>>,
    #[serde(borrow, default)]
    history: Option<RawHistory<'a>>,
    #[serde(borrow, default)]
    ping: Option<&'a RawValue>,
    #[serde(borrow, default)]
    send: Option<RawData<'a>>,
    #[serde(borrow, default)]
    rpc: Option<RawRpc<'a>>,
    #[serde(borrow, default)]
    refresh: Option<RawToken<'a>>,
    #[serde(borrow, default)]
    sub_refresh: Option<RawToken<'a>>,
}

fn raw_bytes(value: Option<&RawValue>) -> Option<Bytes> {
    value
        .map(RawValue::get)
        .filter(|v| *v != "null")
        .map(|v| Bytes::copy_from_slice(v.as_bytes()))
}

/// A frame that is not a sequence of JSON command objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Decodes one line (one JSON object).
///
/// # Errors
/// [`Malformed`] when the line is not a JSON object of the command schema.
pub fn decode_line(line: &[u8]) -> Result<Line, Malformed> {
    // serde would also read a struct from a JSON array; only objects are commands.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Malformed);
    }
    let raw: RawCommand<'_> = serde_json::from_slice(line).map_err(|_| Malformed)?;
    let id = raw.id;
    // Centrifugo's order: the first non-null method key wins.
    let command = if let Some(c) = raw.connect {
        Command::Connect(ConnectRequest {
            token: c.token.into_owned(),
            name: c.name.into_owned(),
            version: c.version.into_owned(),
        })
    } else if let Some(s) = raw.subscribe {
        Command::Subscribe(SubscribeRequest {
            channel: s.channel.into_owned(),
            token: s.token.into_owned(),
            recover: s.recover,
            offset: s.offset,
            epoch: s.epoch.into_owned(),
            positioned: s.positioned,
            recoverable: s.recoverable,
            join_leave: s.join_leave,
        })
    } else if let Some(u) = raw.unsubscribe {
        Command::Unsubscribe {
            channel: u.channel.into_owned(),
        }
    } else if let Some(p) = raw.publish {
        Command::Publish {
            channel: p.channel.into_owned(),
            data: raw_bytes(p.data),
        }
    } else if let Some(p) = raw.presence {
        Command::Presence {
            channel: p.channel.into_owned(),
        }
    } else if let Some(p) = raw.presence_stats {
        Command::PresenceStats {
            channel: p.channel.into_owned(),
        }
    } else if let Some(h) = raw.history {
        Command::History(HistoryRequest {
            channel: h.channel.into_owned(),
            limit: h.limit,
            since: h.since,
            reverse: h.reverse,
        })
    } else if raw.ping.is_some_and(|p| p.get() != "null") {
        Command::Ping
    } else if let Some(s) = raw.send {
        Command::Send {
            data: raw_bytes(s.data),
        }
    } else if let Some(r) = raw.rpc {
        Command::Rpc {
            method: r.method.into_owned(),
            data: raw_bytes(r.data),
        }
    } else if let Some(r) = raw.refresh {
        Command::Refresh {
            token: r.token.into_owned(),
        }
    } else if let Some(r) = raw.sub_refresh {
        Command::SubRefresh {
            channel: r.channel.into_owned(),
            token: r.token.into_owned(),
        }
    } else if id == 0 {
        return Ok(Line::Pong);
    } else {
        return Ok(Line::Unknown { id });
    };
    if id == 0 && !matches!(command, Command::Send { .. }) {
        return Ok(Line::Unknown { id });
    }
    Ok(Line::Command { id, command })
}

/// Splits a text frame's payload (UTF-8, checked by the codec) into lines
/// and decodes each, in order, stopping at the first malformed one. Values
/// are kept as the client wrote them: a string with a lone UTF-16
/// surrogate escape is valid JSON text and passes through unchanged. Returns the lines decoded and whether it stopped
/// early: the commands before a bad line are still handled, then the
/// connection is closed (as Centrifugo's streaming decoder does).
#[must_use]
pub fn decode_frame(payload: &[u8]) -> (Vec<Line>, Option<Malformed>) {
    let body = payload.strip_suffix(b"\n").unwrap_or(payload);
    let mut lines = Vec::new();
    for raw in body.split(|&b| b == b'\n') {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        match decode_line(raw) {
            Ok(line) => lines.push(line),
            Err(e) => return (lines, Some(e)),
        }
    }
    (lines, None)
}

// ---- encoding ---------------------------------------------------------------

/// Who a publication, join or leave is about (`ClientInfo`). An anonymous
/// client's empty `user` is omitted, like every empty field (both SDKs read
/// a missing `user` as `""`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientInfo<'a> {
    pub user: &'a str,
    pub client: &'a str,
    pub conn_info: Option<&'a [u8]>,
    pub chan_info: Option<&'a [u8]>,
}

/// Appends a `ClientInfo` object.
pub fn push_client_info(out: &mut Vec<u8>, info: &ClientInfo<'_>) {
    out.push(b'{');
    if !info.user.is_empty() {
        out.extend_from_slice(b"\"user\":");
        push_json_string(out, info.user);
        out.push(b',');
    }
    out.extend_from_slice(b"\"client\":");
    push_json_string(out, info.client);
    if let Some(raw) = info.conn_info {
        out.extend_from_slice(b",\"conn_info\":");
        out.extend_from_slice(raw);
    }
    if let Some(raw) = info.chan_info {
        out.extend_from_slice(b",\"chan_info\":");
        out.extend_from_slice(raw);
    }
    out.push(b'}');
}

/// A JSON object being written, tracking commas and omitting empty fields.
pub struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    pub fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        if !value.is_empty() {
            push_json_string(self.key(key), value);
        }
        self
    }

    pub fn uint(&mut self, key: &str, value: u64) -> &mut Self {
        if value != 0 {
            let out = self.key(key);
            out.extend_from_slice(value.to_string().as_bytes());
        }
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        if value {
            self.key(key).extend_from_slice(b"true");
        }
        self
    }

    /// A raw JSON value, written as is.
    pub fn raw(&mut self, key: &str, value: Option<&[u8]>) -> &mut Self {
        if let Some(v) = value {
            self.key(key).extend_from_slice(v);
        }
        self
    }

    /// A nested object, always written (even when it ends up empty).
    pub fn object(&mut self, key: &str, fill: impl FnOnce(&mut Object<'_>)) -> &mut Self {
        let out = self.key(key);
        let mut inner = Object::open(out);
        fill(&mut inner);
        inner.close();
        self
    }

    /// Appends to the object's buffer directly after `"key":`.
    pub fn with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        write(self.key(key));
        self
    }

    pub fn close(self) {
        self.out.push(b'}');
    }
}

/// `{"id":N,"<method>":{…result…}}`; the result key is always present.
#[must_use]
pub fn reply(id: u32, method: &str, fill: impl FnOnce(&mut Object<'_>)) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    o.uint("id", u64::from(id));
    o.object(method, fill);
    o.close();
    Bytes::from(out)
}

/// `{"id":N,"error":{"code":C,"message":"…"}}`.
#[must_use]
pub fn error_reply(id: u32, code: ErrorCode) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let mut o = Object::open(&mut out);
    o.uint("id", u64::from(id));
    o.object("error", |e| {
        e.uint("code", u64::from(code.code()))
            .str("message", code.message())
            .bool("temporary", code.temporary());
    });
    o.close();
    Bytes::from(out)
}

/// `{"push":{"channel":CH,"<kind>":{…}}}`.
#[must_use]
pub fn push(channel: &str, kind: &str, fill: impl FnOnce(&mut Object<'_>)) -> Bytes {
    let mut out = Vec::with_capacity(96);
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.str("channel", channel);
        p.object(kind, fill);
    });
    o.close();
    Bytes::from(out)
}

/// A `pub` push: `data` as given, `info` of the publishing client, `offset`
/// when the channel is positioned.
#[must_use]
pub fn publication(
    channel: &str,
    data: &[u8],
    info: Option<&ClientInfo<'_>>,
    offset: Option<u64>,
) -> Bytes {
    push(channel, "pub", |p| {
        publication_fields(p, data, info, offset);
    })
}

fn publication_fields(
    p: &mut Object<'_>,
    data: &[u8],
    info: Option<&ClientInfo<'_>>,
    offset: Option<u64>,
) {
    p.raw("data", Some(data));
    if let Some(info) = info {
        p.with("info", |out| push_client_info(out, info));
    }
    if let Some(offset) = offset {
        p.uint("offset", offset);
    }
}

/// Appends a publication object (as in `history` and recovery replies).
pub fn push_publication(
    out: &mut Vec<u8>,
    data: &[u8],
    info: Option<&ClientInfo<'_>>,
    offset: Option<u64>,
) {
    let mut p = Object::open(out);
    publication_fields(&mut p, data, info, offset);
    p.close();
}

/// A `join` or `leave` push (`kind`), which always carries `info`.
#[must_use]
pub fn presence_push(channel: &str, kind: &str, info: &ClientInfo<'_>) -> Bytes {
    push(channel, kind, |p| {
        p.with("info", |out| push_client_info(out, info));
    })
}

/// An `unsubscribe` push; `reason` is always written (Python indexes it).
#[must_use]
pub fn unsubscribe_push(channel: &str, code: u32, reason: &str) -> Bytes {
    push(channel, "unsubscribe", |p| {
        p.uint("code", u64::from(code));
        p.with("reason", |out| push_json_string(out, reason));
    })
}

/// A `message` push (the server's counterpart of `send`); it has no channel.
#[must_use]
pub fn message_push(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(32 + data.len());
    let mut o = Object::open(&mut out);
    o.object("push", |p| {
        p.object("message", |m| {
            m.raw("data", Some(data));
        });
    });
    o.close();
    Bytes::from(out)
}

/// The server's application-level ping.
pub const PING: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).expect("utf8")
    }

    #[test]
    fn decodes_a_js_connect_and_subscribe_frame() {
        let frame = br#"{"connect":{"token":"t","name":"js"},"id":1}
{"subscribe":{"channel":"chat:room","join_leave":true,"flag":1},"id":2}"#;
        let (lines, bad) = decode_frame(frame);
        assert_eq!(bad, None);
        assert_eq!(
            lines[0],
            Line::Command {
                id: 1,
                command: Command::Connect(ConnectRequest {
                    token: "t".into(),
                    name: "js".into(),
                    version: String::new()
                })
            }
        );
        let Line::Command {
            id: 2,
            command: Command::Subscribe(s),
        } = &lines[1]
        else {
            panic!("{lines:?}")
        };
        assert_eq!(s.channel, "chat:room");
        assert!(s.join_leave && !s.recover);
    }

    #[test]
    fn python_style_spacing_and_recovery_fields() {
        let line = br#"{"id": 7, "subscribe": {"channel": "c", "recover": true, "epoch": "ab", "offset": 2, "flag": 1}}"#;
        let Ok(Line::Command {
            id: 7,
            command: Command::Subscribe(s),
        }) = decode_line(line)
        else {
            panic!()
        };
        assert!(s.recover);
        assert_eq!((s.offset, s.epoch.as_str()), (2, "ab"));
    }

    #[test]
    fn pongs_unknown_and_malformed() {
        assert_eq!(decode_line(b"{}"), Ok(Line::Pong));
        assert_eq!(decode_line(br#"{"id":3}"#), Ok(Line::Unknown { id: 3 }));
        assert_eq!(
            decode_line(br#"{"publish":{"channel":"x","data":1}}"#),
            Ok(Line::Unknown { id: 0 })
        );
        assert_eq!(
            decode_line(br#"{"send":{"data":{"a":1}}}"#),
            Ok(Line::Command {
                id: 0,
                command: Command::Send {
                    data: Some(Bytes::from_static(br#"{"a":1}"#))
                }
            })
        );
        assert_eq!(decode_line(b"[1]"), Err(Malformed));
        assert_eq!(decode_line(br#"{"id":-1}"#), Err(Malformed));
        assert_eq!(decode_line(b""), Err(Malformed));
        // One trailing newline is fine; an empty line inside is not.
        assert_eq!(decode_frame(b"{}\n").1, None);
        assert_eq!(decode_frame(b"{}\n\n{}").1, Some(Malformed));
        // Commands before a bad line are kept.
        let (lines, bad) = decode_frame(b"{}\nnope");
        assert_eq!((lines.len(), bad), (1, Some(Malformed)));
    }

    #[test]
    fn first_non_null_method_wins() {
        let line = br#"{"id":4,"connect":null,"publish":{"channel":"c","data":{"text":"hi"}},"rpc":{"method":"m"}}"#;
        assert_eq!(
            decode_line(line),
            Ok(Line::Command {
                id: 4,
                command: Command::Publish {
                    channel: "c".into(),
                    data: Some(Bytes::from_static(br#"{"text":"hi"}"#))
                }
            })
        );
    }

    #[test]
    fn encodes_compact_replies_with_result_keys() {
        assert_eq!(
            text(&reply(2, "subscribe", |_| {})),
            r#"{"id":2,"subscribe":{}}"#
        );
        assert_eq!(
            text(&error_reply(9, ErrorCode::MethodNotFound)),
            r#"{"id":9,"error":{"code":104,"message":"method not found"}}"#
        );
        assert_eq!(
            text(&error_reply(9, ErrorCode::Internal)),
            r#"{"id":9,"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
        let info = ClientInfo {
            user: "alice",
            client: "c1",
            conn_info: Some(br#"{"name":"Alice"}"#),
            chan_info: None,
        };
        assert_eq!(
            text(&publication(
                "chat:room",
                br#"{"text":"hi"}"#,
                Some(&info),
                Some(1)
            )),
            r#"{"push":{"channel":"chat:room","pub":{"data":{"text":"hi"},"info":{"user":"alice","client":"c1","conn_info":{"name":"Alice"}},"offset":1}}}"#
        );
        assert_eq!(
            text(&unsubscribe_push("c", 2000, "server unsubscribe")),
            r#"{"push":{"channel":"c","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#
        );
        assert_eq!(
            text(&message_push(b"1")),
            r#"{"push":{"message":{"data":1}}}"#
        );
    }
}
