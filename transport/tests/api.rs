//! The server HTTP API end to end: publications reach seed and Centrifugo
//! clients, queries answer, a user is disconnected, and every refusal
//! (no key, wrong key, API off, bad JSON, unknown method, wrong HTTP
//! method, too large) gets its status while a bystander keeps chatting.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::sdk::Sdk;
use common::*;
use hubbub::api::ApiKey;
use hubbub_core::SeedType;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "s3cret-key";

fn api_config() -> hubbub::ServerConfig {
    hubbub::ServerConfig {
        api_key: ApiKey::new(KEY),
        ..config()
    }
}

/// One request with a body; the whole response.
async fn post(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> HttpResponse {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = within(STEP, "connect", TcpStream::connect(addr))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    within(STEP, "response", stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn api(addr: SocketAddr, method: &str, body: Value) -> Value {
    let auth = format!("X-API-Key: {KEY}");
    let r = post(
        addr,
        "POST",
        &format!("/api/{method}"),
        &[&auth],
        &body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The bystander still chats: bob's line reaches carol.
async fn bystander_chats(bob: &mut Ws, carol: &mut Ws, line: &str) {
    send_text(bob, line).await;
    seed_until(carol, |m| m.kind == SeedType::Chat && m.content == line).await;
}

#[tokio::test]
async fn api_publications_reach_every_client_and_queries_answer() {
    let mut server = TestServer::start(api_config()).await;
    let addr = server.addr;
    let mut bob = join(&server, "lobby", "bob").await;
    let mut carol = join(&server, "lobby", "carol").await;
    let mut sdk = Sdk::connect(addr).await;
    let sub = sdk.call(json!({"subscribe": {"channel": "lobby"}})).await;
    assert!(sub.get("subscribe").is_some(), "{sub}");

    // publish: durable first (offset, epoch), then fanned out to both protocols.
    let r = api(
        addr,
        "publish",
        json!({"channel": "lobby", "data": {"text": "from the backend"}}),
    )
    .await;
    let offset = r["result"]["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("{r}"));
    let epoch = r["result"]["epoch"].as_str().unwrap().to_owned();
    let m = seed_until(&mut carol, |m| m.kind == SeedType::Chat).await;
    assert_eq!(
        (m.content.as_str(), m.username.as_str()),
        ("from the backend", "")
    );
    let p = sdk.until(|m| m["push"]["pub"].is_object()).await;
    assert_eq!(p["push"]["channel"], "lobby");
    assert_eq!(
        p["push"]["pub"]["data"],
        json!({"text": "from the backend"})
    );
    assert_eq!(p["push"]["pub"]["offset"], json!(offset));
    assert!(
        p["push"]["pub"].get("info").is_none(),
        "API publications have no publisher: {p}"
    );
    bystander_chats(&mut bob, &mut carol, "after publish").await;

    // idempotency: the repeat answers the first result and publishes nothing.
    let body = json!({"channel": "lobby", "data": {"text": "once"}, "idempotency_key": "k1"});
    let first = api(addr, "publish", body.clone()).await;
    let again = api(addr, "publish", body).await;
    assert_eq!(first, again);

    // skip_history: delivered, not kept, no offset.
    let r = api(
        addr,
        "publish",
        json!({"channel": "lobby", "data": {"text": "ephemeral"}, "skip_history": true}),
    )
    .await;
    assert_eq!(r, json!({"result": {}}));
    let p = sdk
        .until(|m| m["push"]["pub"]["data"]["text"] == "ephemeral")
        .await;
    assert!(p["push"]["pub"].get("offset").is_none(), "{p}");

    // history: the kept publications, oldest first.
    let h = api(addr, "history", json!({"channel": "lobby", "limit": 10})).await;
    let texts: Vec<&str> = h["result"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .filter_map(|p| p["data"]["text"].as_str())
        .collect();
    assert_eq!(texts.first(), Some(&"from the backend"), "{h}");
    assert!(
        texts.contains(&"once") && !texts.contains(&"ephemeral"),
        "{h}"
    );
    assert_eq!(texts.iter().filter(|t| **t == "once").count(), 1, "{h}");
    assert_eq!(h["result"]["epoch"], json!(epoch));

    // presence and stats: bob, carol and the SDK client.
    let s = api(addr, "presence_stats", json!({"channel": "lobby"})).await;
    assert_eq!(s["result"]["num_clients"], 3, "{s}");
    let p = api(addr, "presence", json!({"channel": "lobby"})).await;
    assert_eq!(
        p["result"]["presence"].as_object().map(|o| o.len()),
        Some(3),
        "{p}"
    );

    // channels, with and without a pattern; info.
    let c = api(addr, "channels", json!({})).await;
    assert_eq!(c["result"]["channels"]["lobby"]["num_clients"], 3, "{c}");
    let c = api(addr, "channels", json!({"pattern": "nope*"})).await;
    assert_eq!(c, json!({"result": {"channels": {}}}));
    let i = api(addr, "info", json!({})).await;
    assert_eq!(i["result"]["nodes"][0]["num_clients"], 3, "{i}");
    assert_eq!(i["result"]["nodes"][0]["num_users"], 2, "{i}");

    // broadcast and batch, in order; an unknown channel namespace is refused in its slot.
    let b = api(
        addr,
        "broadcast",
        json!({"channels": ["lobby", "elsewhere"], "data": {"text": "to all"}}),
    )
    .await;
    assert_eq!(
        b["result"]["responses"].as_array().map(Vec::len),
        Some(2),
        "{b}"
    );
    seed_until(&mut carol, |m| {
        m.kind == SeedType::Chat && m.content == "to all"
    })
    .await;
    let b = api(
        addr,
        "batch",
        json!({"commands": [
            {"publish": {"channel": "lobby", "data": {"text": "b1"}}},
            {"presence_stats": {"channel": "lobby"}},
            {"nope": {}},
        ]}),
    )
    .await;
    let replies = b["result"]["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("{b}"));
    assert_eq!(replies.len(), 3);
    assert!(replies[0]["publish"]["offset"].is_u64(), "{b}");
    assert_eq!(replies[1]["presence_stats"]["num_clients"], 3, "{b}");
    assert_eq!(replies[2]["error"]["code"], 104, "{b}");
    seed_until(&mut carol, |m| {
        m.kind == SeedType::Chat && m.content == "b1"
    })
    .await;

    // A field missing: error 107 in the body.
    let e = api(addr, "publish", json!({"channel": "lobby"})).await;
    assert_eq!(e["error"]["code"], 107, "{e}");
    // refresh is accepted (nothing to refresh before tokens).
    assert_eq!(
        api(addr, "refresh", json!({"user": "bob"})).await,
        json!({"result": {}})
    );

    // disconnect: mallory's connection is closed (1008), the others chat on.
    let mut mallory = join(&server, "lobby", "mallory").await;
    let d = api(addr, "disconnect", json!({"user": "mallory"})).await;
    assert_eq!(d, json!({"result": {}}));
    let (code, _) = close_of(&mut mallory).await;
    assert_eq!(code, 1008);
    bystander_chats(&mut bob, &mut carol, "after disconnect").await;

    // history_remove: the window is empty, the position stays.
    let r = api(addr, "history_remove", json!({"channel": "lobby"})).await;
    assert_eq!(r, json!({"result": {}}));
    let h = api(addr, "history", json!({"channel": "lobby", "limit": 10})).await;
    assert!(h["result"].get("publications").is_none(), "{h}");
    assert!(h["result"]["offset"].as_u64() > Some(offset), "{h}");
    server.stop().await;
}

#[tokio::test]
async fn api_refusals_leave_the_bystanders_chatting() {
    let mut server = TestServer::start(api_config()).await;
    let addr = server.addr;
    let mut bob = join(&server, "lobby", "bob").await;
    let mut carol = join(&server, "lobby", "carol").await;
    let publish = r#"{"channel":"lobby","data":{"text":"nope"}}"#;
    let good = format!("X-API-Key: {KEY}");
    let cases: Vec<(&str, &str, Vec<String>, String, u16)> = vec![
        ("POST", "/api/publish", vec![], publish.to_owned(), 401),
        (
            "POST",
            "/api/publish",
            vec!["X-API-Key: wrong".to_owned()],
            publish.to_owned(),
            401,
        ),
        (
            "POST",
            "/api/publish",
            vec![format!("Authorization: apikey {KEY}x")],
            publish.to_owned(),
            401,
        ),
        (
            "POST",
            "/api/publish",
            vec!["Authorization: Bearer s3cret-key".to_owned()],
            publish.to_owned(),
            401,
        ),
        (
            "GET",
            "/api/publish",
            vec![good.clone()],
            String::new(),
            405,
        ),
        (
            "POST",
            "/api/nope",
            vec![good.clone()],
            "{}".to_owned(),
            404,
        ),
        (
            "POST",
            "/api/publish",
            vec![good.clone()],
            "{not json".to_owned(),
            400,
        ),
        (
            "POST",
            "/api/publish",
            vec![good.clone()],
            "[1,2]".to_owned(),
            400,
        ),
        (
            "POST",
            "/api/publish",
            vec![good.clone()],
            "x".repeat(hubbub::api::MAX_BODY + 1),
            413,
        ),
    ];
    for (i, (method, path, headers, body, status)) in cases.into_iter().enumerate() {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let r = post(addr, method, path, &headers, &body).await;
        assert_eq!(r.status, status, "case {i}: {r:?}");
        assert!(!r.error().is_empty(), "case {i}: every answer is JSON");
        bystander_chats(&mut bob, &mut carol, &format!("still here {i}")).await;
    }
    // `Authorization: apikey` works when no X-API-Key is sent.
    let auth = format!("Authorization: ApiKey {KEY}");
    let r = post(addr, "POST", "/api/publish", &[&auth], publish).await;
    assert_eq!(r.status, 200, "{r:?}");
    seed_until(&mut carol, |m| {
        m.kind == SeedType::Chat && m.content == "nope"
    })
    .await;
    server.stop().await;

    // Without a key the API is off: 404, whatever the key.
    let mut off = TestServer::start(config()).await;
    let mut bob = join(&off, "lobby", "bob").await;
    let mut carol = join(&off, "lobby", "carol").await;
    let r = post(off.addr, "POST", "/api/publish", &[&good], publish).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.error(), "not found");
    bystander_chats(&mut bob, &mut carol, "api off").await;
    off.stop().await;
}
