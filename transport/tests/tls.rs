//! TLS end to end, with a certificate made in the test (rcgen) and clients
//! that trust it: the seed routes and the Centrifugo route over `wss://`,
//! `/health` over `https://`, and bad files refused at start, naming them.
//! `idle_memory_per_connection_tls_vs_plain` (ignored: run it with
//! `--ignored --nocapture`) measures the binary's idle RSS per connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub::tls::TlsFiles;
use rustls_pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

struct Cert {
    dir: PathBuf,
    files: TlsFiles,
    connector: TlsConnector,
}

/// A self-signed certificate for `localhost`, its files, and a client that trusts it.
fn cert(name: &str) -> Cert {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("hubbub-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(made.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Cert {
        dir,
        files,
        connector: TlsConnector::from(Arc::new(config)),
    }
}

async fn tls(cert: &Cert, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let tcp = within(STEP, "tcp", TcpStream::connect(addr)).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    within(STEP, "tls handshake", cert.connector.connect(name, tcp))
        .await
        .unwrap()
}

async fn wss(cert: &Cert, addr: std::net::SocketAddr, path: &str) -> Wss {
    let stream = tls(cert, addr).await;
    let url = format!("wss://localhost:{}{path}", addr.port());
    let (ws, _) = within(
        STEP,
        "ws handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .unwrap();
    ws
}

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        match within(STEP, "next frame", ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str().lines().next().unwrap()).unwrap()
            }
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn until(ws: &mut Wss, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = next_json(ws).await;
        if pred(&m) {
            return m;
        }
    }
}

#[tokio::test]
async fn seed_and_centrifugo_clients_chat_over_wss_and_health_answers_over_https() {
    let cert = cert("chat");
    let mut server = TestServer::start(hubbub::ServerConfig {
        tls: Some(cert.files.clone()),
        ..config()
    })
    .await;
    let addr = server.addr;
    let mut alice = wss(&cert, addr, "/ws/lobby?username=alice").await;
    until(&mut alice, |m| {
        m["type"] == "user_joined" && m["username"] == "alice"
    })
    .await;
    let mut bob = wss(&cert, addr, "/ws/lobby?username=bob").await;
    until(&mut bob, |m| {
        m["type"] == "user_joined" && m["username"] == "bob"
    })
    .await;

    let mut sdk = wss(&cert, addr, "/connection/websocket").await;
    sdk.send(Message::text(r#"{"id":1,"connect":{}}"#))
        .await
        .unwrap();
    until(&mut sdk, |m| m["id"] == 1).await;
    sdk.send(Message::text(r#"{"id":2,"subscribe":{"channel":"lobby"}}"#))
        .await
        .unwrap();
    until(&mut sdk, |m| m["id"] == 2 && m["subscribe"].is_object()).await;

    // Several messages, so idle waits and reads one byte ahead are crossed many times.
    for i in 0..20 {
        bob.send(Message::text(format!("hello {i}"))).await.unwrap();
        let line = format!("hello {i}");
        until(&mut alice, |m| {
            m["type"] == "chat" && m["content"] == line.as_str()
        })
        .await;
        let p = until(&mut sdk, |m| m["push"]["pub"].is_object()).await;
        assert_eq!(p["push"]["pub"]["data"], json!({"text": line}));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sdk.send(Message::text(
        r#"{"id":3,"publish":{"channel":"lobby","data":{"text":"from sdk"}}}"#,
    ))
    .await
    .unwrap();
    until(&mut alice, |m| {
        m["type"] == "chat" && m["content"] == "from sdk"
    })
    .await;

    // https: /health.
    let mut stream = tls(&cert, addr).await;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    within(STEP, "https response", stream.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(r#"{"status":"ok"}"#), "{text}");

    server.stop().await;
    let _ = std::fs::remove_dir_all(&cert.dir);
}

#[tokio::test]
async fn bad_certificate_files_stop_the_server_naming_the_file() {
    let cert = cert("bad");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let missing = TlsFiles {
        cert: cert.dir.join("missing.pem"),
        key: cert.files.key.clone(),
    };
    let config = hubbub::ServerConfig {
        tls: Some(missing),
        ..config()
    };
    let e = hubbub::serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let garbage = cert.dir.join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let e = hubbub::tls::load(&TlsFiles {
        cert: cert.files.cert.clone(),
        key: garbage,
    })
    .err()
    .unwrap();
    assert!(e.contains("--tls-key") && e.contains("garbage.pem"), "{e}");
    let e = hubbub::tls::load(&TlsFiles {
        cert: cert.files.key.clone(),
        key: cert.files.key.clone(),
    })
    .err()
    .unwrap();
    assert!(e.contains("--tls-cert"), "{e}");

    // The binary refuses to start, exit code 2, the file named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hubbub"))
        .args(["--listen", "127.0.0.1:0", "--store", "memory", "--tls-cert"])
        .arg(cert.dir.join("nope.pem"))
        .arg("--tls-key")
        .arg(&cert.files.key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&cert.dir);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Opens `n` idle seed connections (each in its own room) to the binary and
/// returns the RSS growth per connection in bytes.
async fn idle_cost(cert: Option<&Cert>, n: usize) -> u64 {
    let mut args = vec!["--shards", "1"];
    let (c, k);
    if let Some(cert) = cert {
        c = cert.files.cert.display().to_string();
        k = cert.files.key.display().to_string();
        args.extend(["--tls-cert", &c, "--tls-key", &k]);
    }
    let server = process::Process::start(&args);
    let pid = server.child.id();
    // Warm up the allocator and runtime with a few, then measure `n` more.
    let mut keep_plain = Vec::new();
    let mut keep_tls = Vec::new();
    let mut before = 0;
    for (round, count) in [50, n].into_iter().enumerate() {
        before = rss_kib(pid);
        for i in 0..count {
            let path = format!("/ws/r{round}x{i}?username=u{i}");
            match cert {
                Some(cert) => keep_tls.push(wss(cert, server.addr, &path).await),
                None => {
                    let url = format!("ws://{}{path}", server.addr);
                    keep_plain.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
                }
            }
        }
        // Let every welcome be written and the connections go idle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = rss_kib(pid);
    server.signal("TERM");
    after.saturating_sub(before) * 1024 / n as u64
}

#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn idle_memory_per_connection_tls_vs_plain() {
    let n = 2000;
    let cert = cert("idle");
    let plain = idle_cost(None, n).await;
    let tls = idle_cost(Some(&cert), n).await;
    println!("idle RSS per connection over {n}: plain {plain} B, TLS {tls} B");
    let _ = std::fs::remove_dir_all(&cert.dir);
}
