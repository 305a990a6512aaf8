//! Authentication: what a token says (Centrifugo's JWT claims, brief
//! section 6), and the boundary to whoever checks its signature.
//!
//! The core never verifies a signature: cryptography and key files are the
//! driver's business. A driver that wants tokens puts a [`TokenVerifier`]
//! in [`crate::Config::tokens`]; it checks the signature, the algorithm
//! against the configured key, and `aud`/`iss`, and hands back the payload,
//! which [`parse_claims`] reads here. Time is the hub's: `exp` and `nbf` are
//! judged by [`Claims::timing`] against the hub's `now`, so expiry runs on
//! the simulator's virtual clock exactly as on the wall clock.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::time::Timestamp;

/// Why a token was refused before its claims were looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, `alg: none`, an algorithm the configured key is not for,
    /// a bad signature, a wrong `aud` or `iss`, or claims of the wrong shape.
    Invalid,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid token")
    }
}

impl std::error::Error for TokenError {}

/// Checks a token's signature and returns its payload (the JSON claims).
/// Implementations must not judge `exp` or `nbf`: the hub does, on its own
/// clock.
pub trait TokenVerifier: Send + Sync {
    /// The verified payload of `token`.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for anything but a well-signed token for the
    /// configured key, audience and issuer.
    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError>;
}

/// The configured verifier, if any: `None` (the default) means tokens are
/// not checked at all and every connection is anonymous or named by its
/// seed `username`, exactly as before authentication existed.
#[derive(Clone, Default)]
pub struct Tokens(pub Option<Arc<dyn TokenVerifier>>);

impl Tokens {
    #[must_use]
    pub fn new(verifier: impl TokenVerifier + 'static) -> Self {
        Self(Some(Arc::new(verifier)))
    }

    #[must_use]
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    /// Verifies `token` and reads its claims.
    ///
    /// # Errors
    /// No verifier is configured, or the token or its claims are invalid.
    pub fn claims(&self, token: &str) -> Result<Claims, TokenError> {
        let verifier = self.0.as_ref().ok_or(TokenError::Invalid)?;
        parse_claims(&verifier.verify(token)?)
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.enabled() {
            "Tokens(verifier)"
        } else {
            "Tokens(none)"
        })
    }
}

/// Two configs compare equal when both check tokens or both do not.
impl PartialEq for Tokens {
    fn eq(&self, other: &Self) -> bool {
        self.enabled() == other.enabled()
    }
}

impl Eq for Tokens {}

/// A token's claims, connection or subscription token alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    /// The user id; empty for an anonymous user.
    pub sub: String,
    /// Seconds since the Unix epoch.
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    /// `info` (raw JSON), or `b64info` decoded when that is JSON.
    pub info: Option<Bytes>,
    /// Connection tokens: channels to subscribe at connect.
    pub channels: Vec<String>,
    /// Subscription tokens: the channel the token is for.
    pub channel: Option<String>,
    /// Subscription tokens: the client id the token is for, if limited to one.
    pub client: Option<String>,
}

/// How a token's validity window relates to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Valid; `Some(ms)`: expires at that instant (Unix milliseconds).
    Valid(Option<u64>),
    /// `exp` has passed, or `nbf` has not come yet (error 109).
    Expired,
}

impl Claims {
    /// Judges `exp` and `nbf` against `now` (Unix milliseconds), with no
    /// leeway, as Centrifugo does.
    #[must_use]
    pub fn timing(&self, now: Timestamp) -> Timing {
        let now = now.as_millis();
        let exp = self.exp.map(|s| s.saturating_mul(1000));
        if exp.is_some_and(|exp| exp <= now)
            || self.nbf.is_some_and(|s| s.saturating_mul(1000) > now)
        {
            Timing::Expired
        } else {
            Timing::Valid(exp)
        }
    }
}

/// Seconds (rounded up) from `now` until `at` (Unix milliseconds): the `ttl`
/// of a connect or subscribe reply.
#[must_use]
pub fn ttl_secs(now: Timestamp, at: u64) -> u64 {
    at.saturating_sub(now.as_millis()).div_ceil(1000).max(1)
}

/// A NumericDate: JSON integer or float seconds (fractions dropped).
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Option<f64> = Option::deserialize(d)?;
    match v {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 => {
            // Saturating: a date past u64 is "never", not an error.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(Some(v as u64))
        }
        Some(_) => Err(serde::de::Error::custom("bad numeric date")),
    }
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: String,
    #[serde(default, deserialize_with = "numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "numeric_date")]
    nbf: Option<u64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default)]
    b64info: Option<String>,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    client: Option<String>,
}

/// Reads a verified payload's claims. Unknown claims (`iat`, `jti`, `aud`,
/// `iss`, `meta`, …) are ignored; a known one of the wrong type makes the
/// token invalid.
///
/// # Errors
/// [`TokenError::Invalid`] when the payload is not a JSON object of claims.
pub fn parse_claims(payload: &[u8]) -> Result<Claims, TokenError> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(TokenError::Invalid);
    }
    let raw: RawClaims = serde_json::from_slice(payload).map_err(|_| TokenError::Invalid)?;
    let info = match (raw.info, raw.b64info) {
        (Some(info), _) if info.get() != "null" => Some(Bytes::from(info.get().to_owned())),
        (_, Some(b64)) => {
            // Only JSON can be shown to JSON clients: anything else is dropped.
            let bytes = base64_decode(&b64).ok_or(TokenError::Invalid)?;
            serde_json::from_slice::<&RawValue>(&bytes)
                .ok()
                .map(|v| Bytes::from(v.get().to_owned()))
        }
        _ => None,
    };
    Ok(Claims {
        sub: raw.sub,
        exp: raw.exp,
        nbf: raw.nbf,
        info,
        channels: raw.channels,
        channel: raw.channel,
        client: raw.client,
    })
}

/// Standard base64 (padding optional), as `b64info` is written.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        }))
    }
    let body = text.trim_end_matches('=').as_bytes();
    if body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The users a user-limited channel admits: what follows its last `#`,
/// split on `,` (`dialog#alice,bob`). `None` when the name has no `#`.
#[must_use]
pub fn limited_users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    channel
        .rsplit_once('#')
        .map(|(_, users)| users.split(',').filter(|u| !u.is_empty()))
}

/// Whether `user` may subscribe to user-limited `channel`: an
/// authenticated user listed after its `#`.
#[must_use]
pub fn user_listed(channel: &str, user: &str) -> bool {
    !user.is_empty() && limited_users(channel).is_some_and(|mut users| users.any(|u| u == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_parse_with_centrifugo_names() {
        let c = parse_claims(
            br#"{"sub":"alice","exp":1700000000.5,"nbf":10,"iat":1,"info":{"name":"Alice"},"channels":["a","b"],"aud":"x"}"#,
        )
        .expect("valid");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.exp, Some(1_700_000_000));
        assert_eq!(c.nbf, Some(10));
        assert_eq!(c.info.as_deref(), Some(&br#"{"name":"Alice"}"#[..]));
        assert_eq!(c.channels, ["a", "b"]);
        // eyJuYW1lIjoiQm9iIn0 is {"name":"Bob"}
        let c = parse_claims(br#"{"sub":"bob","b64info":"eyJuYW1lIjoiQm9iIn0="}"#).expect("valid");
        assert_eq!(c.info.as_deref(), Some(&br#"{"name":"Bob"}"#[..]));
        let c = parse_claims(br#"{"sub":"bob","b64info":"eyJuYW1lIjoiQm9iIn0"}"#).expect("valid");
        assert_eq!(c.info.as_deref(), Some(&br#"{"name":"Bob"}"#[..]));
        assert_eq!(parse_claims(br#"{}"#).map(|c| c.sub), Ok(String::new()));
    }

    #[test]
    fn malformed_claims_are_invalid() {
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"{\"sub\":1}",
            b"{\"exp\":\"soon\"}",
            b"{\"exp\":-1}",
            b"{\"channels\":\"a\"}",
            b"{\"b64info\":\"@@@\"}",
            b"{",
        ] {
            assert_eq!(parse_claims(bad), Err(TokenError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn timing_has_no_leeway() {
        let c = Claims {
            exp: Some(100),
            nbf: Some(50),
            ..Claims::default()
        };
        assert_eq!(c.timing(Timestamp::from_millis(49_999)), Timing::Expired);
        assert_eq!(
            c.timing(Timestamp::from_millis(50_000)),
            Timing::Valid(Some(100_000))
        );
        assert_eq!(
            c.timing(Timestamp::from_millis(99_999)),
            Timing::Valid(Some(100_000))
        );
        assert_eq!(c.timing(Timestamp::from_millis(100_000)), Timing::Expired);
        assert_eq!(
            Claims::default().timing(Timestamp::from_millis(u64::MAX)),
            Timing::Valid(None)
        );
        assert_eq!(ttl_secs(Timestamp::from_millis(1), 100_000), 100);
        assert_eq!(ttl_secs(Timestamp::from_millis(99_999), 100_000), 1);
    }

    #[test]
    fn user_limited_channels() {
        assert!(user_listed("dialog#alice,bob", "bob"));
        assert!(user_listed("chat:dialog#alice", "alice"));
        assert!(!user_listed("dialog#alice,bob", "eve"));
        assert!(!user_listed("dialog#alice,bob", ""));
        assert!(!user_listed("dialog", "alice"));
        assert!(!user_listed("dialog#a#alice", "a"));
        assert!(!user_listed("dialog#", ""));
    }
}
