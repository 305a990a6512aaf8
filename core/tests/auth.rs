//! Tokens on virtual time: connection and subscription tokens, expiry and
//! refresh, private and user-limited channels, with a fake verifier (the
//! core never checks a signature: the driver's verifier does).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use hubbub_core::auth::{TokenError, TokenVerifier, Tokens};
use hubbub_core::{
    ChannelOptions, CloseReason, Config, ConnId, DataFormat, Frame, Hub, Input, Namespaces, Output,
    Route, Timestamp,
};
use serde_json::{json, Value};

/// Accepts `ok.<claims JSON>`; everything else is a bad signature.
struct Fake;

impl TokenVerifier for Fake {
    fn verify(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        token
            .strip_prefix("ok.")
            .map(|claims| claims.as_bytes().to_vec())
            .ok_or(TokenError::Invalid)
    }
}

fn token(claims: &Value) -> String {
    format!("ok.{claims}")
}

fn config() -> Config {
    let mut named = std::collections::BTreeMap::new();
    named.insert(
        "dm".to_owned(),
        Arc::new(ChannelOptions {
            allow_user_limited_channels: true,
            ..ChannelOptions::default()
        }),
    );
    named.insert(
        "obj".to_owned(),
        Arc::new(ChannelOptions {
            publication_data_format: DataFormat::JsonObject,
            ..ChannelOptions::default()
        }),
    );
    named.insert(
        "members".to_owned(),
        Arc::new(ChannelOptions {
            allow_subscribe_for_anonymous: false,
            ..ChannelOptions::default()
        }),
    );
    Config {
        tokens: Tokens::new(Fake),
        expired_close_delay: Duration::from_secs(5),
        namespaces: Namespaces {
            named,
            ..Namespaces::default()
        },
        ..Config::default()
    }
}

#[derive(Debug, Default)]
struct Got {
    frames: Vec<Value>,
    close: Option<CloseReason>,
}

fn drain(hub: &mut Hub, conn: u64) -> Got {
    let mut got = Got::default();
    while let Some(o) = hub.poll_output() {
        match o {
            Output::Send { conn: c, frame, .. } if c == ConnId(conn) => {
                for line in frame.payload.split(|&b| b == b'\n') {
                    got.frames.push(serde_json::from_slice(line).unwrap());
                }
            }
            Output::Close { conn: c, reason } if c == ConnId(conn) => got.close = Some(reason),
            _ => {}
        }
    }
    got
}

fn send(hub: &mut Hub, t: u64, conn: u64, frame: &str) -> Got {
    hub.handle_input(
        Timestamp::from_millis(t),
        Input::Message {
            conn: ConnId(conn),
            frame: Frame::text(frame.to_owned()),
        },
    );
    drain(hub, conn)
}

fn open(hub: &mut Hub, t: u64, conn: u64) {
    hub.handle_input(
        Timestamp::from_millis(t),
        Input::Open {
            conn: ConnId(conn),
            route: Route::Centrifuge,
        },
    );
}

fn connect(hub: &mut Hub, t: u64, conn: u64, claims: Option<&Value>) -> Got {
    open(hub, t, conn);
    let cmd = match claims {
        Some(c) => json!({"id": 1, "connect": {"token": token(c)}}),
        None => json!({"id": 1, "connect": {}}),
    };
    send(hub, t, conn, &cmd.to_string())
}

fn reply(got: &Got, id: u64) -> &Value {
    got.frames
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no reply {id} in {got:?}"))
}

/// Runs the hub's timers up to `t`.
fn tick(hub: &mut Hub, t: u64, conn: u64) -> Got {
    hub.handle_timeout(Timestamp::from_millis(t));
    drain(hub, conn)
}

#[test]
fn a_connection_token_names_the_user_and_its_expiry() {
    let mut hub = Hub::new(config());
    let got = connect(
        &mut hub,
        1_000_000,
        1,
        Some(&json!({"sub": "alice", "exp": 1_060})),
    );
    let r = reply(&got, 1);
    assert_eq!(r["connect"]["expires"], true, "{r}");
    assert_eq!(r["connect"]["ttl"], 60);
    let got = send(
        &mut hub,
        1_000_001,
        1,
        r#"{"id":2,"subscribe":{"channel":"room"}}
{"id":3,"presence":{"channel":"room"}}"#,
    );
    let presence = &reply(&got, 3)["presence"]["presence"];
    let info = presence.as_object().unwrap().values().next().unwrap();
    assert_eq!(info["user"], "alice");
}

#[test]
fn bad_missing_and_expired_connection_tokens() {
    let mut hub = Hub::new(config());
    // Not signed by the key: 3500, terminal.
    open(&mut hub, 0, 1);
    let got = send(&mut hub, 0, 1, r#"{"id":1,"connect":{"token":"forged"}}"#);
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
    assert_eq!(CloseReason::InvalidToken.code().0, 3500);
    // Claims of the wrong shape are as bad as a bad signature.
    open(&mut hub, 0, 2);
    let got = send(&mut hub, 0, 2, r#"{"id":1,"connect":{"token":"ok.[1]"}}"#);
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
    // A subscription token is not a connection token.
    let got = connect(&mut hub, 0, 3, Some(&json!({"sub": "a", "channel": "$x"})));
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
    // No token, anonymous connections not allowed: 3501.
    let got = connect(&mut hub, 0, 4, None);
    assert_eq!(got.close, Some(CloseReason::BadRequest));
    // Expired, or not yet valid: 109, and the connection may try again.
    let got = connect(&mut hub, 10_000, 5, Some(&json!({"sub": "a", "exp": 10})));
    assert_eq!(reply(&got, 1)["error"]["code"], 109);
    assert_eq!(got.close, None);
    let got = send(
        &mut hub,
        10_000,
        5,
        &json!({"id": 2, "connect": {"token": token(&json!({"sub": "a", "nbf": 11}))}}).to_string(),
    );
    assert_eq!(reply(&got, 2)["error"]["code"], 109);
    let got = send(
        &mut hub,
        10_000,
        5,
        &json!({"id": 3, "connect": {"token": token(&json!({"sub": "a", "exp": 11}))}}).to_string(),
    );
    assert_eq!(reply(&got, 3)["connect"]["ttl"], 1);
}

#[test]
fn anonymous_connections_when_allowed_and_without_a_verifier() {
    let mut hub = Hub::new(Config {
        allow_anonymous: true,
        ..config()
    });
    let got = connect(&mut hub, 0, 1, None);
    assert!(reply(&got, 1)["connect"]["client"].is_string());
    // Anonymous users are refused where the namespace says so.
    let got = send(
        &mut hub,
        0,
        1,
        r#"{"id":2,"subscribe":{"channel":"members:x"}}"#,
    );
    assert_eq!(reply(&got, 2)["error"]["code"], 103);
    // Without a verifier, tokens are not looked at (as before tokens existed).
    let mut hub = Hub::new(Config::default());
    open(&mut hub, 0, 1);
    let got = send(&mut hub, 0, 1, r#"{"id":1,"connect":{"token":"anything"}}"#);
    assert!(reply(&got, 1)["connect"].get("expires").is_none());
    let got = send(
        &mut hub,
        0,
        1,
        r#"{"id":2,"subscribe":{"channel":"$x","token":"ok.{}"}}"#,
    );
    assert_eq!(reply(&got, 2)["error"]["code"], 103);
}

#[test]
fn an_unrefreshed_connection_is_closed_with_3005_after_the_delay() {
    // A heartbeat slower than the test, so expiry is what closes it.
    let mut hub = Hub::new(Config {
        ping_interval: Duration::from_secs(500),
        pong_timeout: Duration::from_secs(1000),
        ..config()
    });
    connect(&mut hub, 0, 1, Some(&json!({"sub": "a", "exp": 30})));
    // Refreshed at 20 s with a token good until 100 s.
    let got = send(
        &mut hub,
        20_000,
        1,
        &json!({"id": 2, "refresh": {"token": token(&json!({"sub": "a", "exp": 100}))}})
            .to_string(),
    );
    assert_eq!(reply(&got, 2)["refresh"]["ttl"], 80);
    for t in (30_000..=104_000).step_by(1_000) {
        let got = tick(&mut hub, t, 1);
        assert_eq!(got.close, None, "open at {t} ms (expires 100 s, delay 5 s)");
    }
    let got = tick(&mut hub, 105_000, 1);
    assert_eq!(got.close, Some(CloseReason::ConnectionExpired));
    assert_eq!(CloseReason::ConnectionExpired.code().0, 3005);
}

#[test]
fn refresh_for_another_user_or_expired() {
    let mut hub = Hub::new(config());
    connect(&mut hub, 0, 1, Some(&json!({"sub": "a", "exp": 30})));
    let got = send(
        &mut hub,
        1_000,
        1,
        &json!({"id": 2, "refresh": {"token": token(&json!({"sub": "b", "exp": 100}))}})
            .to_string(),
    );
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
    connect(&mut hub, 0, 2, Some(&json!({"sub": "a", "exp": 30})));
    let got = send(
        &mut hub,
        31_000,
        2,
        &json!({"id": 2, "refresh": {"token": token(&json!({"sub": "a", "exp": 31}))}}).to_string(),
    );
    assert_eq!(got.close, Some(CloseReason::ConnectionExpired));
    connect(&mut hub, 0, 3, Some(&json!({"sub": "a", "exp": 30})));
    let got = send(&mut hub, 1, 3, r#"{"id":2,"refresh":{"token":"forged"}}"#);
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
}

fn sub_token(user: &str, channel: &str, exp: u64) -> String {
    token(&json!({"sub": user, "channel": channel, "exp": exp}))
}

#[test]
fn private_channels_take_a_subscription_token_and_nothing_else() {
    let mut hub = Hub::new(config());
    connect(&mut hub, 0, 1, Some(&json!({"sub": "alice"})));
    connect(&mut hub, 0, 2, Some(&json!({"sub": "eve"})));
    let sub = |id: u64, channel: &str, token: &str| {
        json!({"id": id, "subscribe": {"channel": channel, "token": token}}).to_string()
    };
    // Eve: no token, a forged one, an expired one, then one for another
    // channel or user (which ends her connection).
    let got = send(
        &mut hub,
        0,
        2,
        r#"{"id":2,"subscribe":{"channel":"$secret"}}"#,
    );
    assert_eq!(reply(&got, 2)["error"]["code"], 103);
    let got = send(&mut hub, 0, 2, &sub(3, "$secret", "forged"));
    assert_eq!(reply(&got, 3)["error"]["code"], 103);
    let got = send(
        &mut hub,
        0,
        2,
        &sub(4, "$secret", &sub_token("eve", "$secret", 0)),
    );
    assert_eq!(reply(&got, 4)["error"]["code"], 109);
    // Alice subscribes with her token and publishes.
    let got = send(
        &mut hub,
        0,
        1,
        &sub(2, "$secret", &sub_token("alice", "$secret", 100)),
    );
    assert_eq!(reply(&got, 2)["subscribe"]["expires"], true);
    assert_eq!(reply(&got, 2)["subscribe"]["ttl"], 100);
    // Eve cannot publish into it or read its history or presence.
    for (id, cmd) in [
        (5, r#"{"publish":{"channel":"$secret","data":{"t":1}}}"#),
        (6, r#"{"history":{"channel":"$secret","limit":-1}}"#),
        (7, r#"{"presence":{"channel":"$secret"}}"#),
    ] {
        let mut v: Value = serde_json::from_str(cmd).unwrap();
        v["id"] = id.into();
        let got = send(&mut hub, 1, 2, &v.to_string());
        assert_eq!(reply(&got, id)["error"]["code"], 103, "{cmd}");
    }
    let got = send(
        &mut hub,
        1,
        1,
        r#"{"id":3,"publish":{"channel":"$secret","data":{"t":1}}}"#,
    );
    assert!(reply(&got, 3).get("publish").is_some());
    let got = send(
        &mut hub,
        1,
        2,
        &sub(8, "$secret", &sub_token("eve", "$other", 100)),
    );
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
    assert!(
        got.frames.iter().all(|f| f.get("push").is_none()),
        "{got:?}"
    );
    connect(&mut hub, 0, 3, Some(&json!({"sub": "eve"})));
    let got = send(
        &mut hub,
        1,
        3,
        &sub(2, "$secret", &sub_token("alice", "$secret", 100)),
    );
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
}

#[test]
fn an_unrefreshed_subscription_gets_unsubscribe_2501() {
    let mut hub = Hub::new(config());
    connect(&mut hub, 0, 1, Some(&json!({"sub": "alice"})));
    let cmd =
        json!({"id": 2, "subscribe": {"channel": "$s", "token": sub_token("alice", "$s", 10)}});
    send(&mut hub, 0, 1, &cmd.to_string());
    let cmd =
        json!({"id": 3, "sub_refresh": {"channel": "$s", "token": sub_token("alice", "$s", 20)}});
    let got = send(&mut hub, 9_000, 1, &cmd.to_string());
    assert_eq!(reply(&got, 3)["sub_refresh"]["ttl"], 11);
    let got = tick(&mut hub, 24_999, 1);
    assert!(got.frames.is_empty(), "{got:?}");
    let got = tick(&mut hub, 25_000, 1);
    assert_eq!(got.frames[0]["push"]["channel"], "$s", "{got:?}");
    assert_eq!(got.frames[0]["push"]["unsubscribe"]["code"], 2501);
    assert_eq!(got.close, None);
    // No longer subscribed: publications no longer reach it.
    connect(&mut hub, 25_000, 2, Some(&json!({"sub": "alice"})));
    let cmd =
        json!({"id": 2, "subscribe": {"channel": "$s", "token": sub_token("alice", "$s", 100)}});
    send(&mut hub, 25_000, 2, &cmd.to_string());
    send(
        &mut hub,
        25_000,
        2,
        r#"{"id":3,"publish":{"channel":"$s","data":{}}}"#,
    );
    hub.handle_timeout(Timestamp::from_millis(25_001));
    let got = drain(&mut hub, 1);
    assert!(got.frames.is_empty(), "{got:?}");
    // A sub_refresh for a channel it is not in: 103; with a bad token: 3500.
    let cmd =
        json!({"id": 4, "sub_refresh": {"channel": "$s", "token": sub_token("alice", "$s", 200)}});
    let got = send(&mut hub, 26_000, 1, &cmd.to_string());
    assert_eq!(reply(&got, 4)["error"]["code"], 103);
    let got = send(
        &mut hub,
        26_000,
        2,
        r#"{"id":5,"sub_refresh":{"channel":"$s","token":"forged"}}"#,
    );
    assert_eq!(got.close, Some(CloseReason::InvalidToken));
}

#[test]
fn user_limited_channels_admit_the_users_they_list() {
    let mut hub = Hub::new(Config {
        allow_anonymous: true,
        ..config()
    });
    connect(&mut hub, 0, 1, Some(&json!({"sub": "alice"})));
    connect(&mut hub, 0, 2, Some(&json!({"sub": "eve"})));
    connect(&mut hub, 0, 3, None);
    let ch = "dm:chat#alice,bob";
    let sub = |id: u64| json!({"id": id, "subscribe": {"channel": ch}}).to_string();
    assert!(reply(&send(&mut hub, 0, 1, &sub(2)), 2)
        .get("subscribe")
        .is_some());
    assert_eq!(
        reply(&send(&mut hub, 0, 2, &sub(2)), 2)["error"]["code"],
        103
    );
    assert_eq!(
        reply(&send(&mut hub, 0, 3, &sub(2)), 2)["error"]["code"],
        103
    );
    let publish = json!({"id": 3, "publish": {"channel": ch, "data": {}}}).to_string();
    assert_eq!(
        reply(&send(&mut hub, 0, 2, &publish), 3)["error"]["code"],
        103
    );
    // Without the namespace option, `#` is an ordinary character.
    assert!(reply(
        &send(
            &mut hub,
            0,
            2,
            r##"{"id":4,"subscribe":{"channel":"x#alice"}}"##
        ),
        4
    )
    .get("subscribe")
    .is_some());
}

#[test]
fn publication_data_format_json_object() {
    let mut hub = Hub::new(config());
    connect(&mut hub, 0, 1, Some(&json!({"sub": "alice"})));
    let got = send(
        &mut hub,
        0,
        1,
        r#"{"id":2,"publish":{"channel":"obj:x","data":"text"}}"#,
    );
    assert_eq!(reply(&got, 2)["error"]["code"], 107);
    let got = send(
        &mut hub,
        0,
        1,
        r#"{"id":3,"publish":{"channel":"obj:x","data":{"t":1}}}"#,
    );
    assert!(reply(&got, 3).get("publish").is_some(), "{got:?}");
}

#[test]
fn the_channels_claim_subscribes_at_connect() {
    let mut hub = Hub::new(config());
    let got = connect(
        &mut hub,
        0,
        1,
        Some(&json!({"sub": "alice", "channels": ["news", "$alerts"]})),
    );
    let pushed: Vec<&Value> = got
        .frames
        .iter()
        .filter(|f| f["push"].get("subscribe").is_some())
        .map(|f| &f["push"]["channel"])
        .collect();
    assert_eq!(pushed, ["news", "$alerts"], "{got:?}");
    let got = connect(
        &mut hub,
        0,
        2,
        Some(&json!({"sub": "a", "channels": ["nope:x"]})),
    );
    assert_eq!(reply(&got, 1)["error"]["code"], 102);
}
