//! The server HTTP API inside the hub: [`Hub::handle_api`] takes a decoded
//! command on whichever shard the driver hands it to, asks the channel's
//! home (publish, presence, history) or every shard (a user's connections,
//! channels, info) over the bus, collects the answers, and hands the reply
//! body out through [`Hub::poll_api`].
//!
//! A publication from the API goes through the home's publish path like a
//! client's: into the store first when the channel keeps history, fanned
//! out and answered only once it is durable. It has no publisher: its
//! `pub` push carries no `info`, and seed clients see it with an empty
//! `username`.

use super::*;
use crate::api::{ApiCommand, ApiReply, ApiRequest, Publish, IDEMPOTENCY_WINDOW};
use crate::bus::{ApiHomeOp, ApiPart, ApiShardOp};

/// The publisher of API publications: no connection has this id (drivers
/// count connections up from 1).
pub(super) const API_CONN: ConnId = ConnId(u64::MAX);
/// The client id API publications are stored with: no connection's
/// (derived ids always carry the UUID version bits); shown as no `info`.
pub(super) const API_CLIENT: ClientId = ClientId(0);

/// Where a publication's answer goes.
#[derive(Clone, Debug)]
pub(super) enum PubReply {
    /// A client's command `id` on `shard` (`None`: no answer wanted).
    Client(Option<(ShardId, u32)>),
    /// An API leaf: `(shard, token)`, and the idempotency key to remember.
    Api {
        to: (ShardId, u64),
        key: Option<String>,
    },
}

/// The API requests in progress on this shard, and what the homes here remember.
#[derive(Debug, Default)]
pub(super) struct ApiState {
    pending: BTreeMap<u64, PendingApi>,
    /// Outstanding operations: token → (request id, command, part).
    leaves: BTreeMap<u64, (u64, usize, usize)>,
    next_token: u64,
    replies: VecDeque<ApiReply>,
    /// Results of publications with an idempotency key, per channel homed
    /// here, with when they were made; oldest first in `idempotent_order`.
    idempotent: BTreeMap<(ChannelName, String), (Timestamp, Bytes)>,
    idempotent_order: VecDeque<(Timestamp, ChannelName, String)>,
}

#[derive(Debug)]
struct PendingApi {
    batch: bool,
    slots: Vec<Slot>,
    remaining: usize,
}

#[derive(Debug)]
struct Slot {
    method: &'static str,
    kind: SlotKind,
    parts: Vec<Option<ApiPart>>,
}

#[derive(Debug)]
enum SlotKind {
    One,
    Broadcast,
    AllShards,
    Channels(Option<String>),
    Info(u64),
}

type CommandResult = Result<Bytes, (ErrorCode, String)>;

impl Hub {
    /// Starts a server API command. Its reply comes out of
    /// [`Hub::poll_api`], possibly only after other shards (through the bus)
    /// or the store have answered: drain it after every call, as the outputs.
    pub fn handle_api(&mut self, now: Timestamp, request: ApiRequest) {
        self.now = self.now.max(now);
        let ApiRequest { id, command } = request;
        let (batch, commands) = match command {
            ApiCommand::Batch(commands) => (true, commands),
            command => (false, vec![command]),
        };
        self.api.pending.insert(
            id,
            PendingApi {
                batch,
                slots: Vec::with_capacity(commands.len()),
                remaining: 0,
            },
        );
        for (i, command) in commands.into_iter().enumerate() {
            self.api_start(id, i, command);
        }
        self.api_check(id);
        self.pump();
    }

    /// The next finished API reply.
    pub fn poll_api(&mut self) -> Option<ApiReply> {
        self.api.replies.pop_front()
    }

    /// API requests waiting for other shards or the store.
    #[must_use]
    pub fn api_pending(&self) -> usize {
        self.api.pending.len()
    }

    fn api_slot(&mut self, id: u64, method: &'static str, kind: SlotKind, parts: usize) -> usize {
        let Some(p) = self.api.pending.get_mut(&id) else {
            return 0;
        };
        p.slots.push(Slot {
            method,
            kind,
            parts: vec![None; parts],
        });
        p.slots.len() - 1
    }

    /// A token for part `sub` of command `slot` of request `id`, and where
    /// its answer goes.
    fn api_leaf(&mut self, id: u64, slot: usize, sub: usize) -> (ShardId, u64) {
        let token = self.api.next_token;
        self.api.next_token += 1;
        self.api.leaves.insert(token, (id, slot, sub));
        if let Some(p) = self.api.pending.get_mut(&id) {
            p.remaining += 1;
        }
        (self.config.shard, token)
    }

    fn api_fill(&mut self, id: u64, slot: usize, sub: usize, part: ApiPart) {
        if let Some(part_slot) = self
            .api
            .pending
            .get_mut(&id)
            .and_then(|p| p.slots.get_mut(slot))
            .and_then(|s| s.parts.get_mut(sub))
        {
            *part_slot = Some(part);
        }
    }

    /// Checks a channel named by the API: its namespace exists, its name fits.
    fn api_channel(&self, channel: &str) -> Result<Arc<ChannelOptions>, ApiPart> {
        match self.channel_options(channel) {
            Ok(Ok(options)) => Ok(options),
            Ok(Err(code)) => Err(ApiPart::Error(code, code.message().to_owned())),
            Err(_) => Err(ApiPart::Error(
                ErrorCode::BadRequest,
                "channel required".to_owned(),
            )),
        }
    }

    fn api_start(&mut self, id: u64, i: usize, command: ApiCommand) {
        let method = command.method();
        let shards = self.config.shards;
        match command {
            ApiCommand::Publish { channel, publish } => {
                let slot = self.api_slot(id, method, SlotKind::One, 1);
                self.api_publish(id, slot, 0, &channel, publish);
            }
            ApiCommand::Broadcast { channels, publish } => {
                let slot = self.api_slot(id, method, SlotKind::Broadcast, channels.len());
                for (sub, channel) in channels.iter().enumerate() {
                    self.api_publish(id, slot, sub, channel, publish.clone());
                }
            }
            ApiCommand::Subscribe { user, channel } | ApiCommand::Unsubscribe { user, channel } => {
                let slot = self.api_slot(id, method, SlotKind::AllShards, usize::from(shards));
                if let Err(part) = self.api_channel(&channel) {
                    self.api_fill(id, slot, 0, part);
                    return;
                }
                let channel = ChannelName::new(&channel);
                for s in 0..shards {
                    let reply = self.api_leaf(id, slot, usize::from(s));
                    let op = if method == "subscribe" {
                        ApiShardOp::Subscribe {
                            user: user.clone(),
                            channel: channel.clone(),
                        }
                    } else {
                        ApiShardOp::Unsubscribe {
                            user: user.clone(),
                            channel: channel.clone(),
                        }
                    };
                    self.send_bus(ShardId(s), BusMessage::ApiShard { op, reply });
                }
            }
            ApiCommand::Disconnect { user, whitelist } => {
                let slot = self.api_slot(id, method, SlotKind::AllShards, usize::from(shards));
                for s in 0..shards {
                    let reply = self.api_leaf(id, slot, usize::from(s));
                    let op = ApiShardOp::Disconnect {
                        user: user.clone(),
                        whitelist: whitelist.clone(),
                    };
                    self.send_bus(ShardId(s), BusMessage::ApiShard { op, reply });
                }
            }
            ApiCommand::Channels { pattern } => {
                let slot =
                    self.api_slot(id, method, SlotKind::Channels(pattern), usize::from(shards));
                for s in 0..shards {
                    let reply = self.api_leaf(id, slot, usize::from(s));
                    let op = ApiShardOp::Channels;
                    self.send_bus(ShardId(s), BusMessage::ApiShard { op, reply });
                }
            }
            ApiCommand::Info { uptime } => {
                let slot = self.api_slot(id, method, SlotKind::Info(uptime), usize::from(shards));
                for s in 0..shards {
                    let reply = self.api_leaf(id, slot, usize::from(s));
                    let op = ApiShardOp::Info;
                    self.send_bus(ShardId(s), BusMessage::ApiShard { op, reply });
                }
            }
            // Nothing to refresh until connections have tokens.
            ApiCommand::Refresh { .. } => {
                let slot = self.api_slot(id, method, SlotKind::One, 1);
                self.api_fill(id, slot, 0, ApiPart::Done);
            }
            ApiCommand::Presence { .. }
            | ApiCommand::PresenceStats { .. }
            | ApiCommand::History { .. }
            | ApiCommand::HistoryRemove { .. } => {
                let slot = self.api_slot(id, method, SlotKind::One, 1);
                let (channel, op) = match (command.query(), &command) {
                    (Some((channel, query)), _) => (channel.to_owned(), ApiHomeOp::Query(query)),
                    (None, ApiCommand::HistoryRemove { channel }) => {
                        (channel.clone(), ApiHomeOp::RemoveHistory)
                    }
                    _ => return,
                };
                let options = match self.api_channel(&channel) {
                    Ok(options) => options,
                    Err(part) => return self.api_fill(id, slot, 0, part),
                };
                let available = match &op {
                    ApiHomeOp::Query(Query::Presence | Query::PresenceStats) => options.presence,
                    _ => options.history(),
                };
                if !available {
                    let code = ErrorCode::NotAvailable;
                    return self.api_fill(
                        id,
                        slot,
                        0,
                        ApiPart::Error(code, code.message().to_owned()),
                    );
                }
                let reply = self.api_leaf(id, slot, 0);
                let home = self.home(&channel);
                let channel = ChannelName::new(&channel);
                self.send_bus(home, BusMessage::ApiHome { channel, op, reply });
            }
            ApiCommand::Batch(_) => {
                let slot = self.api_slot(id, "error", SlotKind::One, 1);
                let part = ApiPart::Error(ErrorCode::BadRequest, "a batch inside a batch".into());
                self.api_fill(id, slot, 0, part);
            }
            ApiCommand::Invalid(code, message) => {
                let slot = self.api_slot(id, "error", SlotKind::One, 1);
                self.api_fill(id, slot, 0, ApiPart::Error(code, message));
            }
        }
        let _ = i;
    }

    fn api_publish(&mut self, id: u64, slot: usize, sub: usize, channel: &str, publish: Publish) {
        if let Err(part) = self.api_channel(channel) {
            return self.api_fill(id, slot, sub, part);
        }
        let reply = self.api_leaf(id, slot, sub);
        let home = self.home(channel);
        let channel = ChannelName::new(channel);
        let op = ApiHomeOp::Publish(publish);
        self.send_bus(home, BusMessage::ApiHome { channel, op, reply });
    }

    /// Whether an API operation for the home needs the channel's stream open.
    pub(super) fn api_needs_stream(op: &ApiHomeOp) -> bool {
        match op {
            ApiHomeOp::Publish(p) => !p.skip_history,
            ApiHomeOp::Query(Query::History { .. }) | ApiHomeOp::RemoveHistory => true,
            ApiHomeOp::Query(_) => false,
        }
    }

    /// At the channel's home: carries out an API operation.
    pub(super) fn api_home(&mut self, channel: &ChannelName, op: ApiHomeOp, reply: (ShardId, u64)) {
        match op {
            ApiHomeOp::Publish(publish) => {
                let now = self.now;
                self.api_forget_old(now);
                if let Some(key) = &publish.idempotency_key {
                    if let Some((_, body)) =
                        self.api.idempotent.get(&(channel.clone(), key.clone()))
                    {
                        let part = ApiPart::Body(body.clone());
                        return self.api_answer(reply, part);
                    }
                }
                let Publish {
                    data,
                    skip_history,
                    idempotency_key,
                } = publish;
                self.home_publish_as(
                    channel,
                    API_CONN,
                    (None, None),
                    PubPayload::Json(data),
                    PubReply::Api {
                        to: reply,
                        key: idempotency_key,
                    },
                    skip_history,
                );
            }
            ApiHomeOp::Query(query) => {
                let bytes = self.home_query(channel.as_str(), 0, &query);
                self.api_answer(reply, part_of_reply(&bytes));
            }
            ApiHomeOp::RemoveHistory => {
                if let Some(room) = self.rooms.get_mut(channel) {
                    room.history.clear();
                }
                self.api_answer(reply, ApiPart::Done);
            }
        }
    }

    /// Answers an API publication: with its position when it was stored.
    pub(super) fn api_published(
        &mut self,
        channel: &ChannelName,
        to: (ShardId, u64),
        key: Option<String>,
        result: Result<Option<(u64, u64)>, ErrorCode>,
    ) {
        let part = match result {
            Ok(position) => {
                let mut out = Vec::with_capacity(48);
                let mut o = centrifuge::Object::open(&mut out);
                if let Some((offset, epoch)) = position {
                    o.uint("offset", offset).str("epoch", &epoch_text(epoch));
                }
                o.close();
                let body = Bytes::from(out);
                if let Some(key) = key {
                    let now = self.now;
                    self.api
                        .idempotent
                        .insert((channel.clone(), key.clone()), (now, body.clone()));
                    self.api
                        .idempotent_order
                        .push_back((now, channel.clone(), key));
                }
                ApiPart::Body(body)
            }
            Err(code) => ApiPart::Error(code, code.message().to_owned()),
        };
        self.api_answer(to, part);
    }

    fn api_forget_old(&mut self, now: Timestamp) {
        while let Some((at, _, _)) = self.api.idempotent_order.front() {
            if now.since(*at) < IDEMPOTENCY_WINDOW {
                break;
            }
            if let Some((at, channel, key)) = self.api.idempotent_order.pop_front() {
                let k = (channel, key);
                if self.api.idempotent.get(&k).is_some_and(|(t, _)| *t == at) {
                    self.api.idempotent.remove(&k);
                }
            }
        }
    }

    pub(super) fn api_answer(&mut self, (shard, token): (ShardId, u64), part: ApiPart) {
        self.send_bus(shard, BusMessage::ApiDone { token, part });
    }

    /// On every shard: an API operation on this shard's connections.
    pub(super) fn api_shard(&mut self, op: ApiShardOp, reply: (ShardId, u64)) {
        let part = match op {
            ApiShardOp::Subscribe { user, channel } => {
                let conns = self.user_conns(&user, true);
                for conn in conns {
                    let Some(c) = self.conns.get(&conn) else {
                        continue;
                    };
                    let channels = c.subs.len() + c.pending.iter().filter(|p| !p.cancelled).count();
                    if c.sub(channel.as_str()).is_some()
                        || c.subscribing(channel.as_str())
                        || channels >= self.config.channel_limit
                    {
                        continue;
                    }
                    // The push first: the channel's publications follow the join.
                    let push = centrifuge::push(channel.as_str(), "subscribe", |_| {});
                    self.reply(conn, push);
                    self.ask_join(conn, channel.clone(), None, false, 0);
                }
                ApiPart::Done
            }
            ApiShardOp::Unsubscribe { user, channel } => {
                for conn in self.user_conns(&user, true) {
                    self.server_unsubscribe(conn, &channel);
                }
                ApiPart::Done
            }
            ApiShardOp::Disconnect { user, whitelist } => {
                for conn in self.user_conns(&user, false) {
                    let client = self.client_id(conn).to_string();
                    if !whitelist.contains(&client) {
                        self.end(conn, CloseReason::ForceDisconnect);
                    }
                }
                ApiPart::Done
            }
            ApiShardOp::Channels => ApiPart::Channels(
                self.rooms
                    .iter()
                    .filter(|(name, room)| !name.as_str().is_empty() && !room.members.is_empty())
                    .map(|(name, room)| (name.clone(), room.members.values().count() as u64))
                    .collect(),
            ),
            ApiShardOp::Info => {
                let users: BTreeSet<&Name> = self
                    .conns
                    .values()
                    .filter_map(|c| c.user.as_ref())
                    .collect();
                ApiPart::Info {
                    clients: self.conns.len() as u64,
                    users: users.into_iter().cloned().collect(),
                    channels: self.rooms().count() as u64,
                    subs: self.conns.values().map(|c| c.subs.len() as u64).sum(),
                }
            }
        };
        self.api_answer(reply, part);
    }

    /// This shard's connections of `user`, in id order (only Centrifugo
    /// ones that sent `connect`, with `centrifuge_only`).
    fn user_conns(&self, user: &Name, centrifuge_only: bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| c.user.as_ref() == Some(user))
            .filter(|(_, c)| !centrifuge_only || (c.codec == Codec::Centrifuge && c.connected))
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// Takes `conn` out of `channel` and tells it (code 2000).
    fn server_unsubscribe(&mut self, conn: ConnId, channel: &ChannelName) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut leave = false;
        if let Some(i) = c.subs.iter().position(|(ch, _)| ch == channel) {
            let (_, seq) = c.subs.remove(i);
            self.leave_local(channel, seq);
            leave = true;
        } else if let Some(p) = c
            .pending
            .iter_mut()
            .find(|p| !p.cancelled && p.channel == *channel)
        {
            p.cancelled = true;
            leave = true;
        }
        if leave {
            let push = centrifuge::unsubscribe_push(channel.as_str(), 2000, "server unsubscribe");
            self.reply(conn, push);
            let home = self.home(channel.as_str());
            let channel = channel.clone();
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
    }

    /// An answer for one of this shard's API requests.
    pub(super) fn api_done(&mut self, token: u64, part: ApiPart) {
        let Some((id, slot, sub)) = self.api.leaves.remove(&token) else {
            return;
        };
        self.api_fill(id, slot, sub, part);
        if let Some(p) = self.api.pending.get_mut(&id) {
            p.remaining = p.remaining.saturating_sub(1);
        }
        self.api_check(id);
    }

    /// Replies to request `id` once every part is in.
    fn api_check(&mut self, id: u64) {
        if self.api.pending.get(&id).is_none_or(|p| p.remaining > 0) {
            return;
        }
        let Some(p) = self.api.pending.remove(&id) else {
            return;
        };
        let version = self.config.server_version.clone();
        let uid = format!("{:016x}", self.config.entropy);
        let results: Vec<(&'static str, CommandResult)> = p
            .slots
            .into_iter()
            .map(|s| (s.method, render(s.kind, s.parts, &version, &uid)))
            .collect();
        let mut out = Vec::with_capacity(64);
        if p.batch {
            out.extend_from_slice(b"{\"result\":{\"replies\":[");
            for (i, (method, result)) in results.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match result {
                    Ok(body) => {
                        out.push(b'{');
                        crate::codec::push_json_string(&mut out, method);
                        out.push(b':');
                        out.extend_from_slice(body);
                        out.push(b'}');
                    }
                    Err(e) => push_error(&mut out, e),
                }
            }
            out.extend_from_slice(b"]}}");
        } else {
            match results.first() {
                Some((_, Ok(body))) => {
                    out.extend_from_slice(b"{\"result\":");
                    out.extend_from_slice(body);
                    out.push(b'}');
                }
                Some((_, Err(e))) => push_error(&mut out, e),
                None => out.extend_from_slice(b"{\"result\":{}}"),
            }
        }
        self.api.replies.push_back(ApiReply {
            id,
            body: Bytes::from(out),
        });
    }
}

/// `{"error":{"code":N,"message":"…"}}`.
fn push_error(out: &mut Vec<u8>, (code, message): &(ErrorCode, String)) {
    let mut o = centrifuge::Object::open(out);
    o.object("error", |e| {
        e.uint("code", u64::from(code.code()))
            .str("message", message);
    });
    o.close();
}

fn one(part: Option<ApiPart>) -> CommandResult {
    match part {
        Some(ApiPart::Body(body)) => Ok(body),
        Some(ApiPart::Error(code, message)) => Err((code, message)),
        Some(_) => Ok(Bytes::from_static(b"{}")),
        None => Err((ErrorCode::Internal, "no answer".to_owned())),
    }
}

fn render(kind: SlotKind, parts: Vec<Option<ApiPart>>, version: &str, uid: &str) -> CommandResult {
    if let Some(Some(ApiPart::Error(code, message))) = parts
        .iter()
        .find(|p| matches!(p, Some(ApiPart::Error(..))))
        .filter(|_| !matches!(kind, SlotKind::Broadcast))
    {
        return Err((*code, message.clone()));
    }
    match kind {
        SlotKind::One => one(parts.into_iter().next().flatten()),
        SlotKind::AllShards => Ok(Bytes::from_static(b"{}")),
        SlotKind::Broadcast => {
            let mut out = b"{\"responses\":[".to_vec();
            for (i, part) in parts.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match one(part) {
                    Ok(body) => {
                        out.extend_from_slice(b"{\"result\":");
                        out.extend_from_slice(&body);
                        out.push(b'}');
                    }
                    Err(e) => push_error(&mut out, &e),
                }
            }
            out.extend_from_slice(b"]}");
            Ok(Bytes::from(out))
        }
        SlotKind::Channels(pattern) => {
            let mut all: BTreeMap<ChannelName, u64> = BTreeMap::new();
            for part in parts.into_iter().flatten() {
                if let ApiPart::Channels(list) = part {
                    for (name, n) in list {
                        *all.entry(name).or_default() += n;
                    }
                }
            }
            let mut out = Vec::with_capacity(64);
            let mut o = centrifuge::Object::open(&mut out);
            o.object("channels", |c| {
                for (name, n) in &all {
                    if pattern
                        .as_deref()
                        .is_none_or(|p| crate::api::glob_match(p, name.as_str()))
                    {
                        c.object(name.as_str(), |e| {
                            e.uint("num_clients", *n);
                        });
                    }
                }
            });
            o.close();
            Ok(Bytes::from(out))
        }
        SlotKind::Info(uptime) => {
            let (mut clients, mut channels, mut subs) = (0, 0, 0);
            let mut users: BTreeSet<Name> = BTreeSet::new();
            for part in parts.into_iter().flatten() {
                if let ApiPart::Info {
                    clients: c,
                    users: u,
                    channels: ch,
                    subs: s,
                } = part
                {
                    clients += c;
                    channels += ch;
                    subs += s;
                    users.extend(u);
                }
            }
            let mut out = Vec::with_capacity(160);
            let mut o = centrifuge::Object::open(&mut out);
            o.with("nodes", |out| {
                out.push(b'[');
                let mut n = centrifuge::Object::open(out);
                n.str("uid", uid)
                    .str("name", "hubbub")
                    .str("version", version)
                    .uint("num_clients", clients)
                    .uint("num_users", users.len() as u64)
                    .uint("num_channels", channels)
                    .uint("num_subs", subs)
                    .uint("uptime", uptime);
                n.close();
                out.push(b']');
            });
            o.close();
            Ok(Bytes::from(out))
        }
    }
}

/// The result inside a Centrifugo reply the home encoded (`{"id":0,"<method>":{…}}`
/// or `{"id":0,"error":{…}}`).
fn part_of_reply(reply: &[u8]) -> ApiPart {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(reply)
    else {
        return ApiPart::Error(ErrorCode::Internal, "internal server error".to_owned());
    };
    for (key, value) in map {
        if key == "id" {
            continue;
        }
        if key == "error" {
            let code = value.get("code").and_then(serde_json::Value::as_u64);
            let code = [
                ErrorCode::UnknownChannel,
                ErrorCode::BadRequest,
                ErrorCode::NotAvailable,
                ErrorCode::UnrecoverablePosition,
            ]
            .into_iter()
            .find(|c| Some(u64::from(c.code())) == code)
            .unwrap_or(ErrorCode::Internal);
            return ApiPart::Error(code, code.message().to_owned());
        }
        return ApiPart::Body(Bytes::from(value.to_string()));
    }
    ApiPart::Body(Bytes::from_static(b"{}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::decode;

    fn api(hub: &mut Hub, id: u64, method: &str, body: &str) -> serde_json::Value {
        let command = decode(method, body.as_bytes()).expect("decodes");
        hub.handle_api(Timestamp::from_millis(1), ApiRequest { id, command });
        let reply = hub.poll_api().expect("one shard answers at once");
        assert_eq!(reply.id, id);
        serde_json::from_slice(&reply.body).expect("json")
    }

    fn sent(hub: &mut Hub, conn: ConnId) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = hub.poll_output() {
            if let (true, Some(p)) = (o.conn() == conn, o.payload()) {
                out.push(String::from_utf8_lossy(p).into_owned());
            }
        }
        out
    }

    #[test]
    fn server_side_subscribe_and_unsubscribe_reach_the_users_connections() {
        let mut hub = Hub::new(Config::default());
        let now = Timestamp::from_millis(1);
        let conn = ConnId(1);
        hub.handle_input(
            now,
            Input::Open {
                conn,
                route: Route::Centrifuge,
            },
        );
        hub.handle_input(
            now,
            Input::Message {
                conn,
                frame: Frame::text(r#"{"id":1,"connect":{}}"#),
            },
        );
        // Tokens are another branch's work: give the connection a user by hand.
        if let Some(c) = hub.conns.get_mut(&conn) {
            c.user = Name::new("alice").ok();
        }
        sent(&mut hub, conn);
        let r = api(
            &mut hub,
            1,
            "subscribe",
            r#"{"user":"alice","channel":"news"}"#,
        );
        assert_eq!(r, serde_json::json!({"result": {}}));
        let out = sent(&mut hub, conn);
        assert_eq!(out, vec![r#"{"push":{"channel":"news","subscribe":{}}}"#]);
        api(
            &mut hub,
            2,
            "publish",
            r#"{"channel":"news","data":{"n":1}}"#,
        );
        let out = sent(&mut hub, conn);
        assert_eq!(
            out,
            vec![r#"{"push":{"channel":"news","pub":{"data":{"n":1},"offset":1}}}"#]
        );
        // Someone else's name reaches nobody.
        api(
            &mut hub,
            3,
            "unsubscribe",
            r#"{"user":"bob","channel":"news"}"#,
        );
        assert!(sent(&mut hub, conn).is_empty());
        api(
            &mut hub,
            4,
            "unsubscribe",
            r#"{"user":"alice","channel":"news"}"#,
        );
        let out = sent(&mut hub, conn);
        assert_eq!(out.len(), 1);
        assert!(out[0].contains(r#""unsubscribe":{"code":2000"#), "{out:?}");
        api(
            &mut hub,
            5,
            "publish",
            r#"{"channel":"news","data":{"n":2}}"#,
        );
        assert!(sent(&mut hub, conn).is_empty());
        let r = api(&mut hub, 6, "disconnect", r#"{"user":"alice"}"#);
        assert_eq!(r, serde_json::json!({"result": {}}));
        assert!(!hub.is_open(conn));
        assert_eq!(hub.stats().closes_for(CloseReason::ForceDisconnect), 1);
    }
}
