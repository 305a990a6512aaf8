//! `GET /metrics`: after real traffic over loopback, the figures a user
//! would check are right, and the body is valid Prometheus text (0.0.4).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use hubbub::ServerConfig;
use hubbub_core::{CloseReason, SeedType};
use tokio_tungstenite::tungstenite::Message;

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the samples, and each family's TYPE.
#[derive(Debug)]
struct Exposition {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the one sample called `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    /// A counter or gauge without labels, as an integer.
    fn int(&self, name: &str) -> u64 {
        as_count(self.get(name, &[]))
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn as_count(value: f64) -> u64 {
    assert!(value >= 0.0 && value.fract() == 0.0, "not a count: {value}");
    value as u64
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `{k="v",…}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str, line: &str) -> (BTreeMap<String, String>, String) {
    let mut labels = BTreeMap::new();
    let mut rest = &s[1..];
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after.to_owned());
        }
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(is_name(key), "bad label name {key:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "duplicate label {key} in {line:?}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the text exposition format strictly enough to catch what a
/// Prometheus server would reject: every sample line is `name{labels} value`
/// with a numeric value; every family has one HELP and one TYPE, before its
/// samples; histogram samples are `_bucket` (with `le`), `_sum`, `_count`.
fn parse(text: &str) -> Exposition {
    assert!(
        text.ends_with('\n'),
        "the last line must end with a newline"
    );
    let mut helps = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line in:\n{text}");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "{line:?}");
            assert!(helps.insert(name.to_owned()), "second HELP: {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_name(name), "{line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "second TYPE: {line:?}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..], line)
        } else {
            (BTreeMap::new(), line[name_end..].to_owned())
        };
        let value_text = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(
            !value_text.contains(' '),
            "unexpected timestamp or junk in {line:?}"
        );
        let value: f64 = value_text
            .parse()
            .unwrap_or_else(|_| panic!("value is not a number in {line:?}"));
        // The sample's family: itself, or a histogram it is part of.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family) && helps.contains(family),
            "{name} has no TYPE or HELP before it"
        );
        if types[family] == "histogram" {
            assert_ne!(name, family, "bare histogram sample {line:?}");
            assert_eq!(
                labels.contains_key("le"),
                name.ends_with("_bucket"),
                "{line:?}"
            );
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    assert_eq!(
        helps,
        types.keys().cloned().collect::<BTreeSet<_>>(),
        "every family has both HELP and TYPE"
    );
    for family in types.keys() {
        assert!(
            samples
                .iter()
                .any(|s| s.name == *family || s.name.starts_with(&format!("{family}_"))),
            "{family} has no samples"
        );
    }
    Exposition { samples, types }
}

/// Checks the queue-depth histogram's shape; returns (buckets, count, sum).
fn check_histogram(m: &Exposition) -> (Vec<(String, u64)>, u64, u64) {
    assert_eq!(m.types["hubbub_queue_depth"], "histogram");
    let buckets: Vec<(String, u64)> = m
        .series("hubbub_queue_depth_bucket")
        .iter()
        .map(|s| (s.labels["le"].clone(), as_count(s.value)))
        .collect();
    let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
    assert_eq!(
        les,
        ["0", "1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"]
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets are cumulative: {buckets:?}"
    );
    let count = m.int("hubbub_queue_depth_count");
    assert_eq!(buckets.last().unwrap().1, count, "+Inf bucket == count");
    (buckets, count, m.int("hubbub_queue_depth_sum"))
}

/// GETs /metrics until `settled` holds for what it reports (the hub
/// publishes its counters once it is idle, a moment after the traffic).
async fn scrape_until(addr: SocketAddr, settled: impl Fn(&Exposition) -> bool) -> Exposition {
    within(STEP, "metrics settle", async {
        loop {
            let r = get(addr, "/metrics", &[]).await;
            assert_eq!(r.status, 200, "{r:?}");
            assert_eq!(r.header("content-type").as_deref(), Some(CONTENT_TYPE));
            let m = parse(&r.body);
            if settled(&m) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn close_series(reason: CloseReason) -> [(&'static str, String); 2] {
    [
        ("reason", reason.name().to_owned()),
        ("code", reason.code().0.to_string()),
    ]
}

fn closes(m: &Exposition, reason: CloseReason) -> u64 {
    let [(r, reason), (c, code)] = close_series(reason);
    as_count(m.get("hubbub_closes_total", &[(r, &reason), (c, &code)]))
}

async fn chat_until_echoed(ws: &mut Ws, line: &str) {
    send_text(ws, line).await;
    seed_until(ws, |m| m.kind == SeedType::Chat && m.content == line).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_messages_closes_and_refusals() {
    let mut server = TestServer::start(config()).await;
    let addr = server.addr;

    // Refusals, one of each kind the HTTP layer counts (but 503).
    assert_eq!(get(addr, "/nope", &[]).await.status, 404);
    assert_eq!(request(addr, "POST", "/metrics", &[]).await.status, 405);
    assert_eq!(get(addr, "/ws", &[]).await.status, 426);
    assert_eq!(get(addr, "/ws/lobby", UPGRADE).await.status, 400);

    // Relay: two connections, two messages, each to both.
    let mut r1 = connect(&server, "/ws").await;
    let mut r2 = connect(&server, "/ws").await;
    // Both are in the hub before r1 talks: a handshake returns before the
    // hub has registered the connection, so "one" could otherwise miss r2.
    scrape_until(addr, |m| m.int("hubbub_connections") == 2).await;
    for text in ["one", "two"] {
        send_text(&mut r1, text).await;
        assert_eq!(next_text(&mut r1).await, text);
        assert_eq!(next_text(&mut r2).await, text);
    }

    // Rooms: alice and bob in lobby, carol alone in other.
    let mut alice = join(&server, "lobby", "alice").await;
    let mut bob = join(&server, "lobby", "bob").await;
    let mut carol = join(&server, "other", "carol").await;
    for i in 0..3 {
        let line = format!("hello {i}");
        chat_until_echoed(&mut alice, &line).await;
        seed_until(&mut bob, |m| m.kind == SeedType::Chat && m.content == line).await;
    }
    chat_until_echoed(&mut carol, "anyone?").await;

    // A relay client sends one byte over --max-message-bytes (512): 1009.
    let mut big = RawWs::connect(addr, "/ws").await;
    big.send_frame(true, OP_TEXT, &[b'x'; 513]).await;
    let (close, _) = big.read_until_close().await;
    assert_eq!(close.close_code(), 1009);

    // Writers count their bytes just after the client could read them.
    let m = scrape_until(addr, |m| {
        closes(m, CloseReason::MessageTooBig) == 1
            && m.int("hubbub_bytes_out_total") >= 2 * m.int("hubbub_messages_out_total")
    })
    .await;

    // r1, r2, alice, bob, carol are open; big was opened and closed.
    assert_eq!(m.int("hubbub_connections"), 5);
    assert_eq!(m.int("hubbub_rooms"), 2);
    assert_eq!(m.int("hubbub_connections_opened_total"), 6);
    // 2 relay + 3 lobby + 1 other; the oversize frame never reached the hub.
    assert_eq!(m.int("hubbub_messages_in_total"), 6);
    // relay 2 x 2; alice's join 2 (online_users, user_joined) to 1; bob's 2
    // to 2; carol's 2 to 1; 3 chats to 2; 1 chat to 1.
    let messages_out = m.int("hubbub_messages_out_total");
    assert_eq!(messages_out, 4 + 2 + 4 + 2 + 6 + 1);
    // Every frame has at least a 2-byte header, plus the 1009 close frame.
    assert!(
        m.int("hubbub_bytes_out_total") >= 2 * messages_out,
        "{}",
        m.int("hubbub_bytes_out_total")
    );
    assert_eq!(m.int("hubbub_pings_total"), 0);

    // One series per close reason, with its code; only the 1009 is set.
    let series = m.series("hubbub_closes_total");
    assert_eq!(series.len(), CloseReason::ALL.len());
    for reason in CloseReason::ALL {
        let want = u64::from(reason == CloseReason::MessageTooBig);
        assert_eq!(closes(&m, reason), want, "{reason}");
    }
    for reason in ["slow_consumer", "heartbeat_timeout", "write_timeout"] {
        assert_eq!(
            m.get("hubbub_evictions_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    assert_eq!(m.series("hubbub_evictions_total").len(), 3);

    // Every frame the hub queued was observed at its push (none went to a
    // closing connection here), and found a depth in some bucket.
    let (_, count, _) = check_histogram(&m);
    assert_eq!(count, messages_out);

    for (status, want) in [
        ("400", 1.0),
        ("404", 1.0),
        ("405", 1.0),
        ("426", 1.0),
        ("503", 0.0),
    ] {
        assert_eq!(
            m.get("hubbub_http_rejections_total", &[("status", status)]),
            want,
            "{status}"
        );
    }
    assert_eq!(m.int("hubbub_accept_errors_total"), 0);
    m.int("hubbub_presence_conflated_total");
    let uptime = m.get("hubbub_uptime_seconds", &[]);
    assert!(uptime > 0.0 && uptime < 600.0, "{uptime}");
    for family in [
        "hubbub_connections",
        "hubbub_rooms",
        "hubbub_uptime_seconds",
    ] {
        assert_eq!(m.types[family], "gauge", "{family}");
    }
    for (family, kind) in &m.types {
        if family.ends_with("_total") {
            assert_eq!(kind, "counter", "{family}");
        }
    }

    // A scrape is not a refusal; a wrong method on /metrics is (405 again).
    let r = request(addr, "DELETE", "/metrics", &[]).await;
    assert_eq!((r.status, r.header("allow").as_deref()), (405, Some("GET")));
    let m = scrape_until(addr, |_| true).await;
    assert_eq!(
        m.get("hubbub_http_rejections_total", &[("status", "405")]),
        2.0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_slow_consumer_shows_as_an_eviction_and_in_the_queue_depths() {
    let send_queue = 16;
    let mut server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            send_queue,
            // The sender floods on purpose: no rate limits here.
            command_rate: None,
            user_publish_rate: None,
            ..hubbub_core::Config::default()
        },
        ..config()
    })
    .await;
    let mut fast = join(&server, "flood", "fast").await;
    let slow = RawWs::connect_small_rcvbuf(server.addr, "/ws/flood?username=slow").await;
    let mut sender = join(&server, "flood", "sender").await;
    let reader = tokio::spawn(async move {
        seed_until(&mut fast, |m| {
            m.kind == SeedType::UserLeft && m.username == "slow"
        })
        .await;
        fast
    });
    let line = "x".repeat(400);
    within(Duration::from_secs(60), "slow consumer evicted", async {
        let mut sent = 0;
        while !reader.is_finished() {
            assert!(sent < 200_000, "never evicted");
            // Paced by the sender's own echoes, so only slow falls behind.
            for _ in 0..8 {
                sender.feed(Message::text(line.as_str())).await.unwrap();
            }
            sender.flush().await.unwrap();
            sent += 8;
            for _ in 0..8 {
                seed_until(&mut sender, |m| m.kind == SeedType::Chat).await;
            }
        }
    })
    .await;
    let _fast = reader.await.unwrap();

    let m = scrape_until(server.addr, |m| closes(m, CloseReason::SlowConsumer) == 1).await;
    assert_eq!(
        m.get("hubbub_evictions_total", &[("reason", "slow_consumer")]),
        1.0
    );
    assert_eq!(
        m.get("hubbub_evictions_total", &[("reason", "heartbeat_timeout")]),
        0.0
    );
    assert_eq!(m.int("hubbub_connections"), 2);
    assert_eq!(m.int("hubbub_rooms"), 1);
    // slow's queue filled up: pushes found it holding 16, above the le="8"
    // bucket; the push that found it full is among them.
    let (buckets, count, sum) = check_histogram(&m);
    let le = |bound: &str| buckets.iter().find(|(le, _)| le == bound).unwrap().1;
    assert!(le("8") < le("16"), "{buckets:?}");
    assert!(sum >= 16, "{sum}");
    // Frames to slow after its eviction are never pushed, so at most as many
    // observations as frames the hub addressed.
    assert!(count <= m.int("hubbub_messages_out_total"));
    assert!(count > 0);
    // Its writer is still stuck on the full socket; let it go.
    drop(slow);
    server.stop().await;
}
