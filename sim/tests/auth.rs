//! Tokens on the virtual clock: random runs of connects, subscribes,
//! refreshes, publishes and time passing, with good, forged, expired and
//! misdirected tokens, judged by an oracle that decides on its own who may
//! subscribe where. Invariants, after every step:
//!
//! - no client ever receives a publication of a channel it was not allowed
//!   to subscribe to (or after its subscription expired unrefreshed);
//! - every connect, subscribe, refresh and sub_refresh gets the answer the
//!   oracle expects (reply, error code, or close code);
//! - a connection whose token expired is closed with 3005 exactly
//!   `expired_close_delay` after its expiry unless refreshed, and never
//!   earlier; an unrefreshed subscription gets `unsubscribe` 2501 then.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hubbub_core::auth::{TokenError, TokenVerifier, Tokens};
use hubbub_core::hub::mix64;
use hubbub_core::{
    ChannelOptions, CloseReason, Config, ConnId, Frame, Hub, Input, Namespaces, Output, Route,
    Timestamp,
};
use serde_json::{json, Value};

/// `ok.<claims>` verifies; anything else is a bad signature.
struct Fake;

impl TokenVerifier for Fake {
    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        token
            .strip_prefix("ok.")
            .map(|c| c.as_bytes().to_vec())
            .ok_or(TokenError::Invalid)
    }
}

const DELAY_MS: u64 = 5_000;
const USERS: [&str; 3] = ["alice", "bob", "eve"];
const CHANNELS: [&str; 4] = ["$priv", "dm:x#alice,bob", "open", "$other"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix64(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

/// What the oracle expects a command to get.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    Ok,
    Error(u64),
    Close(u16),
}

#[derive(Debug, Default)]
struct Client {
    user: &'static str,
    connected: bool,
    closed: bool,
    /// Connection expiry, Unix ms.
    exp: Option<u64>,
    /// Channels it may receive publications of, with their expiry.
    allowed: BTreeMap<String, Option<u64>>,
    /// A subscribe in flight: channel and expiry, once answered Ok.
    pending_sub: BTreeMap<u64, (String, Option<u64>)>,
    next_id: u64,
}

struct Run {
    hub: Hub,
    rng: Rng,
    now: u64,
    clients: BTreeMap<u64, Client>,
    next_conn: u64,
    publications: u64,
}

fn token(claims: &Value) -> String {
    format!("ok.{claims}")
}

impl Run {
    fn new(seed: u64) -> Self {
        let mut named = BTreeMap::new();
        named.insert(
            "dm".to_owned(),
            Arc::new(ChannelOptions {
                allow_user_limited_channels: true,
                ..ChannelOptions::default()
            }),
        );
        let hub = Hub::new(Config {
            tokens: Tokens::new(Fake),
            expired_close_delay: Duration::from_millis(DELAY_MS),
            // The heartbeat is not under test: slower than any run.
            ping_interval: Duration::from_secs(86_400),
            pong_timeout: Duration::from_secs(2 * 86_400),
            connect_timeout: Duration::from_secs(86_400),
            namespaces: Namespaces {
                named,
                ..Namespaces::default()
            },
            entropy: seed,
            ..Config::default()
        });
        Self {
            hub,
            rng: Rng(seed),
            now: 1_700_000_000_000,
            clients: BTreeMap::new(),
            next_conn: 1,
            publications: 0,
        }
    }

    fn secs(&self) -> u64 {
        self.now / 1000
    }

    /// A token expiry: within a minute, already past, or none.
    fn exp(&mut self) -> (Option<u64>, bool) {
        match self.rng.below(6) {
            0 => (None, false),
            1 => (Some(self.secs().saturating_sub(1)), true),
            _ => (Some(self.secs() + 1 + self.rng.below(60)), false),
        }
    }

    /// Sends `command` from `conn`; checks what came back against `expect`.
    fn command(&mut self, conn: u64, mut command: Value, expect: &Expect) -> Option<Value> {
        let c = self.clients.get_mut(&conn).unwrap();
        c.next_id += 1;
        let id = c.next_id;
        command["id"] = id.into();
        self.hub.handle_input(
            Timestamp::from_millis(self.now),
            Input::Message {
                conn: ConnId(conn),
                frame: Frame::text(command.to_string()),
            },
        );
        let (replies, close) = self.drain();
        let reply = replies
            .get(&conn)
            .and_then(|r| r.iter().find(|m| m["id"] == id).cloned());
        let got = match (&reply, close.get(&conn)) {
            (_, Some(code)) => Expect::Close(*code),
            (Some(r), None) if r.get("error").is_some() => {
                Expect::Error(r["error"]["code"].as_u64().unwrap())
            }
            (Some(_), None) => Expect::Ok,
            (None, None) => panic!("no answer to {command}"),
        };
        assert_eq!(&got, expect, "{command} at {}: {reply:?}", self.now);
        reply
    }

    /// Drains the hub's outputs, checking every push against the oracle.
    /// Returns the replies per connection and the close codes.
    fn drain(&mut self) -> (BTreeMap<u64, Vec<Value>>, BTreeMap<u64, u16>) {
        let mut replies: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
        let mut closes = BTreeMap::new();
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, frame, .. } => {
                    let c = self.clients.get_mut(&conn.0).unwrap();
                    assert!(!c.closed, "nothing after the close");
                    for line in frame.payload.split(|&b| b == b'\n') {
                        let m: Value = serde_json::from_slice(line).unwrap();
                        let push = &m["push"];
                        let channel = push["channel"].as_str().unwrap_or("");
                        if push.get("pub").is_some() {
                            assert!(
                                c.allowed.contains_key(channel),
                                "{} ({}) received a publication of {channel}, which it may \
                                 not read; it may read {:?}",
                                conn,
                                c.user,
                                c.allowed
                            );
                        } else if push.get("unsubscribe").is_some() {
                            assert_eq!(push["unsubscribe"]["code"], 2501);
                            let exp = c.allowed.remove(channel).flatten();
                            let at = exp.expect("only expiring subscriptions end") * 1000;
                            assert_eq!(self.now, at + DELAY_MS, "2501 {channel} on time");
                        } else if let Some(id) = m.get("id").and_then(Value::as_u64) {
                            // A successful subscribe opens its channel at once.
                            if let Some((channel, exp)) = c.pending_sub.remove(&id) {
                                if m.get("subscribe").is_some() {
                                    c.allowed.insert(channel, exp);
                                }
                            }
                            replies.entry(conn.0).or_default().push(m);
                        }
                    }
                }
                Output::Close { conn, reason } => {
                    let c = self.clients.get_mut(&conn.0).unwrap();
                    assert!(!c.closed);
                    c.closed = true;
                    c.allowed.clear();
                    closes.insert(conn.0, reason.code().0);
                }
                Output::Ping { .. } => {}
            }
        }
        (replies, closes)
    }

    fn live(&mut self, connected: bool) -> Option<u64> {
        let ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.closed && c.connected == connected)
            .map(|(&id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| *self.rng.pick(&ids))
    }

    fn connect(&mut self) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let user = *self.rng.pick(&USERS);
        self.hub.handle_input(
            Timestamp::from_millis(self.now),
            Input::Open {
                conn: ConnId(conn),
                route: Route::Centrifuge,
            },
        );
        self.clients.insert(
            conn,
            Client {
                user,
                ..Client::default()
            },
        );
        let (exp, expired) = self.exp();
        let forged = self.rng.below(8) == 0;
        let (tok, expect) = if forged {
            ("forged".to_owned(), Expect::Close(3500))
        } else if expired {
            (token(&json!({"sub": user, "exp": exp})), Expect::Error(109))
        } else {
            (token(&json!({"sub": user, "exp": exp})), Expect::Ok)
        };
        self.command(conn, json!({"connect": {"token": tok}}), &expect);
        if expect == Expect::Ok {
            let c = self.clients.get_mut(&conn).unwrap();
            c.connected = true;
            c.exp = exp;
        } else if !forged {
            // Left unconnected: closed here so the run moves on.
            self.hub.handle_input(
                Timestamp::from_millis(self.now),
                Input::Disconnect {
                    conn: ConnId(conn),
                    reason: CloseReason::PeerClosed,
                },
            );
            self.drain();
        }
    }

    fn subscribe(&mut self, conn: u64) {
        let channel = *self.rng.pick(&CHANNELS);
        let c = &self.clients[&conn];
        let user = c.user;
        if c.allowed.contains_key(channel) || c.pending_sub.values().any(|(ch, _)| ch == channel) {
            return;
        }
        let (exp, expired) = self.exp();
        let other_user = *self.rng.pick(&USERS);
        let other_channel = *self.rng.pick(&CHANNELS);
        let (tok, expect) = match self.rng.below(6) {
            0 => (None, None),
            1 => (Some("forged".to_owned()), Some(Expect::Error(103))),
            2 => {
                let t = token(&json!({"sub": other_user, "channel": other_channel, "exp": exp}));
                let matches = other_user == user && other_channel == channel;
                let e = if !matches {
                    Expect::Close(3500)
                } else if expired {
                    Expect::Error(109)
                } else {
                    Expect::Ok
                };
                (Some(t), Some(e))
            }
            _ => {
                let t = token(&json!({"sub": user, "channel": channel, "exp": exp}));
                (
                    Some(t),
                    Some(if expired {
                        Expect::Error(109)
                    } else {
                        Expect::Ok
                    }),
                )
            }
        };
        let expect = expect.unwrap_or_else(|| {
            // No token: the channel's own rules.
            let open = if channel.starts_with('$') {
                false
            } else if let Some((_, users)) = channel.rsplit_once('#') {
                users.split(',').any(|u| u == user)
            } else {
                true
            };
            if open {
                Expect::Ok
            } else {
                Expect::Error(103)
            }
        });
        let granted_exp = if tok.is_some() { exp } else { None };
        let c = self.clients.get_mut(&conn).unwrap();
        c.pending_sub
            .insert(c.next_id + 1, (channel.to_owned(), granted_exp));
        let mut cmd = json!({"subscribe": {"channel": channel}});
        if let Some(t) = tok {
            cmd["subscribe"]["token"] = t.into();
        }
        self.command(conn, cmd, &expect);
    }

    fn refresh(&mut self, conn: u64) {
        let user = self.clients[&conn].user;
        let (exp, expired) = self.exp();
        let (tok, expect) = match self.rng.below(5) {
            0 => ("forged".to_owned(), Expect::Close(3500)),
            1 => {
                let other = *self.rng.pick(&USERS);
                let e = if other != user {
                    Expect::Close(3500)
                } else if expired {
                    Expect::Close(3005)
                } else {
                    Expect::Ok
                };
                (token(&json!({"sub": other, "exp": exp})), e)
            }
            _ => (
                token(&json!({"sub": user, "exp": exp})),
                if expired {
                    Expect::Close(3005)
                } else {
                    Expect::Ok
                },
            ),
        };
        self.command(conn, json!({"refresh": {"token": tok}}), &expect);
        if expect == Expect::Ok {
            self.clients.get_mut(&conn).unwrap().exp = exp;
        }
    }

    fn sub_refresh(&mut self, conn: u64) {
        let c = &self.clients[&conn];
        let user = c.user;
        let Some(channel) = c
            .allowed
            .iter()
            .filter(|(_, exp)| exp.is_some())
            .map(|(ch, _)| ch.clone())
            .next()
        else {
            return;
        };
        let (exp, expired) = self.exp();
        let (tok, expect) = if self.rng.below(5) == 0 {
            ("forged".to_owned(), Expect::Close(3500))
        } else {
            let e = if expired {
                Expect::Error(109)
            } else {
                Expect::Ok
            };
            (
                token(&json!({"sub": user, "channel": channel, "exp": exp})),
                e,
            )
        };
        self.command(
            conn,
            json!({"sub_refresh": {"channel": channel, "token": tok}}),
            &expect,
        );
        if expect == Expect::Ok {
            self.clients
                .get_mut(&conn)
                .unwrap()
                .allowed
                .insert(channel, exp);
        }
    }

    fn publish(&mut self, conn: u64) {
        let channel = *self.rng.pick(&CHANNELS);
        self.publications += 1;
        let cmd = json!({"publish": {"channel": channel, "data": {"n": self.publications}}});
        let c = &self.clients[&conn];
        // Private and user-limited channels: only their subscribers.
        let expect = if channel.starts_with('$') || channel.contains('#') {
            if c.allowed.contains_key(channel) {
                Expect::Ok
            } else {
                Expect::Error(103)
            }
        } else {
            Expect::Ok
        };
        self.command(conn, cmd, &expect);
    }

    /// Time passes; expiries come due exactly on time.
    fn advance(&mut self) {
        let step = self.rng.below(15_000);
        let to = self.now + step;
        // Walk through every deadline on the way, in order.
        let mut deadlines: Vec<u64> = self
            .clients
            .values()
            .filter(|c| !c.closed)
            .flat_map(|c| c.exp.iter().chain(c.allowed.values().flatten()).copied())
            .map(|s| s * 1000 + DELAY_MS)
            .filter(|&at| at > self.now && at <= to)
            .collect();
        deadlines.sort_unstable();
        deadlines.push(to);
        for at in deadlines {
            // Just before: nothing expires early.
            self.now = at - 1;
            self.hub.handle_timeout(Timestamp::from_millis(self.now));
            let (_, closes) = self.drain();
            assert!(
                closes.is_empty(),
                "closed early at {}: {closes:?}",
                self.now
            );
            self.now = at;
            self.hub.handle_timeout(Timestamp::from_millis(self.now));
            let (_, closes) = self.drain();
            for (conn, code) in closes {
                let c = &self.clients[&conn];
                assert_eq!(code, 3005, "{conn}");
                assert_eq!(c.exp.map(|s| s * 1000 + DELAY_MS), Some(self.now));
            }
        }
        // Every expiry due is acted on.
        for (conn, c) in &self.clients {
            if c.closed {
                continue;
            }
            assert!(
                c.exp.is_none_or(|s| s * 1000 + DELAY_MS > self.now),
                "{conn} not closed at {}",
                self.now
            );
            assert!(
                c.allowed
                    .values()
                    .flatten()
                    .all(|&s| s * 1000 + DELAY_MS > self.now),
                "{conn} still subscribed past expiry"
            );
        }
    }

    fn step(&mut self) {
        match self.rng.below(10) {
            0 | 1 => self.connect(),
            2 | 3 => {
                if let Some(conn) = self.live(true) {
                    self.subscribe(conn);
                }
            }
            4 | 5 => {
                if let Some(conn) = self.live(true) {
                    self.publish(conn);
                }
            }
            6 => {
                if let Some(conn) = self.live(true) {
                    self.refresh(conn);
                }
            }
            7 => {
                if let Some(conn) = self.live(true) {
                    self.sub_refresh(conn);
                }
            }
            _ => self.advance(),
        }
    }
}

#[test]
fn no_publication_reaches_a_client_that_may_not_read_it() {
    let mut delivered = 0;
    for seed in 0..150 {
        let mut run = Run::new(seed);
        for _ in 0..250 {
            run.step();
        }
        delivered += run.publications;
    }
    assert!(delivered > 1_000, "the runs publish: {delivered}");
}

/// Lines the hub sent to `conn`, parsed.
fn sent_to(outputs: &[Output], conn: ConnId) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame, .. } if *c == conn => Some(frame),
            _ => None,
        })
        .flat_map(|f| {
            std::str::from_utf8(&f.payload)
                .unwrap()
                .split('\n')
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn token_info_is_shown_as_conn_info_and_chan_info() {
    let mut hub = Hub::new(Config {
        tokens: Tokens::new(Fake),
        ..Config::default()
    });
    let now = Timestamp::from_millis(1_700_000_000_000);
    let mut outputs = Vec::new();
    let feed = |hub: &mut Hub, input: Input, outputs: &mut Vec<Output>| {
        hub.handle_input(now, input);
        while let Some(o) = hub.poll_output() {
            outputs.push(o);
        }
    };
    let text = |conn: ConnId, s: String| Input::Message {
        conn,
        frame: Frame::text(s.into_bytes()),
    };
    let (alice, bob) = (ConnId(1), ConnId(2));
    for (conn, claims) in [
        (alice, json!({"sub": "alice", "info": {"name": "Alice"}})),
        (bob, json!({"sub": "bob"})),
    ] {
        feed(
            &mut hub,
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
            &mut outputs,
        );
        let connect = json!({"id": 1, "connect": {"token": token(&claims)}});
        feed(&mut hub, text(conn, connect.to_string()), &mut outputs);
    }
    // Bob listens with join/leave pushes; alice joins with a subscription
    // token carrying her role in the channel.
    let sub = json!({"id": 2, "subscribe": {"channel": "news", "join_leave": true}});
    feed(&mut hub, text(bob, sub.to_string()), &mut outputs);
    let sub_token = token(&json!({"sub": "alice", "channel": "news", "info": {"role": "editor"}}));
    let sub = json!({"id": 2, "subscribe": {"channel": "news", "token": sub_token}});
    feed(&mut hub, text(alice, sub.to_string()), &mut outputs);
    let publish = json!({"id": 3, "publish": {"channel": "news", "data": {"t": 1}}});
    feed(&mut hub, text(alice, publish.to_string()), &mut outputs);
    let presence = json!({"id": 4, "presence": {"channel": "news"}});
    feed(&mut hub, text(bob, presence.to_string()), &mut outputs);
    let history = json!({"id": 5, "history": {"channel": "news", "limit": 10}});
    feed(&mut hub, text(bob, history.to_string()), &mut outputs);

    let to_bob = sent_to(&outputs, bob);
    let expected = json!({"name": "Alice"});
    let role = json!({"role": "editor"});
    let join = to_bob
        .iter()
        .find(|m| m["push"]["join"]["info"]["user"] == "alice")
        .unwrap();
    assert_eq!(
        join["push"]["join"]["info"]["conn_info"], expected,
        "{join}"
    );
    assert_eq!(join["push"]["join"]["info"]["chan_info"], role, "{join}");
    let publication = to_bob
        .iter()
        .find(|m| m["push"]["pub"].is_object())
        .unwrap();
    assert_eq!(publication["push"]["pub"]["info"]["user"], "alice");
    assert_eq!(publication["push"]["pub"]["info"]["conn_info"], expected);
    assert_eq!(publication["push"]["pub"]["info"]["chan_info"], role);
    let presence = to_bob.iter().find(|m| m["id"] == 4).unwrap();
    let members = presence["presence"]["presence"].as_object().unwrap();
    let alice_entry = members.values().find(|v| v["user"] == "alice").unwrap();
    assert_eq!(alice_entry["conn_info"], expected, "{presence}");
    let bob_entry = members.values().find(|v| v["user"] == "bob").unwrap();
    assert!(bob_entry.get("conn_info").is_none(), "bob has no info");
    let history = to_bob.iter().find(|m| m["id"] == 5).unwrap();
    assert_eq!(
        history["history"]["publications"][0]["info"]["conn_info"], expected,
        "{history}"
    );
}
