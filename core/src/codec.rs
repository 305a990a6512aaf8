//! Wire formats, one per connection, chosen at the handshake.
//!
//! Decoding turns a client's reassembled WebSocket message into a
//! [`ClientMessage`] or the [`CloseReason`] that ends the connection.
//! Encoding produces a [`Frame`] once per broadcast; every recipient shares
//! its `Bytes`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::close::CloseReason;

/// The WebSocket data opcode of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    Text,
    Binary,
}

/// One complete WebSocket data message, outbound or inbound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: MessageKind,
    pub payload: Bytes,
}

impl Frame {
    #[must_use]
    pub fn text(payload: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageKind::Text,
            payload: payload.into(),
        }
    }

    #[must_use]
    pub fn binary(payload: impl Into<Bytes>) -> Self {
        Self {
            kind: MessageKind::Binary,
            payload: payload.into(),
        }
    }
}

/// A connection's wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Codec {
    /// Messages are relayed verbatim, opcode kept (seed 000).
    Relay,
    /// Text in, seed JSON out (seeds 001 and 002).
    SeedJson,
    /// The Centrifugo client protocol, JSON (`/connection/websocket`):
    /// newline-separated command objects in, replies and pushes out; several
    /// outbound messages may share one frame.
    Centrifuge,
}

/// What a client said, once its codec accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// Relay: pass this frame on unchanged.
    Relay(Frame),
    /// Seed JSON: a chat line; the bytes are valid UTF-8.
    Chat(Bytes),
}

impl Codec {
    /// Decodes one reassembled message.
    ///
    /// # Errors
    /// The reason to close the connection: too big (1009), invalid UTF-8
    /// (1007), binary on a text protocol (1003).
    pub fn decode(
        self,
        kind: MessageKind,
        payload: Bytes,
        max_message_bytes: usize,
    ) -> Result<ClientMessage, CloseReason> {
        if payload.len() > max_message_bytes {
            return Err(CloseReason::MessageTooBig);
        }
        match (self, kind) {
            (Self::SeedJson | Self::Centrifuge, MessageKind::Binary) => {
                Err(CloseReason::BinaryNotAccepted)
            }
            (_, MessageKind::Text) if std::str::from_utf8(&payload).is_err() => {
                Err(CloseReason::InvalidUtf8)
            }
            (Self::SeedJson | Self::Centrifuge, MessageKind::Text) => {
                Ok(ClientMessage::Chat(payload))
            }
            (Self::Relay, kind) => Ok(ClientMessage::Relay(Frame { kind, payload })),
        }
    }
}

/// The `type` field of a seed JSON message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeedType {
    Chat,
    UserJoined,
    UserLeft,
    OnlineUsers,
}

impl SeedType {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::UserJoined => "user_joined",
            Self::UserLeft => "user_left",
            Self::OnlineUsers => "online_users",
        }
    }
}

/// A message of the seed's JSON protocol, field for field (Go's
/// `Message{Type, Content, RoomName "room", Username}`). Clients and tests
/// parse server output into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedMessage {
    #[serde(rename = "type")]
    pub kind: SeedType,
    pub content: String,
    pub room: String,
    pub username: String,
}

/// Encodes a seed message as its text frame, fields in the seed's order.
#[must_use]
pub fn encode_seed(kind: SeedType, content: &str, room: &str, username: &str) -> Frame {
    let mut out = Vec::with_capacity(48 + content.len() + room.len() + username.len());
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.extend_from_slice(b"\",\"content\":");
    push_json_string(&mut out, content);
    out.extend_from_slice(b",\"room\":");
    push_json_string(&mut out, room);
    out.extend_from_slice(b",\"username\":");
    push_json_string(&mut out, username);
    out.push(b'}');
    Frame::text(out)
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_encoding_matches_go_field_order_and_round_trips() {
        let f = encode_seed(SeedType::Chat, "hi \"you\"\n\u{1}é", "room1", "Eren");
        assert_eq!(f.kind, MessageKind::Text);
        assert_eq!(
            std::str::from_utf8(&f.payload).expect("utf8"),
            r#"{"type":"chat","content":"hi \"you\"\n\u0001é","room":"room1","username":"Eren"}"#
        );
        let back: SeedMessage = serde_json::from_slice(&f.payload).expect("valid json");
        assert_eq!(back.content, "hi \"you\"\n\u{1}é");
        assert_eq!(back.kind, SeedType::Chat);
    }

    #[test]
    fn decode_rules() {
        let max = 8;
        assert_eq!(
            Codec::SeedJson.decode(MessageKind::Text, Bytes::from_static(b"hello"), max),
            Ok(ClientMessage::Chat(Bytes::from_static(b"hello")))
        );
        assert_eq!(
            Codec::SeedJson.decode(MessageKind::Text, Bytes::from_static(b"123456789"), max),
            Err(CloseReason::MessageTooBig)
        );
        assert!(Codec::SeedJson
            .decode(MessageKind::Text, Bytes::from_static(b"12345678"), max)
            .is_ok());
        assert_eq!(
            Codec::SeedJson.decode(MessageKind::Text, Bytes::from_static(b"\xff"), max),
            Err(CloseReason::InvalidUtf8)
        );
        assert_eq!(
            Codec::SeedJson.decode(MessageKind::Binary, Bytes::from_static(b"x"), max),
            Err(CloseReason::BinaryNotAccepted)
        );
        assert_eq!(
            Codec::Relay.decode(MessageKind::Binary, Bytes::from_static(b"\xff"), max),
            Ok(ClientMessage::Relay(Frame::binary(Bytes::from_static(
                b"\xff"
            ))))
        );
        assert_eq!(
            Codec::Relay.decode(MessageKind::Text, Bytes::from_static(b"\xff"), max),
            Err(CloseReason::InvalidUtf8)
        );
    }
}
