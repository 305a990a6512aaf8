//! Abuse before the upgrade: cross-origin handshakes, too many connections
//! or handshakes from one address. Each attack gets its answer (403, 429
//! with Retry-After) and a bystander in the same room keeps chatting.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hubbub::limits::IpLimitConfig;
use hubbub::origin::OriginPolicy;
use hubbub::ServerConfig;

/// Two seed clients in `room` who can still talk to each other.
async fn bystanders(server: &TestServer, room: &str) -> (Ws, Ws) {
    let a = join(server, room, "ann").await;
    let b = join(server, room, "bob").await;
    (a, b)
}

async fn still_chatting(a: &mut Ws, b: &mut Ws, line: &str) {
    send_text(a, line).await;
    // (Lines an attacker got through before it may come first.)
    seed_until(b, |m| {
        m.kind == hubbub_core::SeedType::Chat && m.content == line
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_from_another_origin_is_403_and_nobody_else_notices() {
    let mut server = TestServer::start(ServerConfig {
        origins: OriginPolicy::parse_list(&["https://chat.example.com".to_owned()]).unwrap(),
        ..config()
    })
    .await;
    let (mut ann, mut bob) = bystanders(&server, "lobby").await;
    let with_origin = |origin: &'static str| {
        let mut headers = UPGRADE.to_vec();
        headers.push(origin);
        headers
    };

    let r = get(
        server.addr,
        "/ws/lobby?username=mallory",
        &with_origin("Origin: https://evil.example"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.error().contains("origin not allowed"), "{}", r.body);
    let r = get(
        server.addr,
        "/connection/websocket",
        &with_origin("Origin: null"),
    )
    .await;
    assert_eq!(r.status, 403, "a sandboxed page or a file");

    // The allowed site, this server's own pages, and non-browsers get in.
    let allowed = get(
        server.addr,
        "/ws/lobby?username=carol",
        &with_origin("Origin: https://chat.example.com"),
    )
    .await;
    assert_eq!(allowed.status, 101);
    // (The helper's requests say `Host: test`.)
    let mut headers = UPGRADE.to_vec();
    headers.push("Origin: http://test");
    let own_page = get(server.addr, "/connection/websocket", &headers).await;
    assert_eq!(own_page.status, 101, "the server's own chat page");
    let cli = get(server.addr, "/ws/lobby?username=dave", UPGRADE).await;
    assert_eq!(cli.status, 101, "no Origin: not a browser");

    still_chatting(&mut ann, &mut bob, "still here").await;
    let metrics = get(server.addr, "/metrics", &[]).await;
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "hubbub_http_rejections_total{status=\"403\"} 2"),
        "{}",
        metrics.body
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_429_beyond_its_connections_and_handshakes() {
    let mut server = TestServer::start(ServerConfig {
        ip_limits: IpLimitConfig {
            connections_per_ip: 4,
            handshakes_per_ip: 0,
            limit_loopback: true,
        },
        ..config()
    })
    .await;
    let (mut ann, mut bob) = bystanders(&server, "hall").await;
    let mut held = vec![connect(&server, "/ws").await, connect(&server, "/ws").await];
    let r = get(server.addr, "/ws", UPGRADE).await;
    assert_eq!(r.status, 429, "the fifth connection from one address");
    assert!(r.header("retry-after").is_some());
    assert!(r.error().contains("too many connections"), "{}", r.body);
    still_chatting(&mut ann, &mut bob, "unbothered").await;
    // A connection that ends frees its place.
    held.pop();
    let mut admitted = false;
    for _ in 0..50 {
        if get(server.addr, "/ws", UPGRADE).await.status == 101 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a place came free");
    server.stop().await;

    // A handshake flood: 3 a second, bursts of 6.
    let mut server = TestServer::start(ServerConfig {
        ip_limits: IpLimitConfig {
            connections_per_ip: 0,
            handshakes_per_ip: 3,
            limit_loopback: true,
        },
        ..config()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(get(server.addr, "/health", &[]).await.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "plain requests are not handshakes"
    );
    let mut answers = Vec::new();
    for _ in 0..10 {
        let r = get(server.addr, "/ws", UPGRADE).await;
        answers.push((r.status, r.header("retry-after")));
    }
    let refused = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!((3..=4).contains(&refused), "{answers:?}");
    assert!(answers
        .iter()
        .filter(|(s, _)| *s == 429)
        .all(|(_, retry)| retry.as_deref() == Some("1")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_and_oversized_headers_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(config()).await;
    let (mut ann, mut bob) = bystanders(&server, "quiet").await;

    // 40 pipelined requests on one connection: 32 are answered, the last
    // with `Connection: close`, then the server closes it.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let one = "GET /health HTTP/1.1\r\nHost: test\r\n\r\n";
    tcp.write_all(one.repeat(40).as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    within(STEP, "pipelined answers", tcp.read_to_end(&mut answers))
        .await
        .unwrap();
    let answers = String::from_utf8_lossy(&answers);
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK").count(),
        hubbub::server::MAX_REQUESTS_PER_CONNECTION
    );
    assert!(answers.to_ascii_lowercase().contains("connection: close"));

    // A request head beyond 16 KiB is refused, not buffered.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: test\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = within(STEP, "431", tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    still_chatting(&mut ann, &mut bob, "fine").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_are_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(config()).await;
    let (mut ann, mut bob) = bystanders(&server, "strict").await;
    let base = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
    ];
    let with = |extra: &[&'static str]| {
        let mut headers = base.to_vec();
        headers.extend_from_slice(extra);
        headers
    };
    for (headers, why) in [
        (with(&[]), "exactly one Sec-WebSocket-Key"),
        (
            with(&[
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ]),
            "exactly one Sec-WebSocket-Key",
        ),
        (
            with(&["Sec-WebSocket-Key: not-base64!"]),
            "base64 of 16 bytes",
        ),
        (with(&["Sec-WebSocket-Key: aGVsbG8="]), "base64 of 16 bytes"),
        (
            with(&[
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Content-Length: 5",
            ]),
            "no body",
        ),
    ] {
        let r = get(server.addr, "/ws/strict?username=eve", &headers).await;
        assert_eq!(r.status, 400, "{headers:?}: {}", r.body);
        assert!(r.error().contains(why), "{headers:?}: {}", r.body);
    }
    // HTTP/1.0 cannot upgrade.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(
        b"GET /ws/strict?username=eve HTTP/1.0\r\nHost: test\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = within(STEP, "HTTP/1.0 answer", tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains(" 101 "), "{answer}");
    assert!(
        answer.contains(" 400 ") || answer.contains(" 426 "),
        "{answer}"
    );
    still_chatting(&mut ann, &mut bob, "unmoved").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_client_must_not_send_close_with_1002() {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::start(config()).await;
    let (mut ann, mut bob) = bystanders(&server, "rfc").await;
    for (bytes, what) in [
        (vec![0x81, 0x02, b'h', b'i'], "unmasked"),
        (
            {
                let mut f = vec![0x8a, 0x80 | 126, 0, 126, 0, 0, 0, 0];
                f.extend(vec![0u8; 126]);
                f
            },
            "a 126-byte pong",
        ),
    ] {
        let mut raw = RawWs::connect(server.addr, "/ws/rfc?username=eve").await;
        raw.stream.write_all(&bytes).await.unwrap();
        let (close, _) = raw.read_until_close().await;
        assert_eq!(close.close_code(), 1002, "{what}");
    }
    still_chatting(&mut ann, &mut bob, "as before").await;
    server.stop().await;
}

/// Sends `frames` as fast as the socket takes them while reading
/// everything that comes back (so the client is judged for flooding, not
/// for reading slowly); returns the texts read and the close's code and reason.
async fn flood(ws: Ws, frames: Vec<String>) -> (Vec<String>, u16, String) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = ws.split();
    let reader = tokio::spawn(async move {
        let mut texts = Vec::new();
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Text(t) => texts.push(t.as_str().to_owned()),
                Message::Close(Some(f)) => {
                    return (texts, u16::from(f.code), f.reason.as_str().to_owned())
                }
                Message::Close(None) => return (texts, 1005, String::new()),
                _ => {}
            }
        }
        (texts, 0, String::new())
    });
    for frame in frames {
        if sink.send(Message::text(frame)).await.is_err() {
            break; // already closed
        }
        // Thousands of commands a second, and time for replies to drain.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    within(Duration::from_secs(20), "the flooder's close", reader)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flood_gets_111_then_3013_and_the_room_keeps_chatting() {
    let mut server = TestServer::start(config()).await;
    let (mut ann, mut bob) = bystanders(&server, "chat").await;
    let flooder = connect(&server, "/connection/websocket").await;
    // 3,000 publishes into the bystanders' room, 20 to a frame: far over
    // the default 200 a second (bursts of 400). (Frames of hundreds of
    // commands would fill its send queue with replies first: that client
    // is evicted as slow, 3008, before it counts as flooding.)
    let mut frames = vec![r#"{"id":1,"connect":{}}"#.to_owned()];
    for frame in 0..150 {
        let lines: Vec<String> = (0..20)
            .map(|i| {
                let id = 2 + frame * 20 + i;
                format!(
                    r#"{{"id":{id},"publish":{{"channel":"chat","data":{{"input":"spam {id}"}}}}}}"#
                )
            })
            .collect();
        frames.push(lines.join("\n"));
    }
    let (texts, code, reason) = flood(flooder, frames).await;
    assert_eq!(
        (code, reason.as_str()),
        (3013, "too many requests"),
        "persistent flooding closes with 3013"
    );
    let replies: Vec<serde_json::Value> = texts
        .iter()
        .flat_map(|t| t.split('\n'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let limited = replies.iter().filter(|r| r["error"]["code"] == 111).count();
    let accepted = replies
        .iter()
        .filter(|r| r.get("publish").is_some())
        .count();
    assert!(limited > 0, "over the rate: error 111");
    assert!(
        (300..=600).contains(&accepted),
        "about one burst accepted: {accepted}"
    );
    // The room heard the accepted ones and still chats.
    still_chatting(&mut ann, &mut bob, "we are still here").await;
    let metrics = get(server.addr, "/metrics", &[]).await.body;
    assert!(
        metrics.contains("hubbub_closes_total{reason=\"too_many_requests\""),
        "{metrics}"
    );
    let limited_total: u64 = metrics
        .lines()
        .find(|l| l.starts_with("hubbub_commands_limited_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(limited_total >= limited as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_line_flood_is_cut_off_with_1008_and_the_room_keeps_chatting() {
    let mut server = TestServer::start(config()).await;
    let (mut ann, mut bob) = bystanders(&server, "lobby").await;
    let flooder = join(&server, "lobby", "mallory").await;
    let frames = (0..5_000).map(|i| format!("spam {i}")).collect();
    let (_, code, reason) = flood(flooder, frames).await;
    assert_eq!((code, reason.as_str()), (1008, "too many requests"));
    // Ann heard about a burst of it, in order (lines over the rate are
    // dropped, so there may be gaps after the burst), then mallory left.
    let mut heard = Vec::new();
    loop {
        let m = next_seed(&mut ann).await;
        match m.kind {
            hubbub_core::SeedType::Chat => {
                let n: u32 = m.content.strip_prefix("spam ").unwrap().parse().unwrap();
                heard.push(n);
            }
            hubbub_core::SeedType::UserLeft if m.username == "mallory" => break,
            _ => {}
        }
    }
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "in order: {heard:?}");
    assert_eq!(
        heard[..400],
        (0..400).collect::<Vec<_>>()[..],
        "the burst whole"
    );
    assert!(heard.len() <= 700, "{} lines got through", heard.len());
    still_chatting(&mut bob, &mut ann, "quiet again").await;
    server.stop().await;
}
