//! The Centrifugo client protocol at `/connection/websocket`, end to end
//! over loopback with a plain WebSocket client (tokio-tungstenite) speaking
//! the JSON protocol: every command, error and close code, ping/pong,
//! multi-command frames, limits, and the rooms shared with seed clients.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hubbub::ServerConfig;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const PATH: &str = "/connection/websocket";

/// A Centrifugo client speaking JSON by hand: every frame is split on `\n`,
/// messages are kept in order, and nothing is answered unless asked.
struct Client {
    ws: Ws,
    /// Messages read and not consumed yet, in order.
    pending: VecDeque<Value>,
    /// How many messages shared each frame read so far.
    frame_sizes: Vec<usize>,
    next_id: u64,
}

enum Event {
    Msg(Value),
    Closed(u16, String),
}

impl Client {
    async fn open(server: &TestServer) -> Self {
        Self {
            ws: connect(server, PATH).await,
            pending: VecDeque::new(),
            frame_sizes: Vec::new(),
            next_id: 0,
        }
    }

    async fn connected(server: &TestServer) -> (Self, String) {
        let mut c = Self::open(server).await;
        let reply = c.call(json!({"connect": {"name": "test"}})).await;
        let client = reply["connect"]["client"].as_str().unwrap().to_owned();
        (c, client)
    }

    async fn send_raw(&mut self, text: &str) {
        within(STEP, "send", self.ws.send(Message::text(text)))
            .await
            .unwrap();
    }

    /// Sends `command` with the next id; returns the id.
    async fn command(&mut self, mut command: Value) -> u64 {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        self.send_raw(&command.to_string()).await;
        self.next_id
    }

    /// Sends `command` and waits for its reply (other messages stay pending).
    async fn call(&mut self, command: Value) -> Value {
        let id = self.command(command).await;
        self.until(|m| m["id"] == json!(id)).await
    }

    async fn read(&mut self) -> Event {
        within(STEP, "next frame", async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let lines: Vec<&str> = t.as_str().split('\n').collect();
                        assert!(lines.iter().all(|l| !l.is_empty()), "empty line in {t:?}");
                        self.frame_sizes.push(lines.len());
                        for line in lines {
                            self.pending.push_back(serde_json::from_str(line).unwrap());
                        }
                        return Event::Msg(self.pending.pop_front().unwrap());
                    }
                    Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                        return Event::Closed(u16::from(code), reason.as_str().to_owned())
                    }
                    Some(Ok(Message::Close(None))) => return Event::Closed(1005, String::new()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) => panic!("unexpected {other:?}"),
                    Some(Err(e)) => panic!("read error: {e}"),
                    None => panic!("stream ended"),
                }
            }
        })
        .await
    }

    /// The next message (a pending one first).
    async fn next(&mut self) -> Value {
        if let Some(m) = self.pending.pop_front() {
            return m;
        }
        match self.read().await {
            Event::Msg(m) => m,
            Event::Closed(code, reason) => panic!("closed {code} {reason:?} while waiting"),
        }
    }

    /// The first message matching `pred`; the others stay pending, in order.
    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            if let Some(i) = self.pending.iter().position(&pred) {
                return self.pending.remove(i).unwrap();
            }
            match self.read().await {
                Event::Msg(m) => self.pending.push_front(m),
                Event::Closed(code, reason) => {
                    panic!("closed {code} {reason:?}; unmatched: {:?}", self.pending)
                }
            }
        }
    }

    /// The next push of `kind` on `channel`.
    async fn push(&mut self, channel: &str, kind: &str) -> Value {
        let m = self
            .until(|m| m["push"]["channel"] == json!(channel) && !m["push"][kind].is_null())
            .await;
        m["push"][kind].clone()
    }

    /// Reads until the close frame; returns its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            self.pending.clear();
            if let Event::Closed(code, reason) = self.read().await {
                return (code, reason);
            }
        }
    }
}

async fn server() -> TestServer {
    TestServer::start(config()).await
}

#[tokio::test]
async fn connect_and_subscribe_in_one_frame_are_answered_in_order_then_the_self_join() {
    let server = server().await;
    let mut c = Client::open(&server).await;
    c.send_raw(concat!(
        r#"{"connect":{"name":"js","version":"1.0"},"id":1}"#,
        "\n",
        r#"{"subscribe":{"channel":"chat:room","join_leave":true,"flag":1},"id":2}"#
    ))
    .await;
    // chat:room's namespace is not configured: 102.
    let first = c.next().await;
    let connect = &first["connect"];
    assert_eq!(first["id"], 1);
    let client = connect["client"].as_str().unwrap().to_owned();
    assert_eq!(client.len(), 36, "a UUID: {client}");
    assert_eq!(connect["ping"], 54);
    assert_eq!(connect["pong"], true);
    assert!(connect["version"].as_str().unwrap().starts_with("hubbub "));
    let second = c.next().await;
    assert_eq!(
        second,
        json!({"id":2,"error":{"code":102,"message":"unknown channel"}})
    );

    // The same in the default namespace: the reply, then the client's own join.
    let mut c = Client::open(&server).await;
    c.send_raw(concat!(
        r#"{"connect":{"name":"js"},"id":1}"#,
        "\n",
        r#"{"subscribe":{"channel":"lobby","join_leave":true,"recoverable":true,"flag":1},"id":2}"#
    ))
    .await;
    let connect = c.next().await;
    let client = connect["connect"]["client"].as_str().unwrap().to_owned();
    let sub = c.next().await;
    assert_eq!(sub["id"], 2);
    let result = &sub["subscribe"];
    assert_eq!(result["recoverable"], true);
    assert_eq!(result["positioned"], true);
    assert_eq!(result["epoch"].as_str().unwrap().len(), 16);
    assert!(result.get("offset").is_none(), "offset 0 is omitted: {sub}");
    let join = c.next().await;
    assert_eq!(
        join,
        json!({"push":{"channel":"lobby","join":{"info":{"client":client}}}})
    );
    // Replies waiting together left in one frame.
    assert!(c.frame_sizes.iter().any(|&n| n > 1), "{:?}", c.frame_sizes);
}

#[tokio::test]
async fn publications_carry_offsets_and_the_publisher_and_reach_every_subscriber() {
    let server = server().await;
    let (mut a, a_id) = Client::connected(&server).await;
    let (mut b, _) = Client::connected(&server).await;
    for c in [&mut a, &mut b] {
        let r = c.call(json!({"subscribe": {"channel": "news"}})).await;
        assert_eq!(r["subscribe"], json!({}), "not positioned unless asked");
    }
    let r = a
        .call(json!({"publish": {"channel": "news", "data": {"text": "one"}}}))
        .await;
    assert_eq!(r["publish"], json!({}));
    a.call(json!({"publish": {"channel": "news", "data": [2, "two"]}}))
        .await;
    for c in [&mut a, &mut b] {
        let one = c.push("news", "pub").await;
        assert_eq!(
            one,
            json!({"data":{"text":"one"},"info":{"client":a_id},"offset":1})
        );
        let two = c.push("news", "pub").await;
        assert_eq!(two["data"], json!([2, "two"]));
        assert_eq!(two["offset"], 2);
    }
    // A publication without data is a bad request; nothing is sent.
    let r = a.call(json!({"publish": {"channel": "news"}})).await;
    assert_eq!(r["error"]["code"], 107);
    // History: limit 0 gives the position only.
    let h = b
        .call(json!({"history": {"channel": "news", "limit": 0}}))
        .await;
    assert_eq!(h["history"]["offset"], 2);
    let epoch = h["history"]["epoch"].as_str().unwrap().to_owned();
    let h = b
        .call(json!({"history": {"channel": "news", "limit": 10, "since": {"offset": 1, "epoch": "other"}}}))
        .await;
    assert_eq!(h["error"]["code"], 112);
    let h = b
        .call(json!({"history": {"channel": "news", "limit": 10, "reverse": true, "since": {"offset": 0, "epoch": epoch}}}))
        .await;
    assert_eq!(h["error"]["code"], 107);
}

#[tokio::test]
async fn recovery_returns_exactly_what_was_missed_or_says_it_cannot() {
    let server = server().await;
    let (mut keeper, keeper_id) = Client::connected(&server).await;
    keeper.call(json!({"subscribe": {"channel": "r"}})).await;
    let (mut a, _) = Client::connected(&server).await;
    let r = a
        .call(json!({"subscribe": {"channel": "r", "recoverable": true}}))
        .await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    keeper
        .call(json!({"publish": {"channel": "r", "data": 1}}))
        .await;
    assert_eq!(a.push("r", "pub").await["offset"], 1);
    a.call(json!({"unsubscribe": {"channel": "r"}})).await;
    // At the top: recovered, offset echoed, nothing to replay.
    let r = a
        .call(json!({"subscribe": {"channel": "r", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(
        r["subscribe"],
        json!({"recoverable":true,"positioned":true,"epoch":epoch,"offset":1,"was_recovering":true,"recovered":true})
    );
    a.call(json!({"unsubscribe": {"channel": "r"}})).await;
    for n in [2, 3] {
        keeper
            .call(json!({"publish": {"channel": "r", "data": {"n": n}}}))
            .await;
    }
    // Two missed while away: recovered with exactly those, in order, then live.
    let r = a
        .call(json!({"subscribe": {"channel": "r", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    let result = &r["subscribe"];
    assert_eq!(result["recovered"], true);
    assert_eq!(result["offset"], 1, "the client's own offset");
    let missed = result["publications"].as_array().unwrap();
    assert_eq!(missed.len(), 2);
    assert_eq!(
        missed[0],
        json!({"data":{"n":2},"info":{"client":keeper_id},"offset":2})
    );
    assert_eq!(missed[1]["offset"], 3);
    keeper
        .call(json!({"publish": {"channel": "r", "data": {"n": 4}}}))
        .await;
    assert_eq!(
        a.push("r", "pub").await["offset"],
        4,
        "live continues at top + 1"
    );
    a.call(json!({"unsubscribe": {"channel": "r"}})).await;
    // Another epoch: not recovered, the current position instead.
    let r = a
        .call(json!({"subscribe": {"channel": "r", "recover": true, "offset": 2, "epoch": "x"}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], Value::Null);
    assert_eq!(r["subscribe"]["was_recovering"], true);
    assert_eq!(r["subscribe"]["offset"], 4);
    assert!(r["subscribe"].get("publications").is_none());
    // history: forward from a position, backwards, limits.
    let h = a
        .call(json!({"history": {"channel": "r", "limit": -1}}))
        .await;
    let offsets = |h: &Value| -> Vec<u64> {
        h["history"]["publications"]
            .as_array()
            .map(|p| p.iter().map(|p| p["offset"].as_u64().unwrap()).collect())
            .unwrap_or_default()
    };
    assert_eq!(offsets(&h), [1, 2, 3, 4]);
    assert_eq!(
        (
            h["history"]["offset"].clone(),
            h["history"]["epoch"].clone()
        ),
        (json!(4), json!(epoch))
    );
    let h = a
        .call(json!({"history": {"channel": "r", "limit": 2, "since": {"offset": 1, "epoch": epoch}}}))
        .await;
    assert_eq!(offsets(&h), [2, 3]);
    let h = a
        .call(json!({"history": {"channel": "r", "limit": 2, "reverse": true, "since": {"offset": 4, "epoch": epoch}}}))
        .await;
    assert_eq!(offsets(&h), [3, 2]);
    let h = a
        .call(json!({"history": {"channel": "r", "limit": 0}}))
        .await;
    assert!(
        h["history"].get("publications").is_none(),
        "limit 0: the position only"
    );
}

#[tokio::test]
async fn recovery_beyond_the_window_is_refused_plainly() {
    let server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            namespaces: hubbub_core::Namespaces {
                default: std::sync::Arc::new(hubbub_core::ChannelOptions {
                    history_size: 2,
                    ..hubbub_core::ChannelOptions::default()
                }),
                ..hubbub_core::Namespaces::default()
            },
            ..config().hub
        },
        ..config()
    })
    .await;
    let (mut keeper, _) = Client::connected(&server).await;
    let r = keeper
        .call(json!({"subscribe": {"channel": "w", "recoverable": true}}))
        .await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        keeper
            .call(json!({"publish": {"channel": "w", "data": n}}))
            .await;
    }
    // Offset 1 was pushed out of a window of 2: recovering from 0 cannot be whole.
    let (mut late, _) = Client::connected(&server).await;
    let r = late
        .call(json!({"subscribe": {"channel": "w", "recover": true, "offset": 0, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["was_recovering"], true);
    assert_eq!(
        r["subscribe"]["recovered"],
        Value::Null,
        "never a partial replay"
    );
    assert_eq!(r["subscribe"]["offset"], 3);
    // From 1 it can: 2 and 3 are still there.
    let (mut other, _) = Client::connected(&server).await;
    let r = other
        .call(json!({"subscribe": {"channel": "w", "recover": true, "offset": 1, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], true);
    assert_eq!(r["subscribe"]["publications"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn errors_have_their_codes_and_affect_nobody_else() {
    let server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            channel_limit: 2,
            ..config().hub
        },
        ..config()
    })
    .await;
    let (mut a, _) = Client::connected(&server).await;
    let (mut b, b_id) = Client::connected(&server).await;
    b.call(json!({"subscribe": {"channel": "x", "join_leave": true}}))
        .await;
    b.push("x", "join").await;
    let code = |r: Value| r["error"]["code"].as_u64().unwrap();
    let first = a.call(json!({"subscribe": {"channel": "x"}})).await;
    assert_eq!(first["subscribe"], json!({}), "{first}");
    assert_eq!(
        code(a.call(json!({"subscribe": {"channel": "x"}})).await),
        105
    );
    let long = "c".repeat(256);
    assert_eq!(
        code(a.call(json!({"subscribe": {"channel": long}})).await),
        107
    );
    assert_eq!(
        code(a.call(json!({"subscribe": {"channel": "nope:x"}})).await),
        102
    );
    assert_eq!(
        code(a.call(json!({"subscribe": {"channel": "$private"}})).await),
        103
    );
    a.call(json!({"subscribe": {"channel": "y"}})).await;
    assert_eq!(
        code(a.call(json!({"subscribe": {"channel": "z"}})).await),
        106
    );
    assert_eq!(
        code(a.call(json!({"rpc": {"method": "nope", "data": {}}})).await),
        104
    );
    assert_eq!(code(a.call(json!({"ping": {}})).await), 108);
    assert_eq!(
        code(
            a.call(json!({"sub_refresh": {"channel": "zz", "token": "t"}}))
                .await
        ),
        103
    );
    assert_eq!(
        a.call(json!({"refresh": {"token": "t"}})).await["refresh"],
        json!({})
    );
    assert_eq!(
        a.call(json!({"unsubscribe": {"channel": "never"}})).await["unsubscribe"],
        json!({})
    );
    // Presence lists both subscribers; all anonymous clients are one user.
    let p = a.call(json!({"presence": {"channel": "x"}})).await;
    let presence = p["presence"]["presence"].as_object().unwrap();
    assert_eq!(presence.len(), 2);
    assert_eq!(presence[&b_id], json!({"client":b_id}));
    let s = a.call(json!({"presence_stats": {"channel": "x"}})).await;
    assert_eq!(s["presence_stats"], json!({"num_clients":2,"num_users":1}));
    // b saw a's join, then sees its leave.
    b.push("x", "join").await;
    a.call(json!({"unsubscribe": {"channel": "x"}})).await;
    let leave = b.push("x", "leave").await;
    assert!(leave["info"]["client"].is_string());
    // b is unaffected by all of a's errors.
    let r = b
        .call(json!({"publish": {"channel": "x", "data": "still here"}}))
        .await;
    assert_eq!(r["publish"], json!({}));
}

async fn closed_after(server: &TestServer, frames: &[&str]) -> (u16, String) {
    let mut c = Client::open(server).await;
    for f in frames {
        c.send_raw(f).await;
    }
    c.closed().await
}

#[tokio::test]
async fn protocol_violations_close_with_centrifugo_codes() {
    let server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            max_command_bytes: 256,
            ..config().hub
        },
        ..config()
    })
    .await;
    let connect = r#"{"connect":{},"id":1}"#;
    for (frames, code, why) in [
        (
            vec![r#"{"subscribe":{"channel":"a"},"id":1}"#],
            3501,
            "a command before connect",
        ),
        (vec!["{}"], 3501, "a pong before connect"),
        (
            vec![connect, r#"{"connect":{},"id":2}"#],
            3501,
            "a second connect",
        ),
        (
            vec![connect, r#"{"publish":{"channel":"a","data":1}}"#],
            3501,
            "an id-less command that is not send",
        ),
        (vec![connect, r#"{"id":5}"#], 3501, "no method"),
        (vec![connect, "{}"], 3501, "a pong with no ping outstanding"),
        (vec![connect, "not json"], 3501, "malformed"),
        (
            vec![connect, r#"{"subscribe":{"channel":""},"id":2}"#],
            3501,
            "empty channel",
        ),
        (
            vec![connect, r#"{"send":{"data":{"hi":1}}}"#],
            3508,
            "send has no handler",
        ),
    ] {
        let (got, reason) = closed_after(&server, &frames).await;
        assert_eq!(got, code, "{why}: {reason}");
        assert!(!reason.starts_with('{'), "plain-text reasons: {reason}");
    }
    // Commands before a malformed line are still answered.
    let mut c = Client::open(&server).await;
    c.send_raw(&format!("{connect}\n{{\"rpc\":{{}},\"id\":2}}\n[oops"))
        .await;
    assert_eq!(c.next().await["id"], 1);
    assert_eq!(c.next().await["error"]["code"], 104);
    assert_eq!(c.closed().await.0, 3501);
    // Oversize frames: 1009; binary frames: 3501.
    let mut c = Client::open(&server).await;
    c.send_raw(connect).await;
    let big = format!(
        r#"{{"publish":{{"channel":"a","data":"{}"}},"id":2}}"#,
        "x".repeat(300)
    );
    c.send_raw(&big).await;
    assert_eq!(c.closed().await.0, 1009);
    let mut c = Client::open(&server).await;
    c.ws.send(Message::binary(connect.as_bytes().to_vec()))
        .await
        .unwrap();
    assert_eq!(c.closed().await, (3501, "bad request".to_owned()));
}

#[tokio::test]
async fn pings_keep_coming_and_a_missing_pong_closes_with_3012() {
    let server = TestServer::start(ServerConfig {
        hub: hubbub_core::Config {
            ping_interval: Duration::from_millis(200),
            pong_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(300),
            // Publishes as fast as round trips go, for 1.5 s.
            command_rate: None,
            ..config().hub
        },
        ..config()
    })
    .await;
    // No connect: stale.
    let mut idle = Client::open(&server).await;
    assert_eq!(idle.closed().await, (3502, "stale".to_owned()));
    // Answering pings keeps a connection alive well past the pong timeout,
    // also while it is busy.
    let (mut live, _) = Client::connected(&server).await;
    let r = live.call(json!({"subscribe": {"channel": "busy"}})).await;
    assert_eq!(r["subscribe"], json!({}));
    let mut pings = 0;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        let id = live
            .command(json!({"publish": {"channel": "busy", "data": 1}}))
            .await;
        loop {
            let m = live.next().await;
            if m == json!({}) {
                pings += 1;
                live.send_raw("{}").await;
            } else if m["id"] == json!(id) {
                break;
            }
        }
    }
    assert!(pings >= 4, "pings flow on a busy connection: {pings}");
    // Silence: 3012, a code the SDKs reconnect on.
    let (mut silent, _) = Client::connected(&server).await;
    assert_eq!(silent.closed().await, (3012, "no pong".to_owned()));
}

#[tokio::test]
async fn seed_and_centrifugo_clients_share_a_room() {
    let server = server().await;
    let mut eren = join(&server, "lobby", "Eren").await;
    let (mut sdk, sdk_id) = Client::connected(&server).await;
    let r = sdk
        .call(json!({"subscribe": {"channel": "lobby", "join_leave": true}}))
        .await;
    assert!(r["error"].is_null(), "{r}");
    sdk.push("lobby", "join").await; // its own
                                     // An anonymous subscriber is invisible to seed presence: Eren hears nothing.
    send_text(&mut eren, "hello").await;
    let chat = next_seed(&mut eren).await;
    assert_eq!(
        (chat.content.as_str(), chat.username.as_str()),
        ("hello", "Eren")
    );
    let eren_id = {
        let p = sdk.push("lobby", "pub").await;
        assert_eq!(p["data"], json!({"text": "hello"}));
        assert_eq!(p["info"]["user"], "Eren");
        assert_eq!(p["offset"], 1);
        p["info"]["client"].as_str().unwrap().to_owned()
    };
    // Presence shows the seed member by its username.
    let p = sdk.call(json!({"presence": {"channel": "lobby"}})).await;
    let presence = &p["presence"]["presence"];
    assert_eq!(presence[&eren_id]["user"], "Eren");
    assert_eq!(presence[&sdk_id], json!({"client": sdk_id}));
    // SDK → seed: text data becomes the chat line; other data its JSON.
    sdk.call(json!({"publish": {"channel": "lobby", "data": {"text": "hi Eren"}}}))
        .await;
    let m = next_seed(&mut eren).await;
    assert_eq!(
        (m.content.as_str(), m.room.as_str(), m.username.as_str()),
        ("hi Eren", "lobby", "")
    );
    sdk.call(json!({"publish": {"channel": "lobby", "data": {"n": 1, "text": 5}}}))
        .await;
    let m = next_seed(&mut eren).await;
    assert_eq!(m.content, r#"{"n":1,"text":5}"#);
    // A seed join and departure reach the SDK subscriber as join/leave.
    let mikasa = join(&server, "lobby", "Mikasa").await;
    let j = sdk.push("lobby", "join").await;
    assert_eq!(j["info"]["user"], "Mikasa");
    drop(mikasa);
    let l = sdk.push("lobby", "leave").await;
    assert_eq!(l["info"]["user"], "Mikasa");
    // Eren's list never showed the anonymous subscriber.
    let list = seed_until(&mut eren, |m| {
        m.kind == hubbub_core::SeedType::OnlineUsers && m.content == "Eren"
    })
    .await;
    assert_eq!(list.content, "Eren");
}

#[tokio::test]
async fn shutdown_closes_centrifugo_clients_with_3001() {
    let mut server = server().await;
    let (mut c, _) = Client::connected(&server).await;
    c.call(json!({"subscribe": {"channel": "a"}})).await;
    let closing = tokio::spawn(async move { c.closed().await });
    server.stop().await;
    assert_eq!(closing.await.unwrap(), (3001, "shutdown".to_owned()));
}

#[tokio::test]
async fn a_lone_subscriber_that_comes_back_recovers_the_channels_stream() {
    let server = server().await;
    let (mut a, _) = Client::connected(&server).await;
    let r = a
        .call(json!({"subscribe": {"channel": "solo", "recoverable": true}}))
        .await;
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_owned();
    a.call(json!({"publish": {"channel": "solo", "data": "mine"}}))
        .await;
    assert_eq!(a.push("solo", "pub").await["offset"], 1);
    // The last member goes: the stream stays (bounded by --idle-streams).
    drop(a);
    let (mut other, _) = Client::connected(&server).await;
    // Publications meanwhile are kept too, for whoever comes back.
    let r = other
        .call(json!({"publish": {"channel": "solo", "data": "while away"}}))
        .await;
    assert_eq!(r["publish"], json!({}));
    let (mut back, _) = Client::connected(&server).await;
    let r = back
        .call(
            json!({"subscribe": {"channel": "solo", "recover": true, "offset": 1, "epoch": epoch}}),
        )
        .await;
    let result = &r["subscribe"];
    assert_eq!(result["recovered"], true, "{r}");
    assert_eq!(result["epoch"], json!(epoch), "the same stream");
    let missed = result["publications"].as_array().unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0]["data"], "while away");
    assert_eq!(missed[0]["offset"], 2);
}
