//! The real `hubbub` binary: flags, bad values, and graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Process, BIN};
use common::*;
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let mut process = Process::start(&["--write-timeout", "2s"]);
    let server_url = |path: &str| format!("ws://{}{}", process.addr, path);
    let mut clients = Vec::new();
    for path in [
        "/ws",
        "/ws/r?username=a",
        "/ws/r?username=b",
        "/ws?username=c",
    ] {
        let (ws, _) = within(
            STEP,
            "connect",
            tokio_tungstenite::connect_async(server_url(path)),
        )
        .await
        .unwrap();
        clients.push(ws);
    }
    let mut raw = RawWs::connect(process.addr, "/ws/r?username=raw").await;
    // Everyone is registered once the last joiner sees its own join.
    for ws in &mut clients[1..3] {
        seed_until(ws, |m| m.content.starts_with("raw")).await;
    }

    let started = Instant::now();
    process.signal("TERM");
    for ws in &mut clients {
        assert_eq!(
            close_of(ws).await,
            (1001, "server shutting down".to_owned())
        );
        assert!(within(STEP, "stream ends", ws.next()).await.is_none());
    }
    // A client that never answers the close does not hold shutdown up for long.
    assert_eq!(raw.read_until_close().await.0.close_code(), 1001);
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = process.wait(Duration::from_secs(10));
        (code, process.full_log())
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // One line per open (id, peer, route) and per close (id, reason, code, duration).
    let has = |words: &[&str]| log.iter().any(|l| words.iter().all(|w| l.contains(w)));
    assert!(
        has(&[
            "connection opened",
            "conn=1 ",
            "peer=127.0.0.1:",
            "route=relay"
        ]),
        "{log:#?}"
    );
    assert!(
        has(&["connection opened", "route=room=\"r\" user=\"raw\""]),
        "{log:#?}"
    );
    let closes = log
        .iter()
        .filter(|l| l.contains("connection closed"))
        .count();
    assert_eq!(closes, 5, "{log:#?}");
    assert!(has(&[
        "connection closed",
        "reason=server_shutdown",
        "code=1001",
        "duration_ms="
    ]));
    assert!(
        has(&["shutdown complete", "closed_for_shutdown=5"]),
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_the_open_files_limit_new_clients_get_503_and_the_server_keeps_serving() {
    // 40 descriptors: half kept back (listener, runtimes, the store, room
    // to answer), 20 sockets for clients, 10 of them WebSockets.
    let mut process = Process::start_with_fd_limit(40, &[]);
    let url = format!("ws://{}/ws/r?username=early", process.addr);
    let (mut early, _) = within(STEP, "connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    seed_until(&mut early, |m| m.content == "early joined the room").await;

    // Far more idle connections than descriptors: past the budget each one
    // is answered 503 at once instead of hanging in the accept queue.
    let mut hogs = Vec::new();
    for _ in 0..80 {
        hogs.push(tokio::net::TcpStream::connect(process.addr).await.unwrap());
    }
    let mut last = hogs.pop().unwrap();
    let answer = within(STEP, "a 503 for the last client", async {
        use tokio::io::AsyncReadExt;
        let mut text = Vec::new();
        last.read_to_end(&mut text).await.unwrap();
        String::from_utf8_lossy(&text).into_owned()
    })
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("server full"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let metrics = within(STEP, "metrics", async {
        loop {
            let r = get(process.addr, "/metrics", &[]).await;
            if r.status == 200 {
                return r.body;
            }
            // Still full: the idle hogs hold their sockets.
            drop(hogs.pop());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let refused: u64 = metrics
        .lines()
        .find(|l| l.starts_with("hubbub_http_rejections_total{status=\"503\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 40, "503s counted: {refused}\n{metrics}");

    // The existing client keeps chatting.
    send_text(&mut early, "still chatting").await;
    let m = seed_until(&mut early, |m| m.kind == hubbub_core::SeedType::Chat).await;
    assert_eq!(m.content, "still chatting");

    // When the pressure ends, new clients are served again.
    drop(hogs);
    let addr = process.addr;
    within(Duration::from_secs(20), "health answers again", async {
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::spawn(get(addr, "/health", &[])),
            );
            if let Ok(Ok(r)) = attempt.await {
                if r.status == 200 {
                    break;
                }
            }
        }
    })
    .await;
    process.signal("TERM");
    assert_eq!(close_of(&mut early).await.0, 1001);
    let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_on_an_idle_server_exits_0_at_once() {
    let mut process = Process::start(&[]);
    assert_eq!(get(process.addr, "/health", &[]).await.status, 200);
    let started = Instant::now();
    process.signal("INT");
    let code = tokio::task::spawn_blocking(move || process.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(started.elapsed() < Duration::from_secs(2));
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run hubbub");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn help_documents_every_flag_and_its_environment_variable() {
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for (flag, env, default) in [
        ("--listen", "HUBBUB_LISTEN", "0.0.0.0:8080"),
        ("--ping-interval", "HUBBUB_PING_INTERVAL", "54s"),
        ("--pong-timeout", "HUBBUB_PONG_TIMEOUT", "60s"),
        ("--write-timeout", "HUBBUB_WRITE_TIMEOUT", "10s"),
        ("--max-message-bytes", "HUBBUB_MAX_MESSAGE_BYTES", "512"),
        ("--send-queue", "HUBBUB_SEND_QUEUE", "256"),
        ("--command-rate", "HUBBUB_COMMAND_RATE", "200"),
        ("--user-publish-rate", "HUBBUB_USER_PUBLISH_RATE", "500"),
        (
            "--user-connection-limit",
            "HUBBUB_USER_CONNECTION_LIMIT",
            "1000",
        ),
        ("--presence-rate", "HUBBUB_PRESENCE_RATE", "20"),
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
        assert!(help.contains(env), "{env} missing:\n{help}");
        assert!(
            help.contains(&format!("[default: {default}]")),
            "{flag} default:\n{help}"
        );
    }
    // Its default comes from the open-files limit, so the help says how.
    assert!(help.contains("--max-connections") && help.contains("HUBBUB_MAX_CONNECTIONS"));
    assert!(help.contains("open-files limit"), "{help}");
}

#[test]
fn bad_values_fail_at_start_with_a_clear_message() {
    for (args, says) in [
        (&["--ping-interval", "10"][..], "missing unit"),
        (&["--pong-timeout", "soon"], "expected a whole number"),
        (&["--write-timeout", "0s"], "greater than zero"),
        (&["--send-queue", "lots"], "--send-queue"),
        (&["--max-connections", "0"], "must be at least 1"),
        (
            &["--ping-interval", "1m", "--pong-timeout", "30s"],
            "ping interval must be shorter than pong timeout",
        ),
        (&["--listen", "nowhere"], "cannot listen on nowhere"),
    ] {
        let (code, text) = run(args);
        assert!(code.is_some_and(|c| c != 0), "{args:?} exited {code:?}");
        assert!(text.contains(says), "{args:?}: {text}");
    }
    // The environment works like the flags.
    let out = Command::new(BIN)
        .env("HUBBUB_PING_INTERVAL", "2x")
        .output()
        .expect("run hubbub");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
}
