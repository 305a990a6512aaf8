//! Before the upgrade: health, routing and validation answer with a status
//! and a JSON body `{"error": "…"}` that says what to fix.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use hubbub::ServerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok() {
    let mut server = TestServer::start(config()).await;
    let r = get(server.addr, "/health", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404() {
    let mut server = TestServer::start(config()).await;
    // `/` is the chat page now (tests/static_page.rs).
    for path in [
        "/nope",
        "/index.html",
        "/wss",
        "/ws/a/b?username=x",
        "/health/x",
    ] {
        let r = get(server.addr, path, UPGRADE).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error(), "not found", "{path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_on_a_websocket_path_is_426() {
    let mut server = TestServer::start(config()).await;
    for path in ["/ws", "/ws?username=ann", "/ws/room1?username=ann"] {
        let r = get(server.addr, path, &[]).await;
        assert_eq!(r.status, 426, "{path}");
        assert!(r.error().contains("upgrade"), "{path}: {}", r.body);
        assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rooms_and_usernames_are_400_naming_the_field() {
    let mut server = TestServer::start(config()).await;
    let long = "a".repeat(65);
    let cases = [
        ("/ws/room1".to_owned(), "room and username are required"),
        (
            "/ws/room1?user=x".to_owned(),
            "room and username are required",
        ),
        (
            "/ws/room1?username=".to_owned(),
            "username must not be empty",
        ),
        ("/ws?username=".to_owned(), "username must not be empty"),
        ("/ws/?username=x".to_owned(), "room must not be empty"),
        (
            format!("/ws/{long}?username=x"),
            "room is longer than 64 bytes",
        ),
        (
            format!("/ws/r?username={long}"),
            "username is longer than 64 bytes",
        ),
        (
            "/ws/r?username=a%0Ab".to_owned(),
            "username must not contain control characters",
        ),
        (
            "/ws/bell%07?username=x".to_owned(),
            "room must not contain control characters",
        ),
        (
            "/ws/r?username=%FF".to_owned(),
            "username is not valid percent-encoded UTF-8",
        ),
    ];
    for (path, error) in &cases {
        // Refused the same way with or without the upgrade headers.
        for headers in [UPGRADE, &[]] {
            let r = get(server.addr, path, headers).await;
            assert_eq!(r.status, 400, "{path}");
            assert_eq!(r.error(), *error, "{path}");
        }
    }
    // The limit is 64 bytes, inclusive.
    let ok = "a".repeat(64);
    let r = get(server.addr, &format!("/ws/{ok}?username={ok}"), UPGRADE).await;
    assert_eq!(r.status, 101);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upgrade_is_400_and_other_methods_405() {
    let mut server = TestServer::start(config()).await;
    let r = get(
        server.addr,
        "/ws",
        &["Upgrade: websocket", "Connection: Upgrade"],
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().contains("Sec-WebSocket-Key"), "{}", r.body);
    for path in ["/ws", "/health"] {
        let r = request(server.addr, "POST", path, &["Content-Length: 0"]).await;
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.error(), "method not allowed");
        assert_eq!(r.header("allow").as_deref(), Some("GET"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_until_one_leaves() {
    let mut config = config();
    config.hub.max_connections = 2;
    let mut server = TestServer::start(ServerConfig { ..config }).await;
    let mut a = connect(&server, "/ws").await;
    let _b = connect(&server, "/ws").await;
    let r = get(server.addr, "/ws", UPGRADE).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "server full: too many connections");
    // Health still answers.
    assert_eq!(get(server.addr, "/health", &[]).await.status, 200);
    // Existing clients keep working.
    send_text(&mut a, "still fine").await;
    assert_eq!(next_text(&mut a).await, "still fine");

    // Once a client has gone, its slot is free again.
    a.close(None).await.unwrap();
    close_of(&mut a).await;
    drop(a);
    within(Duration::from_secs(10), "a slot frees up", async {
        loop {
            let r = get(server.addr, "/ws", UPGRADE).await;
            if r.status == 101 {
                break;
            }
            assert_eq!(r.status, 503);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop().await;
}
