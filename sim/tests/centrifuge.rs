//! Centrifugo clients against the real hub, judged by the checker of
//! `hubbub_sim::centrifuge_check`: thousands of seeded random sequences of
//! commands (through the same body the `hub_ops` fuzz target runs), a
//! crowd of clients on shared channels, and planted bugs, each of which a
//! named rule must catch.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use hubbub_core::centrifuge::{Command, SubscribeRequest};
use hubbub_core::{Config, ConnId, Frame, Hub, Input, Output, Route, Timestamp};
use hubbub_sim::centrifuge_check::{Checker, Rule};
use hubbub_sim::rng::SimRng;

#[test]
fn seeded_random_command_sequences_keep_every_rule() {
    let mut rng = SimRng::new(0x00ce_0717_f060);
    for run in 0..3_000u32 {
        let len = usize::try_from(rng.between(64, 2_048)).unwrap();
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        let outcome = std::panic::catch_unwind(|| hubbub_sim::fuzz_targets::hub_ops(&bytes));
        assert!(
            outcome.is_ok(),
            "run {run} (input of {len} bytes) broke a rule"
        );
    }
}

/// A hub with Centrifugo clients, and the checker watching it.
struct Bench {
    hub: Hub,
    checker: Checker,
    now: u64,
    ids: std::collections::BTreeMap<ConnId, u32>,
}

const CHANNELS: &[&str] = &["a", "b"];

impl Bench {
    fn new() -> Self {
        Self {
            hub: Hub::new(Config {
                entropy: 7,
                ..Config::default()
            }),
            checker: Checker::new(),
            now: 0,
            ids: std::collections::BTreeMap::new(),
        }
    }

    /// One step: the input, then the checker judges the (possibly tampered) outputs.
    fn step(
        &mut self,
        input: Input,
        sent: Option<&(ConnId, u32, Command)>,
        tamper: impl FnOnce(&mut Vec<Output>),
    ) -> Result<(), Rule> {
        self.checker.before_step(&self.hub, CHANNELS);
        if let Some((conn, id, command)) = sent {
            self.checker.sent(*conn, *id, command);
        }
        self.now += 1;
        self.hub
            .handle_input(Timestamp::from_millis(self.now), input);
        let mut outputs: Vec<Output> = std::iter::from_fn(|| self.hub.poll_output()).collect();
        tamper(&mut outputs);
        self.checker
            .after_step(&self.hub, &outputs)
            .map_err(|b| b.rule)
    }

    fn open(&mut self, conn: u64) -> ConnId {
        let conn = ConnId(conn);
        self.checker.opened(conn);
        self.step(
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
            None,
            |_| {},
        )
        .unwrap();
        self.command(
            conn,
            r#""connect":{}"#,
            Command::Connect(Default::default()),
            |_| {},
        )
        .unwrap();
        conn
    }

    fn command(
        &mut self,
        conn: ConnId,
        body: &str,
        command: Command,
        tamper: impl FnOnce(&mut Vec<Output>),
    ) -> Result<(), Rule> {
        let id = self.ids.entry(conn).or_insert(0);
        *id += 1;
        let id = *id;
        let frame = Frame::text(format!("{{\"id\":{id},{body}}}"));
        self.step(
            Input::Message { conn, frame },
            Some(&(conn, id, command)),
            tamper,
        )
    }

    fn subscribe(&mut self, conn: ConnId, channel: &str, join_leave: bool) -> Result<(), Rule> {
        self.subscribe_tampered(conn, channel, join_leave, |_| {})
    }

    fn subscribe_tampered(
        &mut self,
        conn: ConnId,
        channel: &str,
        join_leave: bool,
        tamper: impl FnOnce(&mut Vec<Output>),
    ) -> Result<(), Rule> {
        let body = format!(
            r#""subscribe":{{"channel":"{channel}","join_leave":{join_leave},"recoverable":true}}"#
        );
        let command = Command::Subscribe(SubscribeRequest {
            channel: channel.to_owned(),
            join_leave,
            recoverable: true,
            ..SubscribeRequest::default()
        });
        self.command(conn, &body, command, tamper)
    }

    fn publish(
        &mut self,
        conn: ConnId,
        channel: &str,
        tamper: impl FnOnce(&mut Vec<Output>),
    ) -> Result<(), Rule> {
        let body = format!(r#""publish":{{"channel":"{channel}","data":{{"text":"x"}}}}"#);
        let command = Command::Publish {
            channel: channel.to_owned(),
            data: Some(Bytes::from_static(br#"{"text":"x"}"#)),
        };
        self.command(conn, &body, command, tamper)
    }
}

fn payload_of(out: &Output) -> String {
    match out {
        Output::Send { frame, .. } => String::from_utf8_lossy(&frame.payload).into_owned(),
        _ => String::new(),
    }
}

fn replace_payload(out: &mut Output, text: String) {
    if let Output::Send { frame, .. } = out {
        *frame = Frame::text(text);
    }
}

#[test]
fn a_crowd_on_shared_channels_keeps_every_rule() {
    let mut b = Bench::new();
    let mut rng = SimRng::new(42);
    let conns: Vec<ConnId> = (1..=200).map(|c| b.open(c)).collect();
    for step in 0..5_000 {
        let conn = *rng.pick(&conns);
        let channel = *rng.pick(CHANNELS);
        let result = match rng.below(4) {
            0 => b.subscribe(conn, channel, rng.below(2) == 0),
            1 => b.command(
                conn,
                &format!(r#""unsubscribe":{{"channel":"{channel}"}}"#),
                Command::Unsubscribe {
                    channel: channel.to_owned(),
                },
                |_| {},
            ),
            2 => b.command(
                conn,
                &format!(r#""presence":{{"channel":"{channel}"}}"#),
                Command::Presence {
                    channel: channel.to_owned(),
                },
                |_| {},
            ),
            _ => b.publish(conn, channel, |_| {}),
        };
        assert_eq!(result, Ok(()), "step {step}");
    }
}

/// Every planted bug is caught, by the rule that names it.
#[test]
fn planted_bugs_are_caught_by_their_rule() {
    // A lost reply.
    let mut b = Bench::new();
    let x = b.open(1);
    let lost = b.publish(x, "a", |outs| {
        outs.retain(|o| !payload_of(o).contains(r#""publish""#));
    });
    assert_eq!(lost, Err(Rule::OneReply));

    // A reply sent twice.
    let mut b = Bench::new();
    let x = b.open(1);
    let twice = b.subscribe_tampered(x, "a", false, |outs| {
        let reply = outs[0].clone();
        outs.push(reply);
    });
    assert_eq!(twice, Err(Rule::OneReply));

    // A push before the subscribe reply: the self-join moved ahead.
    let mut b = Bench::new();
    let x = b.open(1);
    let early = b.subscribe_tampered(x, "a", true, |outs| outs.swap(0, 1));
    assert_eq!(early, Err(Rule::ReplyBeforePush));

    // A skipped offset, and a repeated one.
    // Offset 3 after 1 is a gap; offset 1 again a repeat.
    for wrong in [3u64, 1] {
        let mut b = Bench::new();
        let x = b.open(1);
        b.subscribe(x, "a", false).unwrap();
        b.publish(x, "a", |_| {}).unwrap();
        let gap = b.publish(x, "a", |outs| {
            for o in outs.iter_mut() {
                let text = payload_of(o);
                if text.contains(r#""pub""#) {
                    let fixed = text.replace(r#""offset":2"#, &format!(r#""offset":{wrong}"#));
                    replace_payload(o, fixed);
                }
            }
        });
        assert_eq!(gap, Err(Rule::Offsets), "offset {wrong} after 1");
    }

    // A presence reply missing a member.
    let mut b = Bench::new();
    let x = b.open(1);
    let y = b.open(2);
    b.subscribe(x, "a", false).unwrap();
    b.subscribe(y, "a", false).unwrap();
    let y_id = b.hub.client_id(y).to_string();
    let presence = b.command(
        x,
        r#""presence":{"channel":"a"}"#,
        Command::Presence {
            channel: "a".to_owned(),
        },
        |outs| {
            let text = payload_of(&outs[0]);
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v["presence"]["presence"]
                .as_object_mut()
                .unwrap()
                .remove(&y_id);
            replace_payload(&mut outs[0], v.to_string());
        },
    );
    assert_eq!(presence, Err(Rule::Presence));

    // A leave lost, and a join duplicated.
    let mut b = Bench::new();
    let x = b.open(1);
    let y = b.open(2);
    b.subscribe(x, "a", true).unwrap();
    b.subscribe(y, "a", false).unwrap();
    let lost_leave = b.step(
        Input::Disconnect {
            conn: y,
            reason: hubbub_core::CloseReason::PeerClosed,
        },
        None,
        |outs| outs.retain(|o| !payload_of(o).contains(r#""leave""#)),
    );
    assert_eq!(lost_leave, Err(Rule::JoinLeave));
    let mut b = Bench::new();
    let x = b.open(1);
    let y = b.open(2);
    b.subscribe(x, "a", true).unwrap();
    let double_join = b.subscribe_tampered(y, "a", false, |outs| {
        let join = outs
            .iter()
            .find(|o| payload_of(o).contains(r#""join""#))
            .unwrap()
            .clone();
        outs.push(join);
    });
    assert_eq!(double_join, Err(Rule::JoinLeave));

    // Output after a close.
    let mut b = Bench::new();
    let x = b.open(1);
    let after = b.step(
        Input::Disconnect {
            conn: x,
            reason: hubbub_core::CloseReason::PeerClosed,
        },
        None,
        |outs| {
            outs.push(Output::Ping { conn: x });
        },
    );
    assert_eq!(after, Err(Rule::AfterClose));

    // A raw newline inside a message.
    let mut b = Bench::new();
    let x = b.open(1);
    let newline = b.subscribe_tampered(x, "a", false, |outs| {
        let text = payload_of(&outs[0]).replace(':', ":\n");
        replace_payload(&mut outs[0], text);
    });
    assert_eq!(newline, Err(Rule::WireFormat));
}
