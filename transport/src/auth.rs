//! JWT verification for the hub's [`TokenVerifier`] boundary, the seed
//! routes' token check before the upgrade, and `hubbub token`.
//!
//! Signatures are checked here with `jsonwebtoken`; the claims and their
//! timing (`exp`, `nbf`) are judged by the core on the hub's clock. The
//! header's `alg` picks the key: HS256/384/512 need `--token-hmac-secret`,
//! RS256/384/512 `--token-rsa-public-key`, ES256/384
//! `--token-ecdsa-public-key`; any other algorithm (`none` included) or one
//! without its key is refused, so an HS256 token "signed" with the RSA
//! public key is just a bad signature.

use std::path::Path;
use std::time::Duration;

use hubbub_core::auth::{Claims, TokenError, TokenVerifier, Tokens};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::value::RawValue;

/// The configured keys and the `aud`/`iss` every token must carry.
pub struct JwtVerifier {
    keys: Vec<(&'static [Algorithm], DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
const ECDSA: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];

/// Where the keys come from (the flags of the same names).
#[derive(Clone, Debug, Default)]
pub struct KeyConfig {
    pub hmac_secret: Option<String>,
    pub rsa_public_key: Option<std::path::PathBuf>,
    pub ecdsa_public_key: Option<std::path::PathBuf>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

impl KeyConfig {
    /// Whether any key is configured.
    #[must_use]
    pub fn any(&self) -> bool {
        self.hmac_secret.is_some()
            || self.rsa_public_key.is_some()
            || self.ecdsa_public_key.is_some()
    }

    /// The verifier for these keys; no verifier when none is configured.
    ///
    /// # Errors
    /// A key file that cannot be read or is not a PEM public key of its kind,
    /// or an empty secret.
    pub fn tokens(&self) -> Result<Tokens, String> {
        if !self.any() {
            return Ok(Tokens::default());
        }
        let mut keys = Vec::new();
        if let Some(secret) = &self.hmac_secret {
            if secret.is_empty() {
                return Err("--token-hmac-secret is empty".to_owned());
            }
            keys.push((HMAC, DecodingKey::from_secret(secret.as_bytes())));
        }
        if let Some(path) = &self.rsa_public_key {
            let pem = read(path, "--token-rsa-public-key")?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                format!(
                    "--token-rsa-public-key {}: not an RSA public key in PEM: {e}",
                    path.display()
                )
            })?;
            keys.push((RSA, key));
        }
        if let Some(path) = &self.ecdsa_public_key {
            let pem = read(path, "--token-ecdsa-public-key")?;
            let key = DecodingKey::from_ec_pem(&pem).map_err(|e| {
                format!(
                    "--token-ecdsa-public-key {}: not an ECDSA public key in PEM: {e}",
                    path.display()
                )
            })?;
            keys.push((ECDSA, key));
        }
        Ok(Tokens::new(JwtVerifier {
            keys,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
        }))
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        // `alg: none` and unknown algorithms fail to parse here.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(algs, _)| algs.contains(&header.alg))
            .ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(header.alg);
        // exp and nbf are the hub's to judge, on its clock.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        let data = jsonwebtoken::decode::<Box<RawValue>>(token, key, &validation)
            .map_err(|_| TokenError::Invalid)?;
        Ok(data.claims.get().as_bytes().to_vec())
    }
}

/// What a seed handshake's token decided.
#[derive(Debug, PartialEq, Eq)]
pub enum SeedAuth {
    /// No verifier, or no token where anonymous clients are allowed: as before.
    Unchecked,
    /// A valid token for this user (its `sub`).
    User(String),
    /// 401: no token (and anonymous clients not allowed), or a bad or expired one.
    Unauthorized(&'static str),
}

/// Judges a seed handshake's token (`?token=` or `Authorization: Bearer`).
#[must_use]
pub fn seed(
    tokens: &Tokens,
    allow_anonymous: bool,
    token: Option<&str>,
    now: hubbub_core::Timestamp,
) -> SeedAuth {
    if !tokens.enabled() {
        return SeedAuth::Unchecked;
    }
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return if allow_anonymous {
            SeedAuth::Unchecked
        } else {
            SeedAuth::Unauthorized("a token is required: ?token= or Authorization: Bearer")
        };
    };
    let claims: Claims = match tokens.claims(token) {
        Ok(claims) if claims.channel.is_none() => claims,
        _ => return SeedAuth::Unauthorized("invalid token"),
    };
    if claims.timing(now) == hubbub_core::auth::Timing::Expired {
        return SeedAuth::Unauthorized("token expired or not yet valid");
    }
    if claims.sub.is_empty() {
        return if allow_anonymous {
            SeedAuth::Unchecked
        } else {
            SeedAuth::Unauthorized("the token names no user (empty sub)")
        };
    }
    SeedAuth::User(claims.sub)
}

/// A refusal before the upgrade: status and message.
pub type Refusal = (u16, String);

/// The seed routes' authentication and room permissions, before the
/// upgrade. Without a verifier the route is decided as before. With one:
/// the token (`?token=` or `Authorization: Bearer`) names the user, and a
/// `username` that differs is refused with 403; no valid token is 401
/// (unless anonymous clients are allowed); a private (`$`) room, a
/// user-limited room that does not list the user, or a namespace closed to
/// this client is 403. `/ws?token=…` joins room `default` as the token's
/// user.
///
/// # Errors
/// The status and message of the refusal; 400s as [`hubbub_core::route`].
pub fn seed_route(
    config: &hubbub_core::Config,
    path: &str,
    query: Option<&str>,
    authorization: Option<&[u8]>,
    now: hubbub_core::Timestamp,
) -> Result<hubbub_core::Route, Refusal> {
    use hubbub_core::route::{query_value, Route};
    let decide = |query: Option<&str>| {
        hubbub_core::route(path, query).map_err(|e| (e.status(), e.message()))
    };
    if !config.tokens.enabled() || path == hubbub_core::route::CENTRIFUGE_PATH {
        return decide(query);
    }
    let bearer = authorization
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let from_query = query.and_then(|q| query_value(q, "token"));
    let token = bearer.or(from_query.as_deref());
    let user = match seed(&config.tokens, config.allow_anonymous, token, now) {
        SeedAuth::Unauthorized(why) => return Err((401, why.to_owned())),
        SeedAuth::Unchecked => None,
        SeedAuth::User(user) => Some(user),
    };
    let given = query.and_then(|q| query_value(q, "username"));
    let route = match (&user, &given) {
        (Some(user), Some(given)) if given != user => {
            return Err((403, format!("username {given:?} is not the token's user")))
        }
        // The token names the user: `username` may be left out.
        (Some(user), None) => {
            let mut q = query.unwrap_or("").to_owned();
            if !q.is_empty() {
                q.push('&');
            }
            q.push_str("username=");
            q.push_str(&percent_encode(user));
            decide(Some(&q))?
        }
        _ => decide(query)?,
    };
    if let Route::Room { room, .. } = &route {
        let room = room.as_str();
        let options = config.namespaces.resolve_room(room);
        let allowed = if hubbub_core::channel::parse(room).private {
            false // needs a subscription token, which seed clients cannot send
        } else if options.allow_user_limited_channels && room.contains('#') {
            user.as_deref()
                .is_some_and(|u| hubbub_core::auth::user_listed(room, u))
        } else {
            options.allow_subscribe_for_client
                && (user.is_some() || options.allow_subscribe_for_anonymous)
        };
        if !allowed {
            return Err((403, format!("permission denied: room {room:?}")));
        }
    } else if user.is_none() && !config.allow_anonymous {
        return Err((401, "a token is required".to_owned()));
    }
    Ok(route)
}

/// Now on the wall clock, as the hubs' timestamps are (Unix milliseconds).
#[must_use]
pub fn wall_clock() -> hubbub_core::Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    hubbub_core::Timestamp::from_millis(ms)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HS256 connection token for `user`, valid `ttl` from `now` (Unix
/// seconds), with `info` as its `info` claim.
///
/// # Errors
/// `info` is not JSON, or signing failed.
pub fn make_token(
    secret: &str,
    user: &str,
    ttl: Option<Duration>,
    info: Option<&str>,
    now: u64,
) -> Result<String, String> {
    let mut claims = serde_json::json!({ "sub": user, "iat": now });
    if let Some(ttl) = ttl {
        claims["exp"] = (now + ttl.as_secs()).into();
    }
    if let Some(info) = info {
        let info: serde_json::Value =
            serde_json::from_str(info).map_err(|e| format!("--info is not JSON: {e}"))?;
        claims["info"] = info;
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot sign the token: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hmac(secret: &str) -> Tokens {
        KeyConfig {
            hmac_secret: Some(secret.to_owned()),
            ..KeyConfig::default()
        }
        .tokens()
        .unwrap()
    }

    #[test]
    fn made_tokens_verify_and_others_do_not() {
        let t = make_token(
            "s3cret",
            "alice",
            Some(Duration::from_secs(60)),
            Some(r#"{"n":1}"#),
            1000,
        )
        .unwrap();
        let claims = hmac("s3cret").claims(&t).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp, Some(1060));
        assert_eq!(claims.info.as_deref(), Some(&br#"{"n":1}"#[..]));
        assert!(hmac("other").claims(&t).is_err(), "wrong key");
        // Tampered payload: the signature no longer matches.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = make_token("x", "mallory", None, None, 1000).unwrap();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert!(hmac("s3cret").claims(&parts.join(".")).is_err(), "tampered");
        // alg none: header {"alg":"none","typ":"JWT"}.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert!(hmac("s3cret").claims(&none).is_err(), "alg none");
        assert!(hmac("s3cret").claims("garbage").is_err());
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let keys = KeyConfig {
            hmac_secret: Some("k".to_owned()),
            audience: Some("chat".to_owned()),
            issuer: Some("me".to_owned()),
            ..KeyConfig::default()
        };
        let tokens = keys.tokens().unwrap();
        let sign = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims,
                &EncodingKey::from_secret(b"k"),
            )
            .unwrap()
        };
        assert!(tokens
            .claims(&sign(
                serde_json::json!({"sub":"a","aud":"chat","iss":"me"})
            ))
            .is_ok());
        assert!(tokens
            .claims(&sign(
                serde_json::json!({"sub":"a","aud":"other","iss":"me"})
            ))
            .is_err());
        assert!(tokens
            .claims(&sign(
                serde_json::json!({"sub":"a","aud":"chat","iss":"you"})
            ))
            .is_err());
        assert!(
            tokens
                .claims(&sign(serde_json::json!({"sub":"a","iss":"me"})))
                .is_err(),
            "no aud"
        );
        // Without audience configured, an aud claim is ignored.
        assert!(hmac("k")
            .claims(&sign(serde_json::json!({"sub":"a","aud":"x"})))
            .is_ok());
    }

    #[test]
    fn seed_handshakes() {
        let now = hubbub_core::Timestamp::from_millis(1_000_000);
        let tokens = hmac("k");
        let t = make_token("k", "alice", Some(Duration::from_secs(60)), None, 1000).unwrap();
        assert_eq!(
            seed(&tokens, false, Some(&t), now),
            SeedAuth::User("alice".to_owned())
        );
        assert!(matches!(
            seed(&tokens, false, None, now),
            SeedAuth::Unauthorized(_)
        ));
        assert_eq!(seed(&tokens, true, None, now), SeedAuth::Unchecked);
        assert!(matches!(
            seed(&tokens, true, Some("bad"), now),
            SeedAuth::Unauthorized(_)
        ));
        let late = hubbub_core::Timestamp::from_millis(2_000_000);
        assert!(matches!(
            seed(&tokens, false, Some(&t), late),
            SeedAuth::Unauthorized(_)
        ));
        assert_eq!(
            seed(&Tokens::default(), false, None, now),
            SeedAuth::Unchecked
        );
    }
}
