//! The server HTTP API's commands: what `POST /api/<method>` asks, decoded
//! from its JSON body ([`decode`]), and the answers the hub gives
//! ([`crate::Hub::handle_api`], [`crate::Hub::poll_api`]).
//!
//! The shapes are Centrifugo's (the brief's section 7). Decoding is pure:
//! the transport calls it before anything reaches a hub, and the fuzzer
//! calls it with arbitrary bytes.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bus::Query;
use crate::centrifuge::{ErrorCode, StreamPosition};
use crate::route::Name;

/// How long an `idempotency_key` is remembered per channel (Centrifugo's 5 minutes).
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// Most commands one `batch` may carry, and most channels one `broadcast` may name.
pub const MAX_BATCH: usize = 1000;

/// One server API request, numbered by the driver (ids must not be reused
/// while the hub may still answer the old one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    pub id: u64,
    pub command: ApiCommand,
}

/// The hub's answer to [`ApiRequest`] `id`: the whole JSON body,
/// `{"result":{…}}` or `{"error":{"code":N,"message":"…"}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiReply {
    pub id: u64,
    pub body: Bytes,
}

/// A publication asked for by the API (`publish`, and each channel of `broadcast`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// Raw JSON, as clients see it in `data`.
    pub data: Bytes,
    /// Fan out without keeping it in the channel's history (no offset).
    pub skip_history: bool,
    /// A repeat with the same key on the same channel within
    /// [`IDEMPOTENCY_WINDOW`] returns the first result and publishes nothing.
    pub idempotency_key: Option<String>,
}

/// A decoded API command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiCommand {
    Publish {
        channel: String,
        publish: Publish,
    },
    Broadcast {
        channels: Vec<String>,
        publish: Publish,
    },
    Subscribe {
        user: Name,
        channel: String,
    },
    Unsubscribe {
        user: Name,
        channel: String,
    },
    Disconnect {
        user: Name,
        /// Client ids whose connections are spared.
        whitelist: Vec<String>,
    },
    Refresh {
        user: Name,
    },
    Presence {
        channel: String,
    },
    PresenceStats {
        channel: String,
    },
    History {
        channel: String,
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    },
    HistoryRemove {
        channel: String,
    },
    Channels {
        pattern: Option<String>,
    },
    /// `uptime` in seconds is filled in by the driver (the hub has no clock of its own).
    Info {
        uptime: u64,
    },
    Batch(Vec<ApiCommand>),
    /// A command that decoded but cannot be carried out: answered with this
    /// error (inside a batch, only its own reply is the error).
    Invalid(ErrorCode, String),
}

impl ApiCommand {
    /// The method's name, as in `/api/<method>` and batch replies.
    #[must_use]
    pub fn method(&self) -> &'static str {
        match self {
            Self::Publish { .. } => "publish",
            Self::Broadcast { .. } => "broadcast",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Disconnect { .. } => "disconnect",
            Self::Refresh { .. } => "refresh",
            Self::Presence { .. } => "presence",
            Self::PresenceStats { .. } => "presence_stats",
            Self::History { .. } => "history",
            Self::HistoryRemove { .. } => "history_remove",
            Self::Channels { .. } => "channels",
            Self::Info { .. } => "info",
            Self::Batch(_) => "batch",
            Self::Invalid(..) => "error",
        }
    }
}

/// Why a request body could not become an [`ApiCommand`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No such method (HTTP 404).
    UnknownMethod,
    /// The body is not JSON, or not an object (HTTP 400).
    BadJson(String),
}

/// The methods [`decode`] knows, in the order the docs list them.
pub const METHODS: [&str; 13] = [
    "publish",
    "broadcast",
    "subscribe",
    "unsubscribe",
    "disconnect",
    "refresh",
    "presence",
    "presence_stats",
    "history",
    "history_remove",
    "channels",
    "info",
    "batch",
];

#[derive(Deserialize)]
struct PublishBody<'a> {
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    idempotency_key: Option<String>,
    /// Accepted and not delivered (see PROTOCOL.md).
    #[serde(default)]
    #[allow(dead_code)]
    tags: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct UserBody {
    user: Option<String>,
    channel: Option<String>,
    #[serde(default)]
    whitelist: Vec<String>,
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: Option<String>,
    limit: Option<i64>,
    since: Option<SinceBody>,
    #[serde(default)]
    reverse: bool,
    pattern: Option<String>,
}

#[derive(Deserialize)]
struct SinceBody {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow, default)]
    commands: Vec<std::collections::BTreeMap<String, &'a RawValue>>,
}

/// Decodes `body` for `method` (the path after `/api/`). An empty body is `{}`.
///
/// # Errors
/// [`DecodeError::UnknownMethod`] for a method not in [`METHODS`];
/// [`DecodeError::BadJson`] for a body that is not a JSON object of the
/// method's shape. A well-formed body with a missing or bad field decodes
/// to [`ApiCommand::Invalid`] (answered with error 107, as Centrifugo does).
pub fn decode(method: &str, body: &[u8]) -> Result<ApiCommand, DecodeError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    decode_at(method, body, 0)
}

/// Sets `info`'s uptime (the server's, in seconds), in a batch too: the
/// hub has no clock of its own, so the driver fills it after [`decode`].
pub fn fill_uptime(command: &mut ApiCommand, secs: u64) {
    match command {
        ApiCommand::Info { uptime } => *uptime = secs,
        ApiCommand::Batch(commands) => {
            for c in commands {
                fill_uptime(c, secs);
            }
        }
        _ => {}
    }
}

fn bad_json(e: &serde_json::Error) -> DecodeError {
    DecodeError::BadJson(e.to_string())
}

fn invalid(message: &str) -> ApiCommand {
    ApiCommand::Invalid(ErrorCode::BadRequest, message.to_owned())
}

fn required(field: &str) -> ApiCommand {
    invalid(&format!("{field} required"))
}

fn user_name(user: Option<String>) -> Result<Name, ApiCommand> {
    match user {
        Some(user) if !user.is_empty() => Name::new(&user).map_err(|_| invalid("bad user")),
        _ => Err(required("user")),
    }
}

fn channel_name(channel: Option<String>) -> Result<String, ApiCommand> {
    match channel {
        Some(channel) if !channel.is_empty() => Ok(channel),
        _ => Err(required("channel")),
    }
}

fn decode_at(method: &str, body: &[u8], depth: usize) -> Result<ApiCommand, DecodeError> {
    if !METHODS.contains(&method) {
        return Err(DecodeError::UnknownMethod);
    }
    Ok(match method {
        "publish" | "broadcast" => {
            let b: PublishBody<'_> = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
            let data = match (b.data, b.b64data) {
                (Some(data), _) => Bytes::copy_from_slice(data.get().as_bytes()),
                (None, Some(_)) => {
                    return Ok(ApiCommand::Invalid(
                        ErrorCode::NotAvailable,
                        "b64data is not supported: this server speaks JSON".to_owned(),
                    ))
                }
                (None, None) => return Ok(required("data")),
            };
            let publish = Publish {
                data,
                skip_history: b.skip_history,
                idempotency_key: b.idempotency_key.filter(|k| !k.is_empty()),
            };
            if method == "publish" {
                match channel_name(b.channel) {
                    Ok(channel) => ApiCommand::Publish { channel, publish },
                    Err(e) => e,
                }
            } else {
                match b.channels {
                    Some(channels) if channels.is_empty() => required("channels"),
                    Some(channels) if channels.len() > MAX_BATCH => invalid("too many channels"),
                    Some(channels) if channels.iter().any(String::is_empty) => {
                        invalid("empty channel")
                    }
                    Some(channels) => ApiCommand::Broadcast { channels, publish },
                    None => required("channels"),
                }
            }
        }
        "subscribe" | "unsubscribe" | "disconnect" | "refresh" => {
            let b: UserBody = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
            let user = match user_name(b.user) {
                Ok(user) => user,
                Err(e) => return Ok(e),
            };
            match method {
                "subscribe" | "unsubscribe" => match channel_name(b.channel) {
                    Ok(channel) if method == "subscribe" => ApiCommand::Subscribe { user, channel },
                    Ok(channel) => ApiCommand::Unsubscribe { user, channel },
                    Err(e) => e,
                },
                "disconnect" => ApiCommand::Disconnect {
                    user,
                    whitelist: b.whitelist,
                },
                _ => ApiCommand::Refresh { user },
            }
        }
        "presence" | "presence_stats" | "history" | "history_remove" | "channels" | "info" => {
            let b: ChannelBody = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
            if method == "channels" {
                return Ok(ApiCommand::Channels { pattern: b.pattern });
            }
            if method == "info" {
                return Ok(ApiCommand::Info { uptime: 0 });
            }
            let channel = match channel_name(b.channel) {
                Ok(channel) => channel,
                Err(e) => return Ok(e),
            };
            match method {
                "presence" => ApiCommand::Presence { channel },
                "presence_stats" => ApiCommand::PresenceStats { channel },
                "history_remove" => ApiCommand::HistoryRemove { channel },
                _ => ApiCommand::History {
                    channel,
                    // No limit: only the position (Centrifugo's API).
                    limit: i32::try_from(b.limit.unwrap_or(0).clamp(-1, 10_000)).unwrap_or(0),
                    since: b.since.map(|s| StreamPosition {
                        offset: s.offset,
                        epoch: s.epoch,
                    }),
                    reverse: b.reverse,
                },
            }
        }
        _ => {
            // "batch": each command is `{"<method>": {…}}`.
            let b: BatchBody<'_> = serde_json::from_slice(body).map_err(|e| bad_json(&e))?;
            if depth > 0 {
                return Ok(invalid("a batch inside a batch"));
            }
            if b.commands.len() > MAX_BATCH {
                return Ok(invalid("too many commands"));
            }
            let mut commands = Vec::with_capacity(b.commands.len());
            for command in b.commands {
                let mut entries = command.into_iter();
                let decoded = match (entries.next(), entries.next()) {
                    (Some((method, body)), None) => {
                        match decode_at(&method, body.get().as_bytes(), depth + 1) {
                            Ok(command) => command,
                            Err(DecodeError::UnknownMethod) => ApiCommand::Invalid(
                                ErrorCode::MethodNotFound,
                                format!("unknown method {method}"),
                            ),
                            Err(DecodeError::BadJson(e)) => invalid(&e),
                        }
                    }
                    _ => invalid("a command is an object with one method"),
                };
                commands.push(decoded);
            }
            ApiCommand::Batch(commands)
        }
    })
}

impl ApiCommand {
    /// The home query this command asks, if it is one.
    #[must_use]
    pub(crate) fn query(&self) -> Option<(&str, Query)> {
        match self {
            Self::Presence { channel } => Some((channel, Query::Presence)),
            Self::PresenceStats { channel } => Some((channel, Query::PresenceStats)),
            Self::History {
                channel,
                limit,
                since,
                reverse,
            } => Some((
                channel,
                Query::History {
                    limit: *limit,
                    since: since.clone(),
                    reverse: *reverse,
                },
            )),
            _ => None,
        }
    }
}

/// Whether `name` matches the glob `pattern` (`*`: any run, `?`: one character).
#[must_use]
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_shapes() {
        let c = decode("publish", br#"{"channel":"lobby","data":{"text":"hi"}}"#);
        assert_eq!(
            c,
            Ok(ApiCommand::Publish {
                channel: "lobby".into(),
                publish: Publish {
                    data: Bytes::from_static(br#"{"text":"hi"}"#),
                    skip_history: false,
                    idempotency_key: None,
                }
            })
        );
        assert_eq!(decode("nope", b"{}"), Err(DecodeError::UnknownMethod));
        assert!(matches!(
            decode("publish", b"{nope"),
            Err(DecodeError::BadJson(_))
        ));
        assert!(matches!(
            decode("publish", b"{}"),
            Ok(ApiCommand::Invalid(ErrorCode::BadRequest, _))
        ));
        assert_eq!(decode("info", b""), Ok(ApiCommand::Info { uptime: 0 }));
        let batch = decode(
            "batch",
            br#"{"commands":[{"publish":{"channel":"a","data":1}},{"nope":{}},{"batch":{}}]}"#,
        );
        let Ok(ApiCommand::Batch(commands)) = batch else {
            panic!("{batch:?}")
        };
        assert_eq!(commands.len(), 3);
        assert!(matches!(commands[0], ApiCommand::Publish { .. }));
        assert!(matches!(
            commands[1],
            ApiCommand::Invalid(ErrorCode::MethodNotFound, _)
        ));
        assert!(matches!(
            commands[2],
            ApiCommand::Invalid(ErrorCode::BadRequest, _)
        ));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("chat:*", "chat:lobby"));
        assert!(!glob_match("chat:*", "news:lobby"));
        assert!(glob_match("r?om*", "room-1"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }
}
