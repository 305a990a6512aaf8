//! `GET /`: the browser chat page embedded in the binary, with headers that
//! keep it to its own origin (CSP), and its assets with their types.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The whole answer to a `HEAD` request: the server closes after it, so
/// anything after the head would be a body sent by mistake.
async fn head_of(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within(STEP, "head response", stream.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("\r\n\r\n"), "a body after the head: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_with_a_strict_csp() {
    let mut server = TestServer::start(config()).await;
    let r = get(server.addr, "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(r.body.starts_with("<!doctype html>"), "{}", r.body);
    assert!(r.body.contains(r#"<script type="module" src="/app.js">"#));
    let csp = r.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_have_their_types_and_revalidate_with_the_etag() {
    let mut server = TestServer::start(config()).await;
    for (path, ty) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/centrifuge-client.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
    ] {
        let r = get(server.addr, path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type").as_deref(), Some(ty), "{path}");
        assert!(r.header("content-security-policy").is_some(), "{path}");
        assert!(!r.body.is_empty(), "{path}");
        let etag = r.header("etag").unwrap();
        let again = get(server.addr, path, &[&format!("If-None-Match: {etag}")]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty(), "{path}");
        let stale = get(server.addr, path, &["If-None-Match: \"0-0\""]).await;
        assert_eq!(stale.status, 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_no_body_and_other_methods_are_405() {
    let mut server = TestServer::start(config()).await;
    let full = get(server.addr, "/", &[]).await;
    let head = head_of(server.addr, "/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = format!("content-length: {}", full.header("content-length").unwrap());
    assert!(head.contains(&length), "{head}");
    assert!(head.contains("content-security-policy:"), "{head}");
    let post = request(server.addr, "POST", "/", &["Content-Length: 0"]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.error(), "method not allowed");
    // Unknown paths keep their JSON 404.
    let r = get(server.addr, "/app.jsx", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error(), "not found");
    server.stop().await;
}
