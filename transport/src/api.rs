//! The server HTTP API: `POST /api/<method>` with a JSON body, for a
//! chat app's backend (publish, broadcast, presence, history, a user's
//! connections, …). See PROTOCOL.md for every method and answer.
//!
//! Off unless `--api-key` is set (then every `/api/…` path is 404). The
//! key comes as `X-API-Key: KEY` (checked first) or `Authorization: apikey
//! KEY`. The order of refusals: off (404), a missing or wrong key (401),
//! not `POST` (405), an unknown method (404), a body over [`MAX_BODY`]
//! (413), a body that is not JSON (400). Every answer is JSON; commands
//! that fail say so in the body with a Centrifugo error code (HTTP 200).
//!
//! A request is decoded here ([`hubbub_core::api::decode`]) and handed to
//! this shard's hub task with a oneshot for the answer; the hub routes it
//! to the channels' homes and to every shard as needed. No answer within
//! [`API_TIMEOUT`] gets 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hubbub_core::api::{decode, fill_uptime, DecodeError};
use hubbub_core::record::ApiCall;
use hubbub_core::ApiRequest;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use crate::http::Body;
use crate::hub_task::{ApiEvent, Event};
use crate::state::Shared;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1 << 20;

/// How long a request waits for its hub's answer before 503.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// Ids of API requests, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whether `path` belongs to the API.
#[must_use]
pub fn is_api_path(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// Whether the request carries `key`: `X-API-Key` when present, else
/// `Authorization: apikey KEY` (the scheme in any case).
#[must_use]
pub fn authorized(headers: &hyper::HeaderMap, key: &str) -> bool {
    if let Some(given) = headers.get("x-api-key") {
        return same(given.as_bytes(), key.as_bytes());
    }
    let Some(auth) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = auth.trim().splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(given)) if scheme.eq_ignore_ascii_case("apikey") => {
            same(given.trim().as_bytes(), key.as_bytes())
        }
        _ => false,
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers one API request.
pub async fn respond(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let Some(key) = shared.config.api_key.as_ref() else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    if !authorized(req.headers(), key.expose()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized: a wrong or missing API key",
        );
    }
    if req.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let method = req
        .uri()
        .path()
        .strip_prefix("/api/")
        .unwrap_or_default()
        .to_owned();
    if !hubbub_core::api::METHODS.contains(&method.as_str()) {
        return error(StatusCode::NOT_FOUND, "unknown API method");
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(_) => return error(StatusCode::BAD_REQUEST, "could not read the body"),
    };
    let mut command = match decode(&method, &body) {
        Ok(command) => command,
        Err(DecodeError::UnknownMethod) => {
            return error(StatusCode::NOT_FOUND, "unknown API method")
        }
        Err(DecodeError::BadJson(e)) => {
            return error(StatusCode::BAD_REQUEST, &format!("bad JSON: {e}"))
        }
    };
    let uptime = shared.started.elapsed().as_secs();
    fill_uptime(&mut command, uptime);
    // With the Redis engine, some calls reach further than this node.
    let wide = shared
        .cluster
        .as_ref()
        .and_then(|_| crate::api_cluster::Widen::of(&command));
    let wide_batch = shared
        .cluster
        .as_ref()
        .and_then(|_| crate::api_cluster::of_batch(&command));
    let forwarded_body = body.clone();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    // `--record-inputs` keeps the request as it came, to decode it again.
    let recorded = shared.config.record.is_some().then(|| ApiCall {
        id,
        method: method.clone(),
        body: body.clone(),
        uptime,
    });
    let event = Event::Api(Box::new(ApiEvent {
        request: ApiRequest { id, command },
        recorded,
        reply: tx,
    }));
    let answer = tokio::time::timeout(API_TIMEOUT, async {
        shared.hub.send(event).await.ok()?;
        rx.await.ok()
    })
    .await;
    match answer {
        Ok(Some(body)) => match (&shared.cluster, wide, wide_batch) {
            (Some(cluster), Some(wide), _) => {
                let body = wide.apply(cluster, &method, forwarded_body, body).await;
                json(StatusCode::OK, body)
            }
            (Some(cluster), None, Some(widen)) => {
                let body =
                    crate::api_cluster::widen_batch(cluster, widen, &forwarded_body, body).await;
                json(StatusCode::OK, body)
            }
            _ => json(StatusCode::OK, body),
        },
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub did not answer in time",
        ),
    }
}

fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body over {MAX_BODY} bytes"),
    )
}

fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        Bytes::from(serde_json::json!({ "error": message }).to_string()),
    )
}

/// The API key: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// `None` for an empty key (the API stays off).
    #[must_use]
    pub fn new(key: &str) -> Option<Self> {
        (!key.is_empty()).then(|| Self(key.to_owned()))
    }

    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

/// Runs a call another node forwarded (it acts on this node's
/// connections); its answer is not needed.
pub async fn run_forwarded(shared: &Arc<Shared>, method: &str, body: &[u8]) {
    let Ok(mut command) = decode(method, body) else {
        tracing::warn!(method, "a forwarded API call that does not decode: skipped");
        return;
    };
    let uptime = shared.started.elapsed().as_secs();
    fill_uptime(&mut command, uptime);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let event = Event::Api(Box::new(ApiEvent {
        request: ApiRequest { id, command },
        recorded: shared.config.record.is_some().then(|| ApiCall {
            id,
            method: method.to_owned(),
            body: Bytes::copy_from_slice(body),
            uptime,
        }),
        reply: tx,
    }));
    let _ = tokio::time::timeout(API_TIMEOUT, async {
        shared.hub.send(event).await.ok()?;
        rx.await.ok()
    })
    .await;
}

/// This node's `info` entry: the first of `nodes` in a local `info` answer.
pub async fn local_node_info(shared: &Arc<Shared>) -> Option<Bytes> {
    let uptime = shared.started.elapsed().as_secs();
    let command = hubbub_core::ApiCommand::Info { uptime };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    let event = Event::Api(Box::new(ApiEvent {
        request: ApiRequest { id, command },
        recorded: shared.config.record.is_some().then(|| ApiCall {
            id,
            method: "info".to_owned(),
            body: Bytes::from_static(b"{}"),
            uptime,
        }),
        reply: tx,
    }));
    let body = tokio::time::timeout(API_TIMEOUT, async {
        shared.hub.send(event).await.ok()?;
        rx.await.ok()
    })
    .await
    .ok()??;
    let answer: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let entry = answer.get("result")?.get("nodes")?.get(0)?;
    Some(Bytes::from(entry.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_either_header() {
        let mut h = hyper::HeaderMap::new();
        assert!(!authorized(&h, "k"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("ApiKey k"));
        assert!(authorized(&h, "k"));
        assert!(!authorized(&h, "kk"));
        h.insert("x-api-key", HeaderValue::from_static("wrong"));
        assert!(!authorized(&h, "k"), "X-API-Key is checked first");
        h.insert("x-api-key", HeaderValue::from_static("k"));
        assert!(authorized(&h, "k"));
        let mut b = hyper::HeaderMap::new();
        b.insert(AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        assert!(!authorized(&b, "k"));
    }
}
