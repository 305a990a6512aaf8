//! What the generator puts on the wire and how it reads it back.
//!
//! A chat message sent by the generator is a short ASCII text
//! `t=<nanos> s=<sender> n=<seq>`: `t` is the send time in nanoseconds on
//! the generator's shared clock (see [`super::clock`]), `s` the global id of
//! the sending client and `n` its per-sender sequence number. It stays far
//! below the 512-byte limit of the servers (≤ 60 bytes).
//!
//! Room-protocol servers wrap what a client sent into a JSON object
//! `{"type":"chat","content":"<text>","room":…,"username":…}`; relay servers
//! forward the text as is.
//!
//! Over the Centrifugo protocol the same three fields travel as the JSON
//! object `{"t":<nanos>,"s":<sender>,"n":<seq>}` in a publication's `data`
//! (a `publish` command's, then the `pub` push's); see [`encode_cf_publish`]
//! and [`parse_cf_line`].
use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;

/// The fields carried in a generator chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// Send time, nanoseconds on the shared clock.
    pub t_ns: u64,
    /// Global id of the sending client.
    pub sender: u32,
    /// Sequence number of the message for this sender (0, 1, 2, …).
    pub seq: u64,
}

/// Upper bound of an encoded payload's length (three u64/u32 in decimal plus keys).
pub const MAX_PAYLOAD_LEN: usize = 64;

/// Encodes `p` into `buf` (cleared first).
pub fn encode(buf: &mut String, p: Payload) {
    buf.clear();
    // Writing into a String cannot fail.
    let _ = write!(buf, "t={} s={} n={}", p.t_ns, p.sender, p.seq);
}

/// Encodes `p` into a new string.
#[must_use]
pub fn encode_string(p: Payload) -> String {
    let mut s = String::with_capacity(MAX_PAYLOAD_LEN);
    encode(&mut s, p);
    s
}

/// Parses a generator payload; `None` for anything else (other clients'
/// text, presence messages, garbage).
#[must_use]
pub fn parse(s: &str) -> Option<Payload> {
    let b = s.as_bytes();
    let (t_ns, b) = take_number(b.strip_prefix(b"t=")?)?;
    let (sender, b) = take_number(b.strip_prefix(b" s=")?)?;
    let (seq, b) = take_number(b.strip_prefix(b" n=")?)?;
    if !b.is_empty() {
        return None;
    }
    Some(Payload {
        t_ns,
        sender: u32::try_from(sender).ok()?,
        seq,
    })
}

/// A leading decimal number (digits only, no overflow) and what follows it.
fn take_number(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in &b[..n] {
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some((v, &b[n..]))
}

/// Fast path for a chat frame as Go's `json.Marshal` (and hubbub) write it:
/// `{"type":"chat","content":"<text>",…}` with no escape in the text; the
/// borrowed text. `None` means "parse it properly".
#[must_use]
pub fn fast_chat_content(s: &str) -> Option<&str> {
    let rest = s.strip_prefix(r#"{"type":"chat","content":""#)?;
    let end = rest.find(['"', '\\'])?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// A frame of the room protocol (seed001 / hubbub `/ws/{room}`). Only the
/// fields the generator needs; others (`room`, `username`) are skipped.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct RoomFrame<'a> {
    /// `chat`, `user_joined`, `user_left` or `online_users`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// For `chat`, exactly the text the client sent; for `online_users`
    /// the comma-joined user names.
    #[serde(borrow, default)]
    pub content: Cow<'a, str>,
}

/// Parses a room-protocol JSON text frame; `None` if it is not one.
#[must_use]
pub fn parse_room_frame(s: &str) -> Option<RoomFrame<'_>> {
    serde_json::from_str(s).ok()
}

/// Cheap test for a frame that starts `{"type":"<presence type>"` (how Go's
/// `json.Marshal` and hubbub write `online_users`, `user_joined` and
/// `user_left`): such frames can be skipped without parsing. Frames written
/// another way are not recognised here and simply get parsed.
#[must_use]
pub fn is_presence_frame(s: &str) -> bool {
    s.strip_prefix(r#"{"type":""#).is_some_and(|rest| {
        rest.starts_with(r#"online_users""#)
            || rest.starts_with(r#"user_joined""#)
            || rest.starts_with(r#"user_left""#)
    })
}

/// Whether [`is_presence_frame`] recognised an `online_users` frame.
#[must_use]
pub fn is_online_users_frame(s: &str) -> bool {
    s.starts_with(r#"{"type":"online_users""#)
}

/// Splits an `online_users` content into its user names, sorted, so that two
/// lists can be compared as multisets (the seed's order is a Go map's).
#[must_use]
pub fn online_users_sorted(content: &str) -> Vec<String> {
    let mut v: Vec<String> = content
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    v.sort_unstable();
    v
}

/// Writes the Centrifugo handshake of a client into `buf` (cleared first):
/// `connect` (id 1) and a `subscribe` to `channel` (id 2) in one frame.
pub fn encode_cf_handshake(buf: &mut String, channel: &str) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"connect":{{"name":"hubbub-load"}},"id":{CF_CONNECT_ID}}}"#
    );
    buf.push('\n');
    let _ = write!(
        buf,
        r#"{{"subscribe":{{"channel":"{channel}"}},"id":{CF_SUBSCRIBE_ID}}}"#
    );
}

/// Command id of the handshake's `connect`.
pub const CF_CONNECT_ID: u64 = 1;
/// Command id of the handshake's `subscribe`.
pub const CF_SUBSCRIBE_ID: u64 = 2;
/// Command id of a sender's first `publish` (then one more per message).
pub const CF_FIRST_PUBLISH_ID: u64 = 3;

/// Writes a Centrifugo `publish` of `p` into `channel` with command id `id`
/// into `buf` (cleared first). Channel names of the generator (`r12`,
/// `c3x4`) need no JSON escaping.
pub fn encode_cf_publish(buf: &mut String, channel: &str, p: Payload, id: u64) {
    buf.clear();
    let _ = write!(
        buf,
        r#"{{"publish":{{"channel":"{channel}","data":{{"t":{},"s":{},"n":{}}}}},"id":{id}}}"#,
        p.t_ns, p.sender, p.seq
    );
}

/// What one Centrifugo server message (one line of a frame) is, as far as
/// the generator cares.
#[derive(Debug, PartialEq, Eq)]
pub enum CfLine<'a> {
    /// A server ping (`{}`: neither `id` nor `push`): answer `{}`.
    Ping,
    /// A `pub` push into `channel`; `payload` if its data is a generator payload.
    Pub {
        /// Channel of the publication.
        channel: Cow<'a, str>,
        /// The generator payload in `data`, if it is one.
        payload: Option<Payload>,
    },
    /// Another push (`join`, `leave`, `message`, …); `unsubscribe` is true for an
    /// `unsubscribe` push (the server dropped the subscription).
    OtherPush {
        /// Whether it was an `unsubscribe` push.
        unsubscribe: bool,
    },
    /// A successful reply to command `id`.
    Reply {
        /// The command's id.
        id: u64,
    },
    /// An error reply to command `id`.
    Error {
        /// The command's id.
        id: u64,
        /// `error.code`.
        code: u64,
        /// `error.message`.
        message: String,
    },
    /// Not a Centrifugo message.
    Garbage,
}

#[derive(Deserialize)]
struct CfMessage<'a> {
    #[serde(default)]
    id: u64,
    #[serde(borrow, default)]
    push: Option<CfPush<'a>>,
    #[serde(default)]
    error: Option<CfError>,
}

#[derive(Deserialize)]
struct CfPush<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
    #[serde(rename = "pub", borrow, default)]
    publication: Option<CfPub<'a>>,
    #[serde(default)]
    unsubscribe: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct CfPub<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
}

#[derive(Deserialize)]
struct CfError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CfData {
    t: u64,
    s: u32,
    n: u64,
}

/// A generator payload `{"t":T,"s":S,"n":N}` at the start of `b`, written
/// exactly as [`encode_cf_publish`] writes it; what follows is not looked at.
fn fast_cf_data(b: &[u8]) -> Option<Payload> {
    let (t_ns, b) = take_number(b.strip_prefix(br#"{"t":"#)?)?;
    let (sender, b) = take_number(b.strip_prefix(br#","s":"#)?)?;
    let (seq, b) = take_number(b.strip_prefix(br#","n":"#)?)?;
    b.starts_with(b"}").then_some(())?;
    Some(Payload {
        t_ns,
        sender: u32::try_from(sender).ok()?,
        seq,
    })
}

/// Classifies one line of a Centrifugo server frame. Pushes written as
/// hubbub (and Centrifuge) write them, `{"push":{"channel":"…","pub":{"data":…`,
/// with the generator's data are read without a JSON parser; anything else
/// is parsed.
#[must_use]
pub fn parse_cf_line(line: &str) -> CfLine<'_> {
    if line == "{}" {
        return CfLine::Ping;
    }
    if let Some(rest) = line.strip_prefix(r#"{"push":{"channel":""#) {
        if let Some(end) = rest.find(['"', '\\']) {
            if rest.as_bytes()[end] == b'"' {
                let (channel, after) = rest.split_at(end);
                if let Some(data) = after.strip_prefix(r#"","pub":{"data":"#) {
                    if let Some(p) = fast_cf_data(data.as_bytes()) {
                        return CfLine::Pub {
                            channel: Cow::Borrowed(channel),
                            payload: Some(p),
                        };
                    }
                }
            }
        }
    }
    // (serde would also read a struct from a JSON array.)
    if !line.trim_start().starts_with('{') {
        return CfLine::Garbage;
    }
    let Ok(m) = serde_json::from_str::<CfMessage<'_>>(line) else {
        return CfLine::Garbage;
    };
    if m.id > 0 {
        return match m.error {
            Some(e) => CfLine::Error {
                id: m.id,
                code: e.code,
                message: e.message,
            },
            None => CfLine::Reply { id: m.id },
        };
    }
    match m.push {
        Some(push) => match push.publication {
            Some(publication) => CfLine::Pub {
                channel: push.channel,
                payload: serde_json::from_str::<CfData>(publication.data.get())
                    .ok()
                    .map(|d| Payload {
                        t_ns: d.t,
                        sender: d.s,
                        seq: d.n,
                    }),
            },
            None => CfLine::OtherPush {
                unsubscribe: push.unsubscribe.is_some(),
            },
        },
        None => CfLine::Ping,
    }
}

/// The user name the generator gives client `id`.
#[must_use]
pub fn username(id: u32) -> String {
    format!("u{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrip_and_size() {
        let p = Payload {
            t_ns: u64::MAX,
            sender: u32::MAX,
            seq: u64::MAX,
        };
        let s = encode_string(p);
        assert!(s.len() <= MAX_PAYLOAD_LEN, "{} bytes", s.len());
        assert!(s.len() < 200);
        assert_eq!(parse(&s), Some(p));
        let small = Payload {
            t_ns: 1_234_567,
            sender: 3,
            seq: 0,
        };
        assert_eq!(encode_string(small), "t=1234567 s=3 n=0");
        assert_eq!(parse("t=1234567 s=3 n=0"), Some(small));
    }

    #[test]
    fn payload_rejects_other_text() {
        for bad in [
            "",
            "hello",
            "t= s=1 n=2",
            "t=1 s=2",
            "t=1 s=2 n=",
            "t=1 s=2 n=3 ",
            "t=-1 s=2 n=3",
            "t=1 s=99999999999 n=3",
            "t=1  s=2 n=3",
            "x=1 s=2 n=3",
            "t=1 s=2 n=+3",
            "t=100000000000000000000000 s=2 n=3",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn room_frame_as_go_marshals_it() {
        let f = r#"{"type":"chat","content":"t=5 s=1 n=2","room":"r0","username":"u1"}"#;
        let fr = parse_room_frame(f).expect("valid frame");
        assert_eq!(fr.kind, "chat");
        assert_eq!(fr.content, "t=5 s=1 n=2");
        assert!(matches!(fr.content, Cow::Borrowed(_)), "no allocation");
        assert_eq!(
            parse(&fr.content),
            Some(Payload {
                t_ns: 5,
                sender: 1,
                seq: 2
            })
        );
    }

    #[test]
    fn room_frame_other_orders_escapes_and_garbage() {
        let f = r#"{ "username": "u\"x", "room": "r", "content": "a\nb", "type": "user_joined" }"#;
        let fr = parse_room_frame(f).expect("valid frame");
        assert_eq!(fr.kind, "user_joined");
        assert_eq!(fr.content, "a\nb");
        let no_content = parse_room_frame(r#"{"type":"online_users"}"#).expect("valid frame");
        assert_eq!(no_content.content, "");
        assert_eq!(parse_room_frame("t=1 s=2 n=3"), None);
        assert_eq!(parse_room_frame(r#"{"content":"x"}"#), None);
        assert_eq!(parse_room_frame(""), None);
    }

    #[test]
    fn chat_fast_path_agrees_with_json() {
        for f in [
            r#"{"type":"chat","content":"t=5 s=1 n=2","room":"r0","username":"u1"}"#,
            r#"{"type":"chat","content":"","room":"r0","username":"u1"}"#,
            r#"{"type":"chat","content":"a\"b","room":"r0"}"#,
            r#"{"type":"chat","content":"unterminated"#,
            r#"{"content":"t=5 s=1 n=2","type":"chat"}"#,
        ] {
            if let Some(fast) = fast_chat_content(f) {
                let slow = parse_room_frame(f).expect("fast path only on valid frames");
                assert_eq!(slow.kind, "chat");
                assert_eq!(fast, slow.content, "{f}");
            }
        }
        assert_eq!(
            fast_chat_content(r#"{"type":"chat","content":"t=5 s=1 n=2","room":"r0"}"#),
            Some("t=5 s=1 n=2")
        );
        assert_eq!(
            fast_chat_content(r#"{"type":"chat","content":"a\"b"}"#),
            None
        );
        assert_eq!(fast_chat_content(r#"{"content":"x","type":"chat"}"#), None);
    }

    #[test]
    fn presence_fast_path() {
        assert!(is_presence_frame(
            r#"{"type":"online_users","content":"u1,u2","room":"r0","username":""}"#
        ));
        assert!(is_presence_frame(
            r#"{"type":"user_joined","content":"u1 joined the room"}"#
        ));
        assert!(is_presence_frame(r#"{"type":"user_left","content":"x"}"#));
        assert!(is_online_users_frame(
            r#"{"type":"online_users","content":"u1"}"#
        ));
        assert!(!is_online_users_frame(
            r#"{"type":"user_left","content":"x"}"#
        ));
        assert!(!is_presence_frame(
            r#"{"type":"chat","content":"online_users"}"#
        ));
        assert!(!is_presence_frame(r#"{"type":"user_joinedx"}"#));
        // Other layouts are left to the JSON parser.
        assert!(!is_presence_frame(r#"{ "type": "online_users" }"#));
        assert!(!is_presence_frame("t=1 s=2 n=3"));
    }

    #[test]
    fn centrifuge_commands() {
        let mut buf = String::new();
        encode_cf_handshake(&mut buf, "r3");
        assert_eq!(
            buf,
            "{\"connect\":{\"name\":\"hubbub-load\"},\"id\":1}\n{\"subscribe\":{\"channel\":\"r3\"},\"id\":2}"
        );
        for line in buf.split('\n') {
            let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
            assert!(v["id"].as_u64().is_some());
        }
        let p = Payload {
            t_ns: 12_345,
            sender: 7,
            seq: 9,
        };
        encode_cf_publish(&mut buf, "r0", p, 12);
        assert_eq!(
            buf,
            r#"{"publish":{"channel":"r0","data":{"t":12345,"s":7,"n":9}},"id":12}"#
        );
    }

    #[test]
    fn centrifuge_pub_fast_path_agrees_with_json() {
        let p = Payload {
            t_ns: 5,
            sender: 1,
            seq: 2,
        };
        let hubbub = r#"{"push":{"channel":"r0","pub":{"data":{"t":5,"s":1,"n":2},"info":{"client":"c1"},"offset":3}}}"#;
        let reordered =
            r#"{"push":{"pub":{"offset":3,"data":{"n":2,"t":5,"s":1}},"channel":"r0"}}"#;
        let spaced = r#"{"push": {"channel": "r0", "pub": {"data": {"t": 5, "s": 1, "n": 2}}}}"#;
        for line in [hubbub, reordered, spaced] {
            assert_eq!(
                parse_cf_line(line),
                CfLine::Pub {
                    channel: Cow::Borrowed("r0"),
                    payload: Some(p)
                },
                "{line}"
            );
        }
        assert_eq!(
            parse_cf_line(r#"{"push":{"channel":"r0","pub":{"data":{"text":"hi"}}}}"#),
            CfLine::Pub {
                channel: Cow::Borrowed("r0"),
                payload: None
            }
        );
        // Channel with an escape: parsed properly.
        assert!(matches!(
            parse_cf_line(r#"{"push":{"channel":"a\"b","pub":{"data":{"t":5,"s":1,"n":2}}}}"#),
            CfLine::Pub { channel, payload: Some(_) } if channel == "a\"b"
        ));
    }

    #[test]
    fn centrifuge_replies_pings_and_other_pushes() {
        assert_eq!(parse_cf_line("{}"), CfLine::Ping);
        assert_eq!(parse_cf_line("{ }"), CfLine::Ping);
        assert_eq!(
            parse_cf_line(r#"{"id":5,"publish":{}}"#),
            CfLine::Reply { id: 5 }
        );
        assert_eq!(
            parse_cf_line(r#"{"id":1,"connect":{"client":"x","ping":54,"pong":true}}"#),
            CfLine::Reply { id: 1 }
        );
        assert_eq!(
            parse_cf_line(r#"{"id":4,"error":{"code":103,"message":"permission denied"}}"#),
            CfLine::Error {
                id: 4,
                code: 103,
                message: "permission denied".to_owned()
            }
        );
        assert_eq!(
            parse_cf_line(r#"{"push":{"channel":"r0","join":{"info":{"client":"c"}}}}"#),
            CfLine::OtherPush { unsubscribe: false }
        );
        assert_eq!(
            parse_cf_line(r#"{"push":{"channel":"r0","unsubscribe":{"code":2000,"reason":"x"}}}"#),
            CfLine::OtherPush { unsubscribe: true }
        );
        for bad in ["", "t=1 s=2 n=3", "[1]", r#"{"id":-1}"#] {
            assert_eq!(parse_cf_line(bad), CfLine::Garbage, "{bad:?}");
        }
    }

    #[test]
    fn online_users_are_compared_as_sorted_lists() {
        assert_eq!(online_users_sorted("u2,u10,u1"), vec!["u1", "u10", "u2"]);
        assert_eq!(online_users_sorted(""), Vec::<String>::new());
        assert_eq!(
            online_users_sorted("u1,u2"),
            online_users_sorted("u2,u1"),
            "order-insensitive"
        );
        assert_eq!(username(7), "u7");
    }
}
