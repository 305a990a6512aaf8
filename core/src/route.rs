//! Handshake validation: which protocol and room a WebSocket request asks for.
//!
//! Pure functions over the request's path and query, so the transport, the
//! simulator and the fuzzer all judge requests the same way.

use std::fmt;
use std::sync::Arc;

/// Longest room or user name, in bytes (after percent-decoding).
pub const MAX_NAME_BYTES: usize = 64;
/// The room `GET /ws?username=NAME` joins (seed 002).
pub const DEFAULT_ROOM: &str = "default";

/// The most chat lines a seed client may ask for with `&history=N`.
pub const MAX_HISTORY: u8 = 100;

/// A validated room or user name: 1..=64 bytes of UTF-8 without control characters.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `raw` (already percent-decoded) as a name for `field`.
    ///
    /// # Errors
    /// The [`NameProblem`] that disqualifies it.
    pub fn new(raw: &str) -> Result<Self, NameProblem> {
        if raw.is_empty() {
            Err(NameProblem::Empty)
        } else if raw.len() > MAX_NAME_BYTES {
            Err(NameProblem::TooLong)
        } else if raw.chars().any(char::is_control) {
            Err(NameProblem::ControlCharacter)
        } else {
            Ok(Self(raw.into()))
        }
    }

    /// Validates `raw` as a username: a [`Name`] with no comma, and not
    /// only whitespace.
    ///
    /// # Errors
    /// The [`NameProblem`] that disqualifies it.
    pub fn username(raw: &str) -> Result<Self, NameProblem> {
        let name = Self::new(raw)?;
        if raw.contains(',') {
            Err(NameProblem::Comma)
        } else if raw.trim().is_empty() {
            Err(NameProblem::Blank)
        } else {
            Ok(name)
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A `Name` orders and compares exactly as its text, so maps keyed by
/// `Name` can be searched with a `&str`.
impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a WebSocket request asks for; chosen once, at the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws`: anonymous relay; every message goes verbatim to every relay connection.
    Relay,
    /// `GET /ws/{room}?username=NAME` or `GET /ws?username=NAME`: the seed's JSON room protocol.
    /// `history` (`&history=N`, at most [`MAX_HISTORY`]): the room's last N
    /// chat lines are sent first, before the join notices; 0 without it.
    Room {
        room: Name,
        username: Name,
        history: u8,
    },
    /// `GET /connection/websocket`: the Centrifugo client protocol (JSON).
    Centrifuge,
}

/// The path of the Centrifugo client protocol endpoint.
pub const CENTRIFUGE_PATH: &str = "/connection/websocket";

/// Which request field a [`NameProblem`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Room,
    Username,
}

impl Field {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Username => "username",
        }
    }
}

/// Why a name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong,
    ControlCharacter,
    /// Percent-encoding that is malformed or does not decode to UTF-8.
    BadEncoding,
    /// A username with a comma: `online_users` is a comma-separated list,
    /// so it would read as several users.
    Comma,
    /// A username of spaces only: it would show as nobody.
    Blank,
}

/// Why a WebSocket request is refused before the upgrade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a WebSocket path: 404.
    NotFound,
    /// `/ws/{room}` without a `username` parameter: 400 with the seed's text.
    MissingUsername,
    /// A room or username that is empty, too long, has control characters or bad encoding: 400.
    InvalidName(Field, NameProblem),
    /// `history=` that is not a whole number from 0 to 100: 400.
    BadHistory,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    #[must_use]
    pub const fn status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::MissingUsername | Self::InvalidName(..) | Self::BadHistory => 400,
        }
    }

    /// The human-readable text for the JSON body `{"error": …}`.
    #[must_use]
    pub fn message(self) -> String {
        match self {
            Self::NotFound => "not found".to_owned(),
            Self::MissingUsername => "room and username are required".to_owned(),
            Self::BadHistory => {
                format!("history must be a whole number from 0 to {MAX_HISTORY}")
            }
            Self::InvalidName(field, problem) => {
                let why = match problem {
                    NameProblem::Empty => "must not be empty".to_owned(),
                    NameProblem::TooLong => format!("is longer than {MAX_NAME_BYTES} bytes"),
                    NameProblem::ControlCharacter => {
                        "must not contain control characters".to_owned()
                    }
                    NameProblem::BadEncoding => "is not valid percent-encoded UTF-8".to_owned(),
                    NameProblem::Comma => {
                        "must not contain a comma (online_users lists names separated by commas)"
                            .to_owned()
                    }
                    NameProblem::Blank => "must not be only whitespace".to_owned(),
                };
                format!("{} {why}", field.as_str())
            }
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// True when `path` is one of the WebSocket endpoints (`/ws`, `/ws/…`).
#[must_use]
pub fn is_websocket_path(path: &str) -> bool {
    path == "/ws" || path.starts_with("/ws/") || path == CENTRIFUGE_PATH
}

/// Decides the [`Route`] for a request, from its raw (still percent-encoded)
/// path and query string.
///
/// # Errors
/// The reason to refuse the request, with its HTTP status.
pub fn route(path: &str, query: Option<&str>) -> Result<Route, HandshakeError> {
    if path == CENTRIFUGE_PATH {
        return Ok(Route::Centrifuge);
    }
    let username = || -> Result<Option<Name>, HandshakeError> {
        match query_param(query.unwrap_or(""), "username") {
            None => Ok(None),
            Some(Err(())) => Err(HandshakeError::InvalidName(
                Field::Username,
                NameProblem::BadEncoding,
            )),
            Some(Ok(raw)) => Name::username(&raw)
                .map(Some)
                .map_err(|p| HandshakeError::InvalidName(Field::Username, p)),
        }
    };
    let history = || -> Result<u8, HandshakeError> {
        match query_param(query.unwrap_or(""), "history") {
            None => Ok(0),
            Some(Ok(raw)) => raw
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= MAX_HISTORY)
                .ok_or(HandshakeError::BadHistory),
            Some(Err(())) => Err(HandshakeError::BadHistory),
        }
    };
    if path == "/ws" {
        return Ok(match username()? {
            None => Route::Relay,
            Some(username) => Route::Room {
                room: Name(DEFAULT_ROOM.into()),
                username,
                history: history()?,
            },
        });
    }
    let Some(raw_room) = path.strip_prefix("/ws/") else {
        return Err(HandshakeError::NotFound);
    };
    if raw_room.contains('/') {
        return Err(HandshakeError::NotFound);
    }
    let room = percent_decode(raw_room, false).ok_or(HandshakeError::InvalidName(
        Field::Room,
        NameProblem::BadEncoding,
    ))?;
    let room = Name::new(&room).map_err(|p| HandshakeError::InvalidName(Field::Room, p))?;
    let username = username()?.ok_or(HandshakeError::MissingUsername)?;
    Ok(Route::Room {
        room,
        username,
        history: history()?,
    })
}

/// The first value of `key` in a `k=v&k=v` query, percent-decoded with `+`
/// as space (as Go's `url.ParseQuery`, which the seeds use). `Some(Err)` when
/// the value's encoding is bad.
/// The percent-decoded value of `key` in `query`, if present and well encoded.
#[must_use]
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query_param(query, key).and_then(Result::ok)
}

fn query_param(query: &str, key: &str) -> Option<Result<String, ()>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(k, true) {
            Some(k) if k == key => Some(percent_decode(v, true).ok_or(())),
            _ => None,
        }
    })
}

/// Decodes `%XX` escapes (and `+` as space when `plus_is_space`); `None` if
/// an escape is malformed or the result is not UTF-8.
#[must_use]
pub fn percent_decode(input: &str, plus_is_space: bool) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(room: &str, user: &str) -> Route {
        Route::Room {
            room: Name::new(room).expect("valid"),
            username: Name::new(user).expect("valid"),
            history: 0,
        }
    }

    #[test]
    fn seed_paths() {
        assert_eq!(route("/ws", None), Ok(Route::Relay));
        assert_eq!(route("/ws", Some("")), Ok(Route::Relay));
        assert_eq!(
            route("/ws", Some("username=ann")),
            Ok(room("default", "ann"))
        );
        assert_eq!(
            route("/ws/room1", Some("username=Eren")),
            Ok(room("room1", "Eren"))
        );
        assert_eq!(
            route("/ws/room1", Some("x=1&username=Eren&username=Other")),
            Ok(room("room1", "Eren"))
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(
            route("/ws/caf%C3%A9", Some("username=J%C3%B6rg+M")),
            Ok(room("café", "Jörg M"))
        );
        assert_eq!(route("/ws/a+b", Some("username=x")), Ok(room("a+b", "x")));
        assert_eq!(
            route("/ws/%zz", Some("username=x")),
            Err(HandshakeError::InvalidName(
                Field::Room,
                NameProblem::BadEncoding
            ))
        );
        assert_eq!(
            route("/ws/r", Some("username=%FF")),
            Err(HandshakeError::InvalidName(
                Field::Username,
                NameProblem::BadEncoding
            ))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            route("/ws/room1", None),
            Err(HandshakeError::MissingUsername)
        );
        assert_eq!(
            HandshakeError::MissingUsername.message(),
            "room and username are required"
        );
        assert_eq!(
            route("/ws/", Some("username=x")),
            Err(HandshakeError::InvalidName(Field::Room, NameProblem::Empty))
        );
        assert_eq!(
            route("/ws/r", Some("username=")),
            Err(HandshakeError::InvalidName(
                Field::Username,
                NameProblem::Empty
            ))
        );
        let long = "a".repeat(65);
        assert_eq!(
            route(&format!("/ws/{long}"), Some("username=x")),
            Err(HandshakeError::InvalidName(
                Field::Room,
                NameProblem::TooLong
            ))
        );
        assert!(route(&format!("/ws/{}", "a".repeat(64)), Some("username=x")).is_ok());
        for (raw, problem) in [
            ("a%2Cb", NameProblem::Comma),
            ("%20%20", NameProblem::Blank),
            ("+", NameProblem::Blank),
        ] {
            assert_eq!(
                route("/ws/r", Some(&format!("username={raw}"))),
                Err(HandshakeError::InvalidName(Field::Username, problem)),
                "{raw}"
            );
        }
        assert!(
            route("/ws/a,b", Some("username=x")).is_ok(),
            "rooms may have commas"
        );
        assert!(route("/ws/r", Some("username=J%C3%B6rg+M")).is_ok());
        assert_eq!(
            route("/ws/r", Some("username=a%0Ab")),
            Err(HandshakeError::InvalidName(
                Field::Username,
                NameProblem::ControlCharacter
            ))
        );
        assert_eq!(route("/wss", None), Err(HandshakeError::NotFound));
        assert_eq!(
            route("/ws/r", Some("username=x&history=7")),
            Ok(Route::Room {
                room: Name::new("r").expect("valid"),
                username: Name::new("x").expect("valid"),
                history: 7,
            })
        );
        for bad in ["history=101", "history=-1", "history=x", "history="] {
            assert_eq!(
                route("/ws/r", Some(&format!("username=x&{bad}"))),
                Err(HandshakeError::BadHistory),
                "{bad}"
            );
        }
        assert_eq!(
            HandshakeError::BadHistory.message(),
            "history must be a whole number from 0 to 100"
        );
        assert_eq!(route(CENTRIFUGE_PATH, Some("x=1")), Ok(Route::Centrifuge));
        assert!(is_websocket_path(CENTRIFUGE_PATH));
        assert_eq!(
            route("/connection/websocket/x", None),
            Err(HandshakeError::NotFound)
        );
        assert_eq!(
            route("/ws/a/b", Some("username=x")),
            Err(HandshakeError::NotFound)
        );
        assert_eq!(
            HandshakeError::InvalidName(Field::Room, NameProblem::TooLong).message(),
            "room is longer than 64 bytes"
        );
    }
}
