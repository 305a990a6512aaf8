//! The oracle for Centrifugo clients: what each one must see, judged from
//! what it sent and what it read, against the hub's membership.
//!
//! The checker sees a step as the driver does: the commands sent, then the
//! outputs of the hub call, then the hub's query API. After every step it
//! enforces:
//!
//! | invariant | rule |
//! |---|---|
//! | [`Rule::OneReply`] | every command id gets exactly one reply, in the step it was handled (the hub answers synchronously), unless the connection closed |
//! | [`Rule::ReplyBeforePush`] | a channel's `pub` / `join` / `leave` pushes come only after that channel's successful subscribe reply, and never after its unsubscribe |
//! | [`Rule::Offsets`] | per subscriber, a channel's offsets rise by exactly one, with no gap or repeat, continuing from the subscribe reply's position when it had one (and through the publications a recovered reply carries) |
//! | [`Rule::Presence`] | a `presence` reply lists exactly the channel's members; `presence_stats` counts them |
//! | [`Rule::JoinLeave`] | a subscriber that asked for join/leave sees exactly one `join` per member that arrived and one `leave` per member that left while it was there, itself included on arrival |
//! | [`Rule::AfterClose`] | nothing reaches a connection after its close |
//! | [`Rule::WireFormat`] | every message is one compact JSON object, with no raw newline |
//!
//! Planted bugs (tests/centrifuge.rs) check that each rule can fail.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use hubbub_core::centrifuge::Command;
use hubbub_core::{ConnId, Hub, Output};
use serde::de::IgnoredAny;
use serde::Deserialize;

/// One rule of the Centrifugo protocol the checker enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    OneReply,
    ReplyBeforePush,
    Offsets,
    Presence,
    JoinLeave,
    AfterClose,
    WireFormat,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::OneReply => "one-reply-per-command",
            Self::ReplyBeforePush => "reply-before-push",
            Self::Offsets => "offsets-contiguous",
            Self::Presence => "presence-equals-members",
            Self::JoinLeave => "one-join-one-leave",
            Self::AfterClose => "nothing-after-close",
            Self::WireFormat => "wire-format",
        })
    }
}

/// A broken rule and what broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breach {
    pub rule: Rule,
    pub detail: String,
}

impl fmt::Display for Breach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)
    }
}

fn breach(rule: Rule, detail: String) -> Breach {
    Breach { rule, detail }
}

#[derive(Debug, Default)]
struct Sub {
    /// The last offset seen (or the reply's position).
    last_offset: Option<u64>,
    join_leave: bool,
}

/// What one Centrifugo connection asked and saw.
#[derive(Debug, Default)]
struct ConnView {
    /// Command ids sent and not answered, with the command's kind.
    pending: BTreeMap<u32, Kind>,
    /// Channels with a subscribe in flight: the command id and whether join/leave was asked.
    subscribing: BTreeMap<String, (u32, bool)>,
    subscribed: BTreeMap<String, Sub>,
    closed: bool,
    /// Join / leave pushes read in the current step, per channel: client ids.
    joins: BTreeMap<String, Vec<String>>,
    leaves: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Subscribe(String),
    Unsubscribe(String),
    Presence(String),
    PresenceStats(String),
    Other,
}

/// The checker for every Centrifugo connection of one hub.
#[derive(Debug, Default)]
pub struct Checker {
    conns: BTreeMap<ConnId, ConnView>,
    /// Channel members (client ids) before the step, for join/leave
    /// accounting; the buffers are reused from step to step.
    before: Vec<(String, Vec<ConnId>)>,
    /// The same channels' members after the step (reused buffers).
    after: Vec<Vec<ConnId>>,
    /// Replies may come in a later step: the hub waits for an external
    /// engine's answer (a subscribe for the stream's position, a publish
    /// for its offset). Each command still gets exactly one reply.
    replies_may_wait: bool,
    /// Channels that ever had members on other nodes (a delivering
    /// engine's recording): their join/leave pushes are not judged.
    remote_channels: BTreeSet<String>,
}

/// What the checker reads of a server message: a reply (`id`, with
/// `error` or one result) or a push. Decoded straight into these types,
/// borrowing from the frame, instead of into a `serde_json::Value` tree:
/// every field the rules need is typed, the rest is skipped (but still
/// has to be valid JSON).
#[derive(Debug, Deserialize)]
struct Message<'a> {
    id: Option<u32>,
    error: Option<IgnoredAny>,
    subscribe: Option<SubscribeResult>,
    #[serde(borrow)]
    presence: Option<PresenceResult<'a>>,
    presence_stats: Option<PresenceStatsResult>,
    #[serde(borrow)]
    push: Option<Push<'a>>,
}

#[derive(Debug, Deserialize)]
struct SubscribeResult {
    /// Present when the channel is positioned (recoverable or recovering).
    epoch: Option<IgnoredAny>,
    offset: Option<u64>,
    #[serde(default)]
    publications: Vec<Positioned>,
}

/// A publication, as far as the rules look at it: its offset.
#[derive(Debug, Deserialize)]
struct Positioned {
    offset: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PresenceResult<'a> {
    #[serde(borrow, default)]
    presence: BTreeMap<Cow<'a, str>, IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct PresenceStatsResult {
    #[serde(default)]
    num_clients: u64,
}

#[derive(Debug, Deserialize)]
struct Push<'a> {
    #[serde(borrow, default)]
    channel: Cow<'a, str>,
    #[serde(rename = "pub")]
    publication: Option<Positioned>,
    #[serde(borrow)]
    join: Option<JoinLeave<'a>>,
    #[serde(borrow)]
    leave: Option<JoinLeave<'a>>,
}

#[derive(Debug, Deserialize)]
struct JoinLeave<'a> {
    #[serde(borrow)]
    info: ClientInfo<'a>,
}

#[derive(Debug, Deserialize)]
struct ClientInfo<'a> {
    #[serde(borrow, default)]
    client: Cow<'a, str>,
}

/// A step's decoded messages, one per distinct frame: a broadcast is one
/// shared buffer for all its recipients, so it is decoded (and its wire
/// format judged) once per step instead of once per recipient.
#[derive(Default)]
struct Parsed<'a> {
    frames: Vec<(&'a [u8], Rc<Message<'a>>)>,
}

impl<'a> Parsed<'a> {
    fn get(&mut self, conn: ConnId, payload: &'a [u8]) -> Result<Rc<Message<'a>>, Breach> {
        if let Some((_, msg)) = self.frames.iter().find(|(b, _)| *b == payload) {
            return Ok(Rc::clone(msg));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|_| breach(Rule::WireFormat, format!("{conn}: non-UTF-8 frame")))?;
        if text.contains('\n') {
            return Err(breach(
                Rule::WireFormat,
                format!("{conn}: raw newline in {text:?}"),
            ));
        }
        // A derived struct would also take a JSON array: insist on an object.
        if !text.starts_with('{') {
            return Err(breach(
                Rule::WireFormat,
                format!("{conn}: not a JSON object: {text:?}"),
            ));
        }
        let msg: Message<'a> = serde_json::from_str(text)
            .map_err(|e| breach(Rule::WireFormat, format!("{conn}: {e}: {text:?}")))?;
        let msg = Rc::new(msg);
        self.frames.push((payload, Rc::clone(&msg)));
        Ok(msg)
    }
}

impl Checker {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// For a hub on an external engine, whose replies may wait for the
    /// engine's answer, in a later step.
    #[must_use]
    pub fn with_replies_that_may_wait() -> Self {
        Self {
            replies_may_wait: true,
            ..Self::default()
        }
    }

    /// A Centrifugo connection was opened.
    pub fn opened(&mut self, conn: ConnId) {
        self.conns.entry(conn).or_default();
    }

    #[must_use]
    pub fn is_tracked(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Call before the hub handles the step's input: remembers the members
    /// of `channels` (the ones the step may change).
    pub fn before_step(&mut self, hub: &Hub, channels: &[&str]) {
        let same = self.before.len() == channels.len()
            && self.before.iter().zip(channels).all(|((n, _), c)| n == c);
        if !same {
            self.before = channels
                .iter()
                .map(|c| ((*c).to_owned(), Vec::new()))
                .collect();
            self.after = vec![Vec::new(); channels.len()];
        }
        for (channel, members) in &mut self.before {
            members.clear();
            members.extend(hub.room_members(channel));
            if hub.remote_members(channel).next().is_some() {
                self.remote_channels.insert(channel.clone());
            }
        }
    }

    /// The members of each channel given to [`Checker::before_step`], as
    /// they were then.
    pub fn members_before(&self) -> impl Iterator<Item = (&str, &[ConnId])> {
        self.before.iter().map(|(c, m)| (c.as_str(), m.as_slice()))
    }

    /// Each of those channels: its name, its members before the step and
    /// after it (valid once [`Checker::after_step`] has run).
    pub fn members_around(&self) -> impl Iterator<Item = (&str, &[ConnId], &[ConnId])> {
        self.before
            .iter()
            .zip(&self.after)
            .map(|((c, b), a)| (c.as_str(), b.as_slice(), a.as_slice()))
    }

    /// `conn` sent `command` with `id` (0 for `send`).
    pub fn sent(&mut self, conn: ConnId, id: u32, command: &Command) {
        let Some(view) = self.conns.get_mut(&conn) else {
            return;
        };
        if view.closed || id == 0 {
            return;
        }
        let kind = match command {
            Command::Subscribe(s) => {
                view.subscribing
                    .entry(s.channel.clone())
                    .or_insert((id, s.join_leave));
                Kind::Subscribe(s.channel.clone())
            }
            Command::Unsubscribe { channel } => Kind::Unsubscribe(channel.clone()),
            Command::Presence { channel } => Kind::Presence(channel.clone()),
            Command::PresenceStats { channel } => Kind::PresenceStats(channel.clone()),
            _ => Kind::Other,
        };
        view.pending.insert(id, kind);
    }

    /// Judges the outputs of one hub step, then what the step left behind.
    ///
    /// # Errors
    /// The first rule broken.
    pub fn after_step(&mut self, hub: &Hub, outputs: &[Output]) -> Result<(), Breach> {
        let mut parsed = Parsed::default();
        for out in outputs {
            let conn = out.conn();
            let Some(view) = self.conns.get_mut(&conn) else {
                continue;
            };
            if view.closed {
                return Err(breach(
                    Rule::AfterClose,
                    format!("{out:?} after {conn}'s close"),
                ));
            }
            match out {
                Output::Close { .. } => {
                    view.closed = true;
                    view.pending.clear();
                }
                Output::Ping { .. } => {}
                Output::Send { frame, .. } => {
                    let msg = parsed.get(conn, &frame.payload)?;
                    Self::message(hub, conn, view, &msg)?;
                }
            }
        }
        for (&conn, view) in &mut self.conns {
            if !view.closed && !self.replies_may_wait {
                if let Some((id, kind)) = view.pending.first_key_value() {
                    return Err(breach(
                        Rule::OneReply,
                        format!("{conn}'s command {id} ({kind:?}) got no reply in its step"),
                    ));
                }
            }
        }
        self.check_join_leave(hub)
    }

    fn message(
        hub: &Hub,
        conn: ConnId,
        view: &mut ConnView,
        msg: &Message<'_>,
    ) -> Result<(), Breach> {
        if let Some(id) = msg.id {
            let Some(kind) = view.pending.remove(&id) else {
                return Err(breach(
                    Rule::OneReply,
                    format!("{conn} got a reply to {id}, which is not pending: {msg:?}"),
                ));
            };
            let ok = msg.error.is_none();
            match kind {
                Kind::Subscribe(channel) => {
                    let asked = view.subscribing.remove(&channel);
                    if ok {
                        let Some((_, join_leave)) = asked else {
                            return Err(breach(
                                Rule::OneReply,
                                format!("{conn}: unexpected subscribe reply {msg:?}"),
                            ));
                        };
                        let Some(result) = &msg.subscribe else {
                            return Err(breach(
                                Rule::OneReply,
                                format!("{conn}: a subscribe reply without its result: {msg:?}"),
                            ));
                        };
                        let mut last_offset =
                            result.epoch.as_ref().map(|_| result.offset.unwrap_or(0));
                        // A recovered subscribe echoes the client's position
                        // and carries what it missed: live pushes continue
                        // after the last of those.
                        for p in &result.publications {
                            match (last_offset, p.offset) {
                                (Some(last), Some(o)) if o != last + 1 => {
                                    return Err(breach(
                                        Rule::Offsets,
                                        format!("{conn} recovering {channel:?}: offset {o} after {last}"),
                                    ));
                                }
                                (_, o) => last_offset = o,
                            }
                        }
                        view.subscribed.insert(
                            channel,
                            Sub {
                                last_offset,
                                join_leave,
                            },
                        );
                    }
                }
                Kind::Unsubscribe(channel) => {
                    view.subscribed.remove(&channel);
                }
                Kind::Presence(channel) if ok => {
                    let got: BTreeSet<&str> = msg
                        .presence
                        .iter()
                        .flat_map(|p| p.presence.keys().map(AsRef::as_ref))
                        .collect();
                    // With a delivering engine, the members on other nodes too.
                    let want: BTreeSet<String> = hub
                        .room_members(&channel)
                        .map(|c| hub.client_id(c).to_string())
                        .chain(hub.remote_members(&channel).map(|m| m.client.to_string()))
                        .collect();
                    if !got.iter().copied().eq(want.iter().map(String::as_str)) {
                        return Err(breach(
                            Rule::Presence,
                            format!("{conn}: presence of {channel:?} is {got:?}, members {want:?}"),
                        ));
                    }
                }
                Kind::PresenceStats(channel) if ok => {
                    let got = msg.presence_stats.as_ref().map_or(0, |s| s.num_clients);
                    let want = (hub.room_members(&channel).count()
                        + hub.remote_members(&channel).count())
                        as u64;
                    if got != want {
                        return Err(breach(
                            Rule::Presence,
                            format!(
                                "{conn}: presence_stats of {channel:?} says {got}, members {want}"
                            ),
                        ));
                    }
                }
                _ => {}
            }
            return Ok(());
        }
        let Some(push) = &msg.push else {
            return Ok(()); // a ping
        };
        let channel: &str = &push.channel;
        let Some(sub) = view.subscribed.get_mut(channel) else {
            return Err(breach(
                Rule::ReplyBeforePush,
                format!("{conn} got a push for {channel:?} without a subscribe reply: {msg:?}"),
            ));
        };
        if let Some(publication) = &push.publication {
            match (sub.last_offset, publication.offset) {
                (Some(last), Some(o)) if o != last + 1 => {
                    return Err(breach(
                        Rule::Offsets,
                        format!("{conn} on {channel:?}: offset {o} after {last}"),
                    ));
                }
                (_, o) => sub.last_offset = o,
            }
        } else if let Some((kind, event)) = push
            .join
            .as_ref()
            .map(|j| ("join", j))
            .or_else(|| push.leave.as_ref().map(|l| ("leave", l)))
        {
            if !sub.join_leave {
                return Err(breach(
                    Rule::JoinLeave,
                    format!("{conn} got a {kind} on {channel:?} it did not ask for"),
                ));
            }
            let list = if kind == "join" {
                &mut view.joins
            } else {
                &mut view.leaves
            };
            list.entry(channel.to_owned())
                .or_default()
                .push(event.info.client.clone().into_owned());
        }
        Ok(())
    }

    /// Join/leave pushes of the step against the membership change.
    fn check_join_leave(&mut self, hub: &Hub) -> Result<(), Breach> {
        let mut changed = false;
        for ((channel, before), after) in self.before.iter().zip(&mut self.after) {
            after.clear();
            after.extend(hub.room_members(channel));
            changed |= before != after;
            if hub.remote_members(channel).next().is_some() {
                self.remote_channels.insert(channel.clone());
            }
        }
        for (&conn, view) in &mut self.conns {
            if !changed && view.joins.is_empty() && view.leaves.is_empty() {
                continue; // nobody arrived or left, and it was told of nobody
            }
            let joins = std::mem::take(&mut view.joins);
            let leaves = std::mem::take(&mut view.leaves);
            if view.closed {
                continue;
            }
            for ((channel, before), after) in self.before.iter().zip(&self.after) {
                let Some(sub) = view.subscribed.get(channel) else {
                    continue;
                };
                if !sub.join_leave || self.remote_channels.contains(channel) {
                    // Members on other nodes join and leave too (a Redis
                    // recording): this one-node model does not follow them.
                    continue;
                }
                if before == after && !joins.contains_key(channel) && !leaves.contains_key(channel)
                {
                    continue; // nothing arrived, left, or was announced
                }
                let id = |c: &ConnId| hub.client_id(*c).to_string();
                let mut want_joins: Vec<String> = after
                    .iter()
                    .filter(|c| !before.contains(c))
                    .map(id)
                    .collect();
                let mut want_leaves: Vec<String> = before
                    .iter()
                    .filter(|c| !after.contains(c))
                    .map(id)
                    .collect();
                let mut got_joins = joins.get(channel).cloned().unwrap_or_default();
                let mut got_leaves = leaves.get(channel).cloned().unwrap_or_default();
                for v in [
                    &mut want_joins,
                    &mut want_leaves,
                    &mut got_joins,
                    &mut got_leaves,
                ] {
                    v.sort();
                }
                if got_joins != want_joins || got_leaves != want_leaves {
                    return Err(breach(
                        Rule::JoinLeave,
                        format!(
                            "{conn} on {channel:?}: joins {got_joins:?} (want {want_joins:?}), leaves {got_leaves:?} (want {want_leaves:?})"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
