//! The attacker suite for authentication and permissions, against the real
//! binary: forged tokens, impersonation on the seed routes, private and
//! user-limited channels without rights. Every attack must get its answer,
//! and a bystander pair in the same room must keep chatting through it.
//!
//! The RSA and ECDSA keys under tests/data are test-only keys.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::process::{Process, BIN};
use common::{get, within, STEP};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SECRET: &str = "attacker-suite-secret";
const AUDIENCE: &str = "hubbub-tests";

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Claims for `user`, valid for an hour, for the configured audience.
fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 3600, "aud": AUDIENCE})
}

fn b64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn server(extra: &[&str]) -> Process {
    let rsa = data("rsa_public.pem");
    let ec = data("ec_public.pem");
    let mut args = vec![
        "--token-hmac-secret",
        SECRET,
        "--token-rsa-public-key",
        rsa.to_str().unwrap(),
        "--token-ecdsa-public-key",
        ec.to_str().unwrap(),
        "--token-audience",
        AUDIENCE,
    ];
    args.extend_from_slice(extra);
    Process::start(&args)
}

/// A seed client that joined `room` as `user`, its own join notices read.
async fn seed(addr: SocketAddr, room: &str, user: &str) -> Ws {
    let url = format!("ws://{addr}/ws/{room}?token={}", hs(&claims(user)));
    let (mut ws, _) = within(STEP, "seed connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    loop {
        let m = text(&mut ws).await;
        if m["type"] == "user_joined" && m["username"] == user {
            return ws;
        }
    }
}

async fn text(ws: &mut Ws) -> Value {
    within(STEP, "next message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected text, got {other:?}"),
            }
        }
    })
    .await
}

/// The bystanders: alice says something, bob hears it.
struct Bystanders {
    alice: Ws,
    bob: Ws,
    n: u32,
}

impl Bystanders {
    async fn new(addr: SocketAddr) -> Self {
        let alice = seed(addr, "lobby", "alice").await;
        let bob = seed(addr, "lobby", "bob").await;
        Self { alice, bob, n: 0 }
    }

    async fn still_chatting(&mut self, after: &str) {
        self.n += 1;
        let line = format!("still here {}", self.n);
        self.alice.send(Message::text(line.clone())).await.unwrap();
        loop {
            let m = text(&mut self.bob).await;
            if m["type"] == "chat" && m["content"] == line.as_str() {
                assert_eq!(m["username"], "alice", "after {after}");
                return;
            }
        }
    }
}

/// A hand-written Centrifugo client.
struct Sdk {
    ws: Ws,
    pending: VecDeque<Value>,
    next_id: u64,
}

enum Outcome {
    Reply(Value),
    Closed(u16, String),
}

impl Sdk {
    async fn open(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/connection/websocket");
        let (ws, _) = within(STEP, "connect", tokio_tungstenite::connect_async(url))
            .await
            .unwrap();
        Self {
            ws,
            pending: VecDeque::new(),
            next_id: 0,
        }
    }

    async fn connect(addr: SocketAddr, token: &str) -> (Self, Outcome) {
        let mut sdk = Self::open(addr).await;
        let outcome = sdk.call(json!({"connect": {"token": token}})).await;
        (sdk, outcome)
    }

    /// Sends `command` and waits for its reply, or the close that ends it.
    async fn call(&mut self, mut command: Value) -> Outcome {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .unwrap();
        loop {
            if let Some(i) = self.pending.iter().position(|m| m["id"] == json!(id)) {
                return Outcome::Reply(self.pending.remove(i).unwrap());
            }
            match within(STEP, "reply", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n') {
                        let m: Value = serde_json::from_str(line).unwrap();
                        if m == json!({}) {
                            let _ = self.ws.send(Message::text("{}")).await;
                        } else {
                            self.pending.push_back(m);
                        }
                    }
                }
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Outcome::Closed(u16::from(code), reason.as_str().to_owned())
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn ok(&mut self, command: Value) -> Value {
        match self.call(command.clone()).await {
            Outcome::Reply(r) if r.get("error").is_none() => r,
            Outcome::Reply(r) => panic!("{command}: {r}"),
            Outcome::Closed(code, reason) => panic!("{command}: closed {code} {reason}"),
        }
    }

    /// Reads until a push on `channel` with `pub` data; none within `STEP` panics.
    async fn publication(&mut self, channel: &str) -> Value {
        loop {
            if let Some(i) = self
                .pending
                .iter()
                .position(|m| m["push"]["channel"] == channel && m["push"].get("pub").is_some())
            {
                return self.pending.remove(i).unwrap();
            }
            match within(STEP, "publication", self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n') {
                        self.pending.push_back(serde_json::from_str(line).unwrap());
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn closed(outcome: Outcome) -> (u16, String) {
    match outcome {
        Outcome::Closed(code, reason) => (code, reason),
        Outcome::Reply(r) => panic!("expected a close, got {r}"),
    }
}

fn error_code(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Reply(r) => r["error"]["code"].clone(),
        Outcome::Closed(code, reason) => panic!("expected an error reply, closed {code} {reason}"),
    }
}

#[tokio::test]
async fn forged_connection_tokens_are_refused_and_the_room_chats_on() {
    let server = server(&[]);
    let addr = server.addr;
    let mut room = Bystanders::new(addr).await;
    let rsa_public = std::fs::read(data("rsa_public.pem")).unwrap();
    let good = hs(&claims("mallory"));
    let payload = good.split('.').nth(1).unwrap().to_owned();
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = b64(
            json!({"sub": "alice", "exp": now() + 3600, "aud": AUDIENCE})
                .to_string()
                .as_bytes(),
        );
        parts.join(".")
    };
    let forged: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#)),
        ),
        (
            "HS256 keyed with the RSA public key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&rsa_public),
                &claims("mallory"),
            ),
        ),
        (
            "wrong HMAC key",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"guessed"),
                &claims("mallory"),
            ),
        ),
        ("tampered payload", tampered),
        (
            "wrong audience",
            hs(&json!({"sub": "mallory", "exp": now() + 3600, "aud": "elsewhere"})),
        ),
        (
            "no audience",
            hs(&json!({"sub": "mallory", "exp": now() + 3600})),
        ),
        (
            "an ES256 token from an unknown key",
            sign(
                Algorithm::ES256,
                // A key of its own: the server trusts another one.
                &EncodingKey::from_ec_pem(&std::fs::read(data("ec_other_private.pem")).unwrap())
                    .unwrap(),
                &claims("mallory"),
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &forged {
        let (_, outcome) = Sdk::connect(addr, token).await;
        let (code, reason) = closed(outcome);
        assert_eq!((code, reason.as_str()), (3500, "invalid token"), "{what}");
        // The same token on a seed route: 401 before the upgrade.
        let r = get(addr, &format!("/ws/lobby?token={token}"), &ws_headers()).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        room.still_chatting(what).await;
    }
    // Expired, or not yet valid: error 109 (the SDK fetches a new token).
    for (what, c) in [
        (
            "expired",
            json!({"sub": "mallory", "exp": now() - 10, "aud": AUDIENCE}),
        ),
        (
            "not yet valid",
            json!({"sub": "mallory", "nbf": now() + 600, "aud": AUDIENCE}),
        ),
    ] {
        let (_, outcome) = Sdk::connect(addr, &hs(&c)).await;
        assert_eq!(error_code(outcome), 109, "{what}");
        let r = get(addr, &format!("/ws/lobby?token={}", hs(&c)), &ws_headers()).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        room.still_chatting(what).await;
    }
    // No token at all: Centrifugo closes with 3501, the seed route is 401.
    let mut sdk = Sdk::open(addr).await;
    let (code, _) = closed(sdk.call(json!({"connect": {}})).await);
    assert_eq!(code, 3501);
    let r = get(addr, "/ws/lobby?username=mallory", &ws_headers()).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.error().contains("token"), "{r:?}");
    let r = get(addr, "/ws", &ws_headers()).await;
    assert_eq!(r.status, 401, "the relay too: {r:?}");
    room.still_chatting("no token").await;
    // Good RS256 and ES256 tokens are accepted.
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(data("rsa_private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(data("ec_private.pem")).unwrap()).unwrap();
    for (alg, key) in [(Algorithm::RS256, &rsa), (Algorithm::ES256, &ec)] {
        let (_, outcome) = Sdk::connect(addr, &sign(alg, key, &claims("carol"))).await;
        let Outcome::Reply(r) = outcome else {
            panic!("{alg:?} refused")
        };
        assert_eq!(r["connect"]["expires"], true, "{alg:?}: {r}");
    }
    drop(server);
}

fn ws_headers() -> [&'static str; 4] {
    [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ]
}

#[tokio::test]
async fn seed_routes_take_the_user_from_the_token() {
    let server = server(&[]);
    let addr = server.addr;
    let mut room = Bystanders::new(addr).await;
    // Eve's token with alice's name: 403 before the upgrade.
    let eve = hs(&claims("eve"));
    let r = get(
        addr,
        &format!("/ws/lobby?username=alice&token={eve}"),
        &ws_headers(),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.error().contains("alice"), "{r:?}");
    let mut headers = ws_headers().to_vec();
    let bearer = format!("Authorization: Bearer {eve}");
    headers.push(&bearer);
    let r = get(addr, "/ws/lobby?username=alice", &headers).await;
    assert_eq!(r.status, 403, "bearer: {r:?}");
    room.still_chatting("impersonation").await;
    // With her own name (or none), the Authorization header works.
    let url = format!("ws://{addr}/ws/lobby");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("Authorization", format!("Bearer {eve}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    loop {
        let m = text(&mut ws).await;
        if m["type"] == "user_joined" {
            assert_eq!(m["username"], "eve");
            break;
        }
    }
    // Bob sees her under the token's name.
    loop {
        let m = text(&mut room.bob).await;
        if m["type"] == "user_joined" {
            assert_eq!(m["username"], "eve");
            break;
        }
    }
    room.still_chatting("eve joined").await;
    drop(server);
}

#[tokio::test]
async fn private_and_user_limited_channels_without_rights() {
    let dir = std::env::temp_dir().join(format!("hubbub-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("hubbub.toml");
    std::fs::write(
        &config,
        "[[namespace]]\nname = \"dm\"\nallow_user_limited_channels = true\n",
    )
    .unwrap();
    let server = server(&["--config", config.to_str().unwrap()]);
    let addr = server.addr;
    let mut room = Bystanders::new(addr).await;
    let sub = |user: &str, channel: &str| {
        hs(&json!({"sub": user, "channel": channel, "exp": now() + 3600, "aud": AUDIENCE}))
    };
    let (mut alice, _) = Sdk::connect(addr, &hs(&claims("alice"))).await;
    alice
        .ok(json!({"subscribe": {"channel": "$secret", "token": sub("alice", "$secret")}}))
        .await;
    alice
        .ok(json!({"subscribe": {"channel": "dm:x#alice,bob"}}))
        .await;
    let (mut eve, _) = Sdk::connect(addr, &hs(&claims("eve"))).await;
    // No token, a forged one: 103.
    let r = eve.call(json!({"subscribe": {"channel": "$secret"}})).await;
    assert_eq!(error_code(r), 103);
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"guessed"),
        &json!({"sub": "eve", "channel": "$secret"}),
    );
    let r = eve
        .call(json!({"subscribe": {"channel": "$secret", "token": forged}}))
        .await;
    assert_eq!(error_code(r), 103);
    // Not listed in the user-limited channel: 103; nor may she publish there.
    let r = eve
        .call(json!({"subscribe": {"channel": "dm:x#alice,bob"}}))
        .await;
    assert_eq!(error_code(r), 103);
    for channel in ["dm:x#alice,bob", "$secret"] {
        let r = eve
            .call(json!({"publish": {"channel": channel, "data": {"spam": 1}}}))
            .await;
        assert_eq!(error_code(r), 103, "{channel}");
        let r = eve
            .call(json!({"history": {"channel": channel, "limit": -1}}))
            .await;
        assert_eq!(error_code(r), 103, "{channel}");
    }
    room.still_chatting("refused subscribes").await;
    // The seed routes: no way in.
    for path in ["/ws/%24secret", "/ws/dm:x%23alice,bob"] {
        let r = get(
            addr,
            &format!("{path}?token={}", hs(&claims("eve"))),
            &ws_headers(),
        )
        .await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
    }
    // Alice's token for the channel, presented by eve: 3500.
    let r = eve
        .call(json!({"subscribe": {"channel": "$secret", "token": sub("alice", "$secret")}}))
        .await;
    assert_eq!(closed(r).0, 3500);
    room.still_chatting("stolen subscription token").await;
    // Alice still gets her channels' publications.
    alice
        .ok(json!({"publish": {"channel": "$secret", "data": {"t": "psst"}}}))
        .await;
    let p = alice.publication("$secret").await;
    assert_eq!(p["push"]["pub"]["data"]["t"], "psst");
    assert_eq!(p["push"]["pub"]["info"]["user"], "alice");
    // Bob, listed, joins the dialog by the seed route.
    let url = format!(
        "ws://{addr}/ws/dm:x%23alice,bob?token={}",
        hs(&claims("bob"))
    );
    let (ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    drop(ws);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn hubbub_token_prints_a_token_the_server_accepts() {
    let out = Command::new(BIN)
        .args([
            "token",
            "--user",
            "alice",
            "--ttl",
            "10m",
            "--info",
            r#"{"name":"Alice"}"#,
        ])
        .env("HUBBUB_TOKEN_HMAC_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()),
        &validation,
    )
    .unwrap();
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["info"]["name"], "Alice");
    let exp = data.claims["exp"].as_u64().unwrap();
    assert!((now() + 590..=now() + 610).contains(&exp), "{exp}");
    // Without a secret it says what to set.
    let out = Command::new(BIN)
        .args(["token", "--user", "alice"])
        .env_remove("HUBBUB_TOKEN_HMAC_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HUBBUB_TOKEN_HMAC_SECRET"));
}

#[test]
fn a_warning_when_listening_beyond_loopback_without_auth() {
    use std::io::{BufRead, BufReader};
    // The log up to the `listening` line (the warning comes before it).
    let start_log = |args: &[&str]| -> Vec<String> {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("HUBBUB_STORE", "memory")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            let done = line.contains("listening");
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        lines
    };
    let warned = |log: &[String]| log.iter().any(|l| l.contains("no authentication"));
    let open = start_log(&["--listen", "0.0.0.0:0"]);
    assert!(warned(&open), "{open:?}");
    assert!(open.iter().any(|l| l.contains("WARN")), "{open:?}");
    let secret = ["--listen", "0.0.0.0:0", "--token-hmac-secret", SECRET];
    let secured = start_log(&secret);
    assert!(!warned(&secured), "{secured:?}");
    let local = start_log(&["--listen", "127.0.0.1:0"]);
    assert!(!warned(&local), "{local:?}");
}
