//! HTTP routing and handshake validation, before any upgrade.
//!
//! Every refusal is a JSON body `{"error": "…"}` with a status that says
//! what to fix, decided in this order: `/health`, `/metrics` and the
//! browser page's files (`/`, `/app.js`, …: [`crate::static_files`]); unknown
//! path (404); wrong method (405); the core's route validation (400, naming
//! the field and the problem); not a WebSocket upgrade (426); shutting down
//! or `max_connections` reached (503); a malformed upgrade (400). Only then
//! is the connection upgraded and handed to [`crate::connection`]. Every
//! refusal is counted in `hubbub_http_rejections_total`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::upgrade::{is_upgrade_request, upgrade};
use http_body_util::Full;
use hubbub_core::route::is_websocket_path;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN, RETRY_AFTER, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};

use crate::connection::{self, Accepted};
use crate::limits::Refusal;
use crate::state::Shared;
use crate::static_files;

pub type Body = Full<Bytes>;

/// The service function: one request, one response.
///
/// # Errors
/// Never; every failure is a response.
pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = if crate::api::is_api_path(req.uri().path()) {
        crate::api::respond(&shared, req).await
    } else {
        respond(&shared, peer, &mut req)
    };
    shared.metrics.count_response(response.status());
    Ok(response)
}

fn respond(shared: &Arc<Shared>, peer: SocketAddr, req: &mut Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path == "/health" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed();
        }
        // A balancer takes a node whose engine is down out of rotation.
        if let Some(reason) = shared.metrics.engine_down() {
            let body =
                serde_json::json!({"status": "unavailable", "engine": "redis", "reason": reason});
            return json(StatusCode::SERVICE_UNAVAILABLE, body.to_string());
        }
        return json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned());
    }
    if path == "/metrics" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed();
        }
        return metrics(shared);
    }
    if let Some(asset) = static_files::find(path) {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed();
        }
        return asset.respond(req.headers());
    }
    if !is_websocket_path(path) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if req.method() != Method::GET {
        return method_not_allowed();
    }
    let authorization = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let now = crate::auth::wall_clock();
    let route = match crate::auth::seed_route(
        &shared.config.hub,
        path,
        req.uri().query(),
        authorization,
        now,
    ) {
        Ok(route) => route,
        Err((status, message)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &message);
        }
    };
    let origin = req.headers().get(ORIGIN).map(HeaderValue::to_str);
    let host = req.headers().get(HOST).and_then(|h| h.to_str().ok());
    let allowed = match origin {
        None => true,
        Some(Ok(origin)) => shared.config.origins.allows(Some(origin), host),
        Some(Err(_)) => false,
    };
    if !allowed {
        return error(
            StatusCode::FORBIDDEN,
            "origin not allowed: this server does not accept WebSockets from that page (--allowed-origins)",
        );
    }
    if !is_upgrade_request(req) {
        let mut response = error(
            StatusCode::UPGRADE_REQUIRED,
            "websocket upgrade required: send Connection: Upgrade and Upgrade: websocket",
        );
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    if let Err(why) = well_formed_upgrade(req) {
        return error(StatusCode::BAD_REQUEST, why);
    }
    if shared.is_stopping() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    let ip = match shared
        .ip_limits
        .admit(peer.ip(), tokio::time::Instant::now().into_std())
    {
        Ok(guard) => guard,
        Err(Refusal::TooMany { retry_after, what }) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, what);
            if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
                response.headers_mut().insert(RETRY_AFTER, value);
            }
            return response;
        }
        Err(Refusal::Busy) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy: too many client addresses",
            )
        }
    };
    let Some(slot) = shared.reserve() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server full: too many connections",
        );
    };
    let (response, upgrade) = match upgrade(&mut *req) {
        Ok(upgrade) => upgrade,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let accepted = Accepted {
        conn: shared.next_conn(),
        peer,
        route,
        upgrade,
        slot,
        ip,
        token: shared.tracker.token(),
    };
    tokio::spawn(connection::run(shared.clone(), accepted));
    response.map(|_| Body::new(Bytes::new()))
}

/// What RFC 6455 (section 4.2.1) asks of an opening handshake beyond what
/// the upgrade itself checks: HTTP/1.1, one `Sec-WebSocket-Key` that is
/// the base64 of 16 bytes, and no body framing.
fn well_formed_upgrade(req: &Request<Incoming>) -> Result<(), &'static str> {
    if req.version() != hyper::Version::HTTP_11 {
        return Err("a websocket handshake must be HTTP/1.1");
    }
    let mut keys = req.headers().get_all("sec-websocket-key").iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err("exactly one Sec-WebSocket-Key header is required");
    };
    if !is_websocket_key(key.as_bytes()) {
        return Err("Sec-WebSocket-Key must be the base64 of 16 bytes");
    }
    let headers = req.headers();
    if headers.contains_key(hyper::header::TRANSFER_ENCODING)
        || headers
            .get(hyper::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return Err("a websocket handshake has no body");
    }
    Ok(())
}

/// Whether `key` is 16 bytes in base64: 22 characters of the alphabet,
/// the last of them carrying no stray bits, then `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let Some((body, b"==")) = key.split_last_chunk::<2>() else {
        return false;
    };
    body.len() == 22
        && body.iter().all(|c| ALPHABET.contains(c))
        && ALPHABET
            .iter()
            .position(|c| *c == body[21])
            .is_some_and(|v| v & 0b1111 == 0)
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `GET /metrics`: Prometheus text, version 0.0.4 (see [`crate::metrics`]).
fn metrics(shared: &Shared) -> Response<Body> {
    let text = shared.metrics.render(&shared.gauge.metrics);
    let mut response = Response::new(Body::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": message }).to_string())
}

fn method_not_allowed() -> Response<Body> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET"));
    response
}

#[cfg(test)]
mod tests {
    use super::is_websocket_key;

    #[test]
    fn websocket_keys_are_16_bytes_of_base64() {
        assert!(
            is_websocket_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "RFC 6455's example"
        );
        for bad in [
            &b""[..],
            b"dGhlIHNhbXBsZSBub25jZQ",
            b"dGhlIHNhbXBsZSBub25jZQ=",
            b"dGhlIHNhbXBsZSBub25jZR==",
            b"dGhlIHNhbXBsZSBub25j*Q==",
            b"dGhlIHNhbXBsZSBub25jZQ==x",
            b"aGVsbG8=",
        ] {
            assert!(!is_websocket_key(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
