//! The connection side of the hub: each connection's session (its codec,
//! channels, pending joins and heartbeat), the Centrifugo protocol's
//! commands, and the fan-out of a home's deliveries to this shard's members.

use super::*;
use crate::auth::Timing;
use crate::rate::{Bucket, Verdict};

/// A subscription waiting for its home's answer.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) channel: ChannelName,
    pub(super) attempt: u32,
    /// Centrifugo: the subscribe command to answer, and what it asked.
    pub(super) request: Option<SubscribeAsk>,
    /// Centrifugo: whether the subscription gets join/leave pushes.
    pub(super) join_leave: bool,
    /// The client unsubscribed meanwhile: answer, but do not register.
    pub(super) cancelled: bool,
}

/// A connection's joins in flight: no memory at all while there are none,
/// which is nearly always (an idle connection keeps one pointer).
#[derive(Debug, Default)]
// One pointer inline instead of a vector's three words: the box is the point.
#[allow(clippy::box_collection)]
pub(super) struct Pendings(Option<Box<Vec<Pending>>>);

impl Pendings {
    pub(super) fn push(&mut self, pending: Pending) {
        self.0
            .get_or_insert_with(|| Box::new(Vec::with_capacity(1)))
            .push(pending);
    }

    /// Takes entry `i`, giving the memory back once none is left.
    pub(super) fn remove(&mut self, i: usize) -> Option<Pending> {
        let all = self.0.as_mut()?;
        if i >= all.len() {
            return None;
        }
        let pending = all.remove(i);
        if all.is_empty() {
            self.0 = None;
        }
        Some(pending)
    }

    pub(super) fn take(&mut self) -> Vec<Pending> {
        self.0.take().map(|all| *all).unwrap_or_default()
    }
}

impl std::ops::Deref for Pendings {
    type Target = [Pending];

    fn deref(&self) -> &[Pending] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::DerefMut for Pendings {
    fn deref_mut(&mut self) -> &mut [Pending] {
        self.0.as_deref_mut().map_or(&mut [], Vec::as_mut_slice)
    }
}

/// What a Centrifugo subscribe asked and was granted, kept until its home answers.
#[derive(Debug)]
pub(super) struct SubscribeAsk {
    pub(super) id: u32,
    pub(super) positioned: bool,
    pub(super) recoverable: bool,
    /// `recover` with the client's offset and epoch.
    pub(super) recover: Option<(u64, String)>,
    /// When its subscription token expires (Unix milliseconds), if it does.
    pub(super) expires: Option<u64>,
    /// A server-side subscription (the connection token's `channels`):
    /// announced with a `subscribe` push instead of a reply.
    pub(super) server_side: bool,
}

/// What tokens granted a connection that can expire: `None` in
/// [`Conn::auth`] for every connection without an expiring token, so
/// connections without tokens pay one pointer.
#[derive(Debug, Default)]
pub(super) struct Auth {
    /// When the connection token expires.
    pub(super) expires: Option<Timestamp>,
    /// Subscriptions granted by expiring subscription tokens, and when.
    pub(super) subs: Vec<(ChannelName, Timestamp)>,
    /// The connection token's `info`: this client's `conn_info`.
    pub(super) conn_info: Option<Bytes>,
    /// Subscription tokens' `info`, per channel: `chan_info`.
    pub(super) chan_infos: Vec<(ChannelName, Bytes)>,
}

impl Auth {
    /// What others are shown about this client in `channel`.
    pub(super) fn infos(&self, channel: &str) -> crate::bus::Infos {
        let chan_info = self
            .chan_infos
            .iter()
            .find(|(ch, _)| ch.as_str() == channel)
            .map(|(_, info)| info.clone());
        crate::bus::infos(self.conn_info.clone(), chan_info)
    }

    /// Nothing left to keep: no expiry to enforce, no info to show.
    fn is_empty(&self) -> bool {
        self.expires.is_none()
            && self.subs.is_empty()
            && self.conn_info.is_none()
            && self.chan_infos.is_empty()
    }
}

impl Auth {
    /// The earliest expiry, connection or subscription.
    fn earliest(&self) -> Option<Timestamp> {
        self.expires
            .into_iter()
            .chain(self.subs.iter().map(|&(_, at)| at))
            .min()
    }
}

#[derive(Debug)]
pub(super) struct Conn {
    pub(super) codec: Codec,
    /// Shown as `user` to others: a seed client's username; `None` for an
    /// anonymous Centrifugo client (user `""`) and the relay.
    pub(super) user: Option<Name>,
    /// Centrifugo: `connect` was accepted. Always true for the other protocols.
    pub(super) connected: bool,
    /// The channels this connection is in and its place in each one's join
    /// order (a seed connection has exactly one: its room). A short list:
    /// at most `channel_limit`, usually one.
    pub(super) subs: Vec<(ChannelName, u64)>,
    /// Joins asked of a home and not answered yet.
    pub(super) pending: Pendings,
    pub(super) next_attempt: u32,
    pub(super) last_pong: Timestamp,
    /// When the next ping is due; before a Centrifugo `connect`, when the
    /// connection goes stale (3502).
    pub(super) next_ping: Timestamp,
    /// Centrifugo: a ping was sent and its pong has not come.
    pub(super) ping_outstanding: bool,
    /// The instant of this connection's entry in `Hub::timers`.
    pub(super) timer: Timestamp,
    /// Centrifugo with tokens: expiries to enforce.
    pub(super) auth: Option<Box<Auth>>,
    /// `command_rate`'s budget.
    pub(super) commands: Bucket,
}

/// A named user's connections on this shard and its publication budget.
#[derive(Debug)]
pub(super) struct UserEntry {
    pub(super) conns: u32,
    pub(super) publish: Bucket,
}

impl Conn {
    pub(super) fn sub(&self, channel: &str) -> Option<u64> {
        self.subs
            .iter()
            .find(|(c, _)| c.as_str() == channel)
            .map(|&(_, seq)| seq)
    }

    /// Takes the join in flight that `attempt` on `channel` answers (none:
    /// a stale answer, for a join given up on meanwhile).
    pub(super) fn take_pending(&mut self, channel: &ChannelName, attempt: u32) -> Option<Pending> {
        let i = self
            .pending
            .iter()
            .position(|p| p.attempt == attempt && p.channel == *channel)?;
        self.pending.remove(i)
    }

    pub(super) fn subscribing(&self, channel: &str) -> bool {
        self.pending
            .iter()
            .any(|p| !p.cancelled && p.channel.as_str() == channel)
    }

    pub(super) fn anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// When the next expiry must be acted on: `delay` past the earliest
    /// token expiry (Centrifugo's `expired_close_delay`).
    pub(super) fn auth_deadline(&self, delay: std::time::Duration) -> Option<Timestamp> {
        self.auth
            .as_ref()
            .and_then(|a| a.earliest())
            .map(|at| at.saturating_add(delay))
    }

    /// The connection's next timer: ping, pong deadline, or token expiry.
    pub(super) fn next_timer(&self, config: &Config) -> Timestamp {
        let deadline = self.last_pong.saturating_add(config.pong_timeout);
        let timer = self.next_ping.min(deadline);
        self.auth_deadline(config.expired_close_delay)
            .map_or(timer, |at| timer.min(at))
    }

    fn user_str(&self) -> &str {
        self.user.as_ref().map_or("", Name::as_str)
    }

    /// This client's `conn_info` / `chan_info` for `channel`.
    pub(super) fn infos(&self, channel: &str) -> crate::bus::Infos {
        self.auth.as_ref().and_then(|a| a.infos(channel))
    }
}

/// A local member of a channel, with what fan-out needs to know about it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member {
    pub(super) conn: ConnId,
    pub(super) codec: Codec,
    /// Centrifugo: gets `join` / `leave` pushes.
    pub(super) join_leave: bool,
}

/// A channel's members on this shard, in join order.
#[derive(Debug)]
pub(super) struct LocalRoom {
    /// Names this shard's presence snapshots for conflation.
    pub(super) id: RoomId,
    pub(super) members: JoinOrder<Member>,
}

/// A Centrifugo command that ends the connection instead of being answered.
pub(super) struct Disconnect(CloseReason);

/// Where a connection stands with a channel it sends a command about.
pub(super) struct Standing {
    pub(super) options: Arc<ChannelOptions>,
    pub(super) anonymous: bool,
    pub(super) subscribed: bool,
    pub(super) user: Option<Name>,
    /// A private or user-limited channel: only its subscribers may use it.
    pub(super) restricted: bool,
}

impl Standing {
    /// Centrifugo's rule for publish, presence and history: an anonymous
    /// client needs the `*_for_anonymous` option, and then either the
    /// `*_for_client` one, or `*_for_subscriber` while subscribed.
    pub(super) fn may(&self, for_anonymous: bool, for_client: bool, for_subscriber: bool) -> bool {
        let for_client = for_client && !self.restricted;
        (!self.anonymous || for_anonymous) && (for_client || self.subscribed && for_subscriber)
    }
}

type CommandResult = Result<(), Disconnect>;

/// What a valid subscription token grants: its expiry (Unix ms) and its
/// `info`, shown as `chan_info`.
type SubscriptionGrant = (Option<u64>, Option<Bytes>);

/// The user a token's `sub` names: `None` for an empty one (anonymous); a
/// `sub` that is not a valid name (too long, control characters) is an
/// invalid token.
fn claims_user(sub: &str) -> Result<Option<Name>, Disconnect> {
    if sub.is_empty() {
        return Ok(None);
    }
    Name::new(sub)
        .map(Some)
        .map_err(|_| Disconnect(CloseReason::InvalidToken))
}

impl Hub {
    // ---- the connection side: sessions and local fan-out ------------------------

    pub(super) fn open(&mut self, now: Timestamp, conn: ConnId, route: Route) {
        if self.conns.contains_key(&conn) {
            return; // a driver bug; the existing connection is left alone
        }
        if self.shutting_down || self.conns.len() >= self.config.max_connections {
            let reason = if self.shutting_down {
                CloseReason::ServerShutdown
            } else {
                CloseReason::ServerFull
            };
            self.count_close(reason);
            self.outputs.push_back(Output::Close { conn, reason });
            return;
        }
        self.stats.opened += 1;
        let mut last = 0;
        let (codec, user, room) = match route {
            Route::Relay => (Codec::Relay, None, Some(crate::bus::relay_channel())),
            Route::Room {
                room,
                username,
                history,
            } => {
                last = history;
                (
                    Codec::SeedJson,
                    Some(username),
                    Some(ChannelName::new(room.as_str())),
                )
            }
            Route::Centrifuge => (Codec::Centrifuge, None, None),
        };
        let connected = codec != Codec::Centrifuge;
        let (next_ping, timer) = if connected {
            let next_ping = now.saturating_add(self.config.ping_interval);
            (
                next_ping,
                next_ping.min(now.saturating_add(self.config.pong_timeout)),
            )
        } else {
            // No pings before `connect`: the deadline is the stale one.
            let stale_at = now.saturating_add(self.config.connect_timeout);
            (stale_at, stale_at)
        };
        self.conns.insert(
            conn,
            Conn {
                codec,
                user,
                connected,
                subs: Vec::new(),
                pending: Pendings::default(),
                next_attempt: 0,
                last_pong: now,
                next_ping,
                ping_outstanding: false,
                timer,
                auth: None,
                commands: Bucket::full(
                    self.config
                        .command_rate
                        .unwrap_or(crate::rate::Rate::new(0, 0)),
                    now,
                ),
            },
        );
        if codec == Codec::SeedJson && !self.admit_user(now, conn) {
            self.end(conn, CloseReason::ConnectionLimit);
            return;
        }
        self.timers.insert((timer, conn));
        if let Some(room) = room {
            self.ask_join(conn, room, None, false, last);
        }
    }

    /// Asks `channel`'s home to add `conn`.
    pub(super) fn ask_join(
        &mut self,
        conn: ConnId,
        channel: ChannelName,
        request: Option<SubscribeAsk>,
        join_leave: bool,
        last: u8,
    ) {
        let shard = self.config.shard;
        let home = self.home(channel.as_str());
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let attempt = c.next_attempt;
        c.next_attempt = c.next_attempt.wrapping_add(1);
        c.pending.push(Pending {
            channel: channel.clone(),
            attempt,
            request,
            join_leave,
            cancelled: false,
        });
        let recover = c
            .pending
            .last()
            .and_then(|p| p.request.as_ref())
            .and_then(|ask| ask.recover.clone());
        let infos = c.infos(channel.as_str());
        let msg = BusMessage::Join {
            channel,
            conn,
            shard,
            codec: c.codec,
            user: c.user.clone(),
            infos,
            join_leave,
            attempt,
            recover,
            last,
        };
        self.send_bus(home, msg);
    }

    /// The home added `conn`: it becomes a local member (and a Centrifugo
    /// subscribe is answered), unless it went away or gave up meanwhile.
    pub(super) fn joined(
        &mut self,
        channel: &ChannelName,
        conn: ConnId,
        attempt: u32,
        seq: u64,
        (top, epoch): (u64, u64),
        recovery: Option<&Recovery>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return; // it left; its Leave is on its way to the home
        };
        let Some(pending) = c.take_pending(channel, attempt) else {
            return;
        };
        let codec = c.codec;
        let join_leave = pending.join_leave;
        if !pending.cancelled {
            if c.subs.capacity() == 0 {
                c.subs.reserve_exact(1); // most connections are in one channel
            }
            c.subs.push((channel.clone(), seq));
            if let Some(at) = pending.request.as_ref().and_then(|ask| ask.expires) {
                let auth = c.auth.get_or_insert_with(Box::default);
                auth.subs.retain(|(ch, _)| ch != channel);
                auth.subs
                    .push((channel.clone(), Timestamp::from_millis(at)));
                self.timers.remove(&(c.timer, conn));
                c.timer = c.next_timer(&self.config);
                self.timers.insert((c.timer, conn));
            }
            let next_local_room = &mut self.next_local_room;
            let room = self.local.entry(channel.clone()).or_insert_with(|| {
                let id = RoomId(*next_local_room);
                *next_local_room += 1;
                LocalRoom {
                    id,
                    members: JoinOrder::new(),
                }
            });
            room.members.insert(
                seq,
                Member {
                    conn,
                    codec,
                    join_leave,
                },
            );
        }
        let Some(ask) = pending.request else {
            // A seed client that asked for the recent past reads it now,
            // before the join notices that follow on the same link.
            if let (Codec::SeedJson, Some(recovery)) = (codec, recovery) {
                for p in &recovery.publications {
                    let content = match &p.text {
                        Some(text) => text.to_string(),
                        None => home::seed_content(&p.data),
                    };
                    let username = p.user.as_ref().map_or("", Name::as_str);
                    let frame = encode_seed(SeedType::Chat, &content, channel.as_str(), username);
                    self.outputs.push_back(Output::Send {
                        conn,
                        frame,
                        presence: None,
                    });
                    self.stats.sends += 1;
                }
            }
            return;
        };
        let epoch = epoch_text(epoch);
        let recovered = recovery.as_ref().is_some_and(|r| r.recovered);
        // Recovered: the client's own offset, and what it missed (which the
        // SDK delivers before any live publication). Not: the current top,
        // and the client reloads its state.
        let offset = match (&ask.recover, recovered) {
            (Some((offset, _)), true) => *offset,
            _ => top,
        };
        let missed: Vec<&Stored> = recovery
            .iter()
            .flat_map(|r| r.publications.iter())
            .collect();
        let now = self.now;
        let fill = |r: &mut centrifuge::Object<'_>| {
            if let Some(at) = ask.expires {
                r.bool("expires", true)
                    .uint("ttl", crate::auth::ttl_secs(now, at));
            }
            if ask.positioned {
                r.bool("recoverable", ask.recoverable)
                    .bool("positioned", true)
                    .str("epoch", &epoch)
                    .uint("offset", offset);
            }
            if !missed.is_empty() {
                r.with("publications", |out| self.push_publications(out, &missed));
            }
            r.bool("was_recovering", ask.recover.is_some())
                .bool("recovered", recovered);
        };
        let reply = if ask.server_side {
            centrifuge::push(channel.as_str(), "subscribe", fill)
        } else {
            centrifuge::reply(ask.id, "subscribe", fill)
        };
        self.reply(conn, reply);
    }

    /// The home could not open `channel`'s stream for `conn`: a Centrifugo
    /// subscribe gets error 100 (temporary: the SDK tries again); a seed
    /// client, whose connection is its room, is closed with 1011.
    pub(super) fn join_failed(&mut self, channel: &ChannelName, conn: ConnId, attempt: u32) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(pending) = c.take_pending(channel, attempt) else {
            return;
        };
        match pending.request {
            Some(ask) if ask.server_side => {}
            Some(ask) => self.error(conn, ask.id, ErrorCode::Internal),
            None if c.codec == Codec::Centrifuge => {}
            None => self.end(conn, CloseReason::StoreUnavailable),
        }
    }

    /// Frames from a channel's home for this shard's members.
    pub(super) fn deliver(&mut self, channel: &ChannelName, items: &[Delivery]) {
        let Some(room) = self.local.get(channel) else {
            return;
        };
        for item in items {
            let presence = (item.to == Audience::SeedPresence).then_some(room.id);
            for m in room.members.values() {
                if item.to.includes(m.codec, m.join_leave) {
                    self.outputs.push_back(Output::Send {
                        conn: m.conn,
                        frame: item.frame.clone(),
                        presence,
                    });
                    self.stats.sends += 1;
                }
            }
        }
    }

    pub(super) fn message(&mut self, now: Timestamp, conn: ConnId, frame: Frame) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        self.stats.messages_in += 1;
        let max = if c.codec == Codec::Centrifuge {
            self.config.max_command_bytes
        } else {
            self.config.max_message_bytes
        };
        let user = c.user.clone();
        match c.codec.decode(frame.kind, frame.payload, max) {
            Err(reason) => self.end(conn, reason),
            Ok(ClientMessage::Relay(frame)) => {
                let channel = crate::bus::relay_channel();
                let home = self.home("");
                let msg = BusMessage::Publish {
                    channel,
                    from: conn,
                    user: None,
                    infos: None,
                    payload: PubPayload::Relay(frame),
                    reply: None,
                };
                self.send_bus(home, msg);
            }
            Ok(ClientMessage::Chat(text)) if c.codec == Codec::Centrifuge => {
                self.centrifuge_frame(now, conn, &text);
            }
            Ok(ClientMessage::Chat(text)) => {
                match self.spend_command(now, conn) {
                    Verdict::Allowed => {}
                    Verdict::Refused => return,
                    Verdict::Flooding => return self.end(conn, CloseReason::TooManyRequests),
                }
                if !self.spend_publish(now, user.as_ref()) {
                    return;
                }
                let Some(c) = self.conns.get(&conn) else {
                    return;
                };
                // Decode checked UTF-8; a failure here would be a core bug, so
                // fall back to a lossy copy rather than panic.
                let content: Arc<str> = String::from_utf8_lossy(&text).into();
                let rooms: Vec<ChannelName> = c
                    .subs
                    .iter()
                    .map(|(r, _)| r.clone())
                    .chain(c.pending.iter().map(|p| p.channel.clone()))
                    .collect();
                for channel in rooms {
                    let home = self.home(channel.as_str());
                    let msg = BusMessage::Publish {
                        channel,
                        from: conn,
                        user: user.clone(),
                        infos: None,
                        payload: PubPayload::Text(content.clone()),
                        reply: None,
                    };
                    self.send_bus(home, msg);
                }
            }
        }
    }

    /// Removes `conn` for `reason`: its close first, then its leaves, whose
    /// notices the homes send the rooms it was in.
    pub(super) fn end(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(mut c) = self.conns.remove(&conn) else {
            return;
        };
        self.timers.remove(&(c.timer, conn));
        if let Some(user) = &c.user {
            self.release_user(user, conn);
        }
        self.count_close(reason);
        self.outputs.push_back(Output::Close { conn, reason });
        for (channel, seq) in &c.subs {
            self.leave_local(channel, *seq);
        }
        // Joins still in flight are left too: the home handles them in order.
        let channels = c.subs.into_iter().map(|(ch, _)| ch).chain(
            c.pending
                .take()
                .into_iter()
                .filter(|p| !p.cancelled)
                .map(|p| p.channel),
        );
        for channel in channels {
            let home = self.home(channel.as_str());
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
    }

    pub(super) fn leave_local(&mut self, channel: &ChannelName, seq: u64) {
        if let Some(room) = self.local.get_mut(channel) {
            room.members.remove(seq);
            if room.members.is_empty() {
                self.local.remove(channel);
            }
        }
    }

    pub(super) fn shutdown(&mut self) {
        self.shutting_down = true;
        let conns = std::mem::take(&mut self.conns);
        for conn in conns.into_keys() {
            self.count_close(CloseReason::ServerShutdown);
            self.outputs.push_back(Output::Close {
                conn,
                reason: CloseReason::ServerShutdown,
            });
        }
        self.local.clear();
        self.rooms.clear();
        self.timers.clear();
        self.presence_timers.clear();
        self.users.clear();
        self.user_homes.clear();
        self.idle.clear();
        self.bus_self.clear();
    }

    /// Counts `conn`'s user (if named) against `user_connection_limit`;
    /// false, counting nothing, when the user is at the limit.
    pub(super) fn admit_user(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let Some(user) = self.conns.get(&conn).and_then(|c| c.user.clone()) else {
            return true;
        };
        if self.config.user_connection_limit > 0 {
            let home = self.home(user.as_str());
            let here = (self.config.shard, conn);
            if home == self.config.shard {
                // Decided now, exactly.
                if !self.count_user_conn(&user, here) {
                    // The user keeps the connections it has; this one is refused.
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.user = None;
                    }
                    return false;
                }
            } else {
                // Let in now; the user's home closes it (3504) if it is
                // over the limit across shards.
                let msg = BusMessage::UserConnected {
                    user: user.clone(),
                    conn,
                    shard: self.config.shard,
                };
                self.send_bus(home, msg);
            }
        }
        let rate = self.config.user_publish_rate;
        let entry = self.users.entry(user).or_insert_with(|| UserEntry {
            conns: 0,
            publish: Bucket::full(rate.unwrap_or(crate::rate::Rate::new(0, 0)), now),
        });
        entry.conns += 1;
        true
    }

    /// At `user`'s home: counts `conn` (on its shard) unless the user is at
    /// `user_connection_limit`; false, counting nothing, then.
    pub(super) fn count_user_conn(&mut self, user: &Name, conn: (ShardId, ConnId)) -> bool {
        let limit = self.config.user_connection_limit;
        if self.config.shards <= 1 {
            // One shard: `users` already counts the user's every connection
            // exactly, so a second map (one entry per named connection) is
            // not kept.
            let held = self.users.get(user).map_or(0, |u| u.conns as usize);
            return limit == 0 || held < limit;
        }
        let conns = self.user_homes.entry(user.clone()).or_default();
        if limit > 0 && conns.len() >= limit {
            if conns.is_empty() {
                self.user_homes.remove(user);
            }
            return false;
        }
        if let Err(at) = conns.binary_search(&conn) {
            if conns.capacity() == 0 {
                conns.reserve_exact(1);
            }
            conns.insert(at, conn);
        }
        true
    }

    /// At `user`'s home: `conn` ended (a refused one was never counted).
    pub(super) fn uncount_user_conn(&mut self, user: &Name, conn: (ShardId, ConnId)) {
        if self.config.shards <= 1 {
            return; // counted in `users` (see `count_user_conn`)
        }
        if let Some(conns) = self.user_homes.get_mut(user) {
            if let Ok(at) = conns.binary_search(&conn) {
                conns.remove(at);
            }
            if conns.is_empty() {
                self.user_homes.remove(user);
            }
        }
    }

    fn release_user(&mut self, user: &Name, conn: ConnId) {
        if let Some(entry) = self.users.get_mut(user) {
            entry.conns = entry.conns.saturating_sub(1);
            if entry.conns == 0 {
                self.users.remove(user);
            }
        }
        if self.config.user_connection_limit > 0 {
            let home = self.home(user.as_str());
            let here = (self.config.shard, conn);
            if home == self.config.shard {
                self.uncount_user_conn(user, here);
            } else {
                let msg = BusMessage::UserDisconnected {
                    user: user.clone(),
                    conn,
                    shard: self.config.shard,
                };
                self.send_bus(home, msg);
            }
        }
    }

    /// Spends one of `conn`'s `command_rate` tokens.
    pub(super) fn spend_command(&mut self, now: Timestamp, conn: ConnId) -> Verdict {
        let Some(rate) = self.config.command_rate else {
            return Verdict::Allowed;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Verdict::Allowed;
        };
        let verdict = c.commands.take(rate, now);
        if verdict != Verdict::Allowed {
            self.stats.commands_limited += 1;
        }
        verdict
    }

    /// Spends one of `user`'s `user_publish_rate` tokens; false (counted)
    /// when the user is over it. Anonymous publishers have no user budget.
    pub(super) fn spend_publish(&mut self, now: Timestamp, user: Option<&Name>) -> bool {
        let (Some(rate), Some(user)) = (self.config.user_publish_rate, user) else {
            return true;
        };
        let Some(entry) = self.users.get_mut(user) else {
            return true;
        };
        // No debt here: the user's connections are not closed for it.
        if entry.publish.try_take(rate, now) {
            true
        } else {
            self.stats.publishes_limited += 1;
            false
        }
    }

    pub(super) fn count_close(&mut self, reason: CloseReason) {
        if let Some(i) = CloseReason::ALL.iter().position(|r| *r == reason) {
            self.stats.closes[i] += 1;
        }
    }
    // ---- the Centrifugo protocol -------------------------------------------

    /// Handles a Centrifugo frame's commands in order, each one through to
    /// its local effects before the next. A malformed line closes the
    /// connection (3501) after the commands before it.
    pub(super) fn centrifuge_frame(&mut self, now: Timestamp, conn: ConnId, payload: &[u8]) {
        let (lines, malformed) = centrifuge::decode_frame(payload);
        for line in lines {
            if let Err(Disconnect(reason)) = self.centrifuge_line(now, conn, line) {
                self.end(conn, reason);
                return;
            }
            self.pump();
            if !self.conns.contains_key(&conn) {
                return;
            }
        }
        if malformed.is_some() {
            self.end(conn, CloseReason::BadRequest);
        }
    }

    pub(super) fn reply(&mut self, conn: ConnId, bytes: Bytes) {
        self.outputs.push_back(Output::Send {
            conn,
            frame: Frame::text(bytes),
            presence: None,
        });
        self.stats.sends += 1;
    }

    pub(super) fn error(&mut self, conn: ConnId, id: u32, code: ErrorCode) {
        self.stats.command_errors += 1;
        self.reply(conn, centrifuge::error_reply(id, code));
    }

    pub(super) fn centrifuge_line(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        line: Line,
    ) -> CommandResult {
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let (id, command) = match line {
            // Anything before `connect` is a bad request, a pong included.
            _ if !c.connected
                && !matches!(
                    line,
                    Line::Command {
                        command: Command::Connect(_),
                        ..
                    }
                ) =>
            {
                return Err(Disconnect(CloseReason::BadRequest));
            }
            Line::Pong => {
                if !std::mem::take(&mut c.ping_outstanding) {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                c.last_pong = now;
                return Ok(());
            }
            Line::Unknown { .. } => return Err(Disconnect(CloseReason::BadRequest)),
            Line::Command { id, command } => (id, command),
        };
        self.stats.commands += 1;
        if !matches!(command, Command::Connect(_)) {
            match self.spend_command(now, conn) {
                Verdict::Allowed => {}
                Verdict::Refused => {
                    if id != 0 {
                        self.error(conn, id, ErrorCode::TooManyRequests);
                    }
                    return Ok(());
                }
                Verdict::Flooding => return Err(Disconnect(CloseReason::TooManyRequests)),
            }
        }
        match command {
            Command::Connect(req) => self.connect(now, conn, id, &req.token),
            Command::Subscribe(req) => self.subscribe(now, conn, id, &req),
            Command::Unsubscribe { channel } => self.unsubscribe(conn, id, &channel),
            Command::Publish { channel, data } => {
                self.client_publish(now, conn, id, &channel, data)
            }
            Command::Presence { channel } => self.presence(conn, id, &channel, false),
            Command::PresenceStats { channel } => self.presence(conn, id, &channel, true),
            Command::History(req) => self.history(conn, id, &req),
            Command::Ping => {
                self.error(conn, id, ErrorCode::NotAvailable);
                Ok(())
            }
            // No application handler for asynchronous messages: say so, as
            // Centrifugo does, rather than drop them silently.
            Command::Send { .. } => Err(Disconnect(CloseReason::NotAvailable)),
            Command::Rpc { .. } => {
                self.error(conn, id, ErrorCode::MethodNotFound);
                Ok(())
            }
            Command::Refresh { token } => {
                if token.is_empty() {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                if self.config.tokens.enabled() {
                    return self.refresh(now, conn, id, &token);
                }
                // No tokens are checked: connections do not expire, nothing to extend.
                self.reply(conn, centrifuge::reply(id, "refresh", |_| {}));
                Ok(())
            }
            Command::SubRefresh { channel, token } => {
                if channel.is_empty() {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
                let subscribed = self.conns.get(&conn).and_then(|c| c.sub(&channel));
                if subscribed.is_none() {
                    self.error(conn, id, ErrorCode::PermissionDenied);
                } else if token.is_empty() {
                    self.error(conn, id, ErrorCode::BadRequest);
                } else if self.config.tokens.enabled() {
                    return self.sub_refresh(now, conn, id, &channel, &token);
                } else {
                    self.reply(conn, centrifuge::reply(id, "sub_refresh", |_| {}));
                }
                Ok(())
            }
        }
    }

    pub(super) fn connect(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: u32,
        token: &str,
    ) -> CommandResult {
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        if c.connected {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        // With a verifier: a token names the user, or its absence makes an
        // anonymous one where that is allowed. Without: nothing is checked.
        let mut user = None;
        let mut expires = None;
        let mut channels = Vec::new();
        let mut conn_info = None;
        if self.config.tokens.enabled() {
            if token.is_empty() {
                if !self.config.allow_anonymous {
                    return Err(Disconnect(CloseReason::BadRequest));
                }
            } else {
                let claims = self.connection_claims(token)?;
                match claims.timing(now) {
                    Timing::Expired => {
                        self.error(conn, id, ErrorCode::TokenExpired);
                        return Ok(());
                    }
                    Timing::Valid(at) => expires = at.map(Timestamp::from_millis),
                }
                user = claims_user(&claims.sub)?;
                channels = claims.channels;
                conn_info = claims.info;
            }
        }
        // Server-side subscriptions must name configured namespaces (102).
        for channel in &channels {
            match self.channel_options(channel)? {
                Ok(_) => {}
                Err(code) => {
                    self.error(conn, id, code);
                    return Ok(());
                }
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        c.connected = true;
        c.user = user;
        if !self.admit_user(now, conn) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.user = None; // not counted: nothing to release
            }
            return Err(Disconnect(CloseReason::ConnectionLimit));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        c.auth = (expires.is_some() || conn_info.is_some()).then(|| {
            Box::new(Auth {
                expires,
                conn_info,
                ..Auth::default()
            })
        });
        c.last_pong = now;
        c.next_ping = now.saturating_add(self.config.ping_interval);
        self.timers.remove(&(c.timer, conn));
        c.timer = c.next_timer(&self.config);
        self.timers.insert((c.timer, conn));
        let client = self.client_id(conn).to_string();
        let version = self.config.server_version.clone();
        let ping = self.config.ping_interval.as_secs().max(1);
        self.reply(
            conn,
            centrifuge::reply(id, "connect", |r| {
                r.str("client", &client).str("version", &version);
                if let Some(at) = expires {
                    r.bool("expires", true)
                        .uint("ttl", crate::auth::ttl_secs(now, at.as_millis()));
                }
                r.uint("ping", ping).bool("pong", true);
            }),
        );
        for channel in channels {
            if self.conns.get(&conn).is_some_and(|c| {
                c.sub(&channel).is_some()
                    || c.subscribing(&channel)
                    || c.subs.len() + c.pending.len() >= self.config.channel_limit
            }) {
                continue;
            }
            let options = self.config.namespaces.resolve(&channel).ok().cloned();
            let history = options.as_ref().is_some_and(|o| o.history());
            let positioned = history && options.as_ref().is_some_and(|o| o.force_positioning);
            let recoverable = history && options.as_ref().is_some_and(|o| o.force_recovery);
            let ask = SubscribeAsk {
                id: 0,
                positioned: positioned || recoverable,
                recoverable,
                recover: None,
                expires: None,
                server_side: true,
            };
            let join_leave = options
                .as_ref()
                .is_some_and(|o| o.join_leave && o.force_push_join_leave);
            self.ask_join(conn, ChannelName::new(&channel), Some(ask), join_leave, 0);
        }
        Ok(())
    }

    /// A connection token's verified claims; anything invalid closes with 3500.
    fn connection_claims(&self, token: &str) -> Result<crate::auth::Claims, Disconnect> {
        let claims = self
            .config
            .tokens
            .claims(token)
            .map_err(|_| Disconnect(CloseReason::InvalidToken))?;
        // A subscription token is not a connection token.
        if claims.channel.is_some() {
            return Err(Disconnect(CloseReason::InvalidToken));
        }
        Ok(claims)
    }

    /// `refresh` with a verifier: a valid token for the same user extends
    /// the connection; an expired one closes it with 3005, any other 3500.
    pub(super) fn refresh(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: u32,
        token: &str,
    ) -> CommandResult {
        let claims = self.connection_claims(token)?;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if claims.sub != c.user_str() {
            return Err(Disconnect(CloseReason::InvalidToken));
        }
        let expires = match claims.timing(now) {
            Timing::Expired => return Err(Disconnect(CloseReason::ConnectionExpired)),
            Timing::Valid(at) => at.map(Timestamp::from_millis),
        };
        match (&mut c.auth, expires) {
            (Some(auth), _) => auth.expires = expires,
            (None, Some(_)) => {
                c.auth = Some(Box::new(Auth {
                    expires,
                    ..Auth::default()
                }));
            }
            (None, None) => {}
        }
        self.timers.remove(&(c.timer, conn));
        c.timer = c.next_timer(&self.config);
        self.timers.insert((c.timer, conn));
        self.reply(
            conn,
            centrifuge::reply(id, "refresh", |r| {
                if let Some(at) = expires {
                    r.bool("expires", true)
                        .uint("ttl", crate::auth::ttl_secs(now, at.as_millis()));
                }
            }),
        );
        Ok(())
    }

    /// A subscription token's verified claims for `channel`: `Ok(Err(code))`
    /// for an answer (103 invalid, 109 expired), `Err` to close with 3500
    /// when it is for another channel, user or client; `Ok(Ok(expiry))`.
    fn subscription_claims(
        &self,
        now: Timestamp,
        conn: ConnId,
        channel: &str,
        token: &str,
        invalid: Option<ErrorCode>,
    ) -> Result<Result<SubscriptionGrant, ErrorCode>, Disconnect> {
        let Ok(claims) = self.config.tokens.claims(token) else {
            return invalid
                .map(Err)
                .ok_or(Disconnect(CloseReason::InvalidToken));
        };
        let user = self.conns.get(&conn).map_or("", Conn::user_str);
        let client = self.client_id(conn).to_string();
        if claims.channel.as_deref() != Some(channel)
            || claims.sub != user
            || claims.client.as_ref().is_some_and(|c| *c != client)
        {
            return Err(Disconnect(CloseReason::InvalidToken));
        }
        Ok(match claims.timing(now) {
            Timing::Expired => Err(ErrorCode::TokenExpired),
            Timing::Valid(at) => Ok((at, claims.info)),
        })
    }

    /// `sub_refresh` with a verifier: a valid token for the subscription
    /// extends it (or makes it last while the token has no `exp`).
    pub(super) fn sub_refresh(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: u32,
        channel: &str,
        token: &str,
    ) -> CommandResult {
        let expires = match self.subscription_claims(now, conn, channel, token, None)? {
            Ok((at, _)) => at,
            Err(code) => {
                self.error(conn, id, code);
                return Ok(());
            }
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if let Some(auth) = c.auth.as_mut() {
            auth.subs.retain(|(ch, _)| ch.as_str() != channel);
        }
        if let Some(at) = expires {
            c.auth
                .get_or_insert_with(Box::default)
                .subs
                .push((ChannelName::new(channel), Timestamp::from_millis(at)));
        }
        self.timers.remove(&(c.timer, conn));
        c.timer = c.next_timer(&self.config);
        self.timers.insert((c.timer, conn));
        self.reply(
            conn,
            centrifuge::reply(id, "sub_refresh", |r| {
                if let Some(at) = expires {
                    r.bool("expires", true)
                        .uint("ttl", crate::auth::ttl_secs(now, at));
                }
            }),
        );
        Ok(())
    }

    /// Acts on `conn`'s token expiries due at `now`: closes an expired
    /// connection (3005), ends expired subscriptions with an `unsubscribe`
    /// push (2501: the SDK gets a new token and resubscribes). True when
    /// the connection was closed.
    pub(super) fn expire(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let delay = self.config.expired_close_delay;
        let Some(c) = self.conns.get_mut(&conn) else {
            return true;
        };
        let Some(auth) = c.auth.as_mut() else {
            return false;
        };
        if auth
            .expires
            .is_some_and(|at| at.saturating_add(delay) <= now)
        {
            self.end(conn, CloseReason::ConnectionExpired);
            return true;
        }
        let mut expired = Vec::new();
        auth.subs.retain(|(ch, at)| {
            let keep = at.saturating_add(delay) > now;
            if !keep {
                expired.push(ch.clone());
            }
            keep
        });
        if auth.is_empty() {
            c.auth = None;
        }
        for channel in expired {
            let Some(c) = self.conns.get_mut(&conn) else {
                break;
            };
            let Some(i) = c.subs.iter().position(|(ch, _)| *ch == channel) else {
                continue;
            };
            let (_, seq) = c.subs.remove(i);
            self.leave_local(&channel, seq);
            self.reply(
                conn,
                centrifuge::unsubscribe_push(channel.as_str(), 2501, "subscription expired"),
            );
            let home = self.home(channel.as_str());
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
        false
    }

    /// The checks every channel command shares, in Centrifugo's order:
    /// empty (3501), too long (107), unknown namespace (102), pattern (107).
    pub(super) fn channel_options(
        &self,
        channel: &str,
    ) -> Result<Result<Arc<ChannelOptions>, ErrorCode>, Disconnect> {
        if channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        if channel.len() > self.config.max_channel_bytes {
            return Ok(Err(ErrorCode::BadRequest));
        }
        let Ok(options) = self.config.namespaces.resolve(channel) else {
            return Ok(Err(ErrorCode::UnknownChannel));
        };
        if options
            .channel_regex
            .as_ref()
            .is_some_and(|p| !p.is_match(channel))
        {
            return Ok(Err(ErrorCode::BadRequest));
        }
        Ok(Ok(options.clone()))
    }

    pub(super) fn subscribe(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: u32,
        req: &centrifuge::SubscribeRequest,
    ) -> CommandResult {
        if req.channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let channels = c.subs.len() + c.pending.iter().filter(|p| !p.cancelled).count();
        let refusal = if req.channel.len() > self.config.max_channel_bytes {
            Some(ErrorCode::BadRequest)
        } else if c.sub(&req.channel).is_some() || c.subscribing(&req.channel) {
            Some(ErrorCode::AlreadySubscribed)
        } else if channels >= self.config.channel_limit {
            Some(ErrorCode::LimitExceeded)
        } else {
            None
        };
        if let Some(code) = refusal {
            self.error(conn, id, code);
            return Ok(());
        }
        let anonymous = c.anonymous();
        let user = c.user_str().to_owned();
        let options = match self.channel_options(&req.channel)? {
            Ok(options) => options,
            Err(code) => {
                self.error(conn, id, code);
                return Ok(());
            }
        };
        // Centrifugo's order: a valid subscription token; a user-limited
        // channel that lists the user; the namespace's permissions. A
        // private (`$`) channel takes a token, and nothing else. Without
        // a verifier tokens are not checked, so no one enters `$` channels.
        let mut expires = None;
        let allowed = if !req.token.is_empty() && self.config.tokens.enabled() {
            let checked = self.subscription_claims(
                now,
                conn,
                &req.channel,
                &req.token,
                Some(ErrorCode::PermissionDenied),
            )?;
            match checked {
                Ok((at, info)) => {
                    expires = at;
                    if let (Some(info), Some(c)) = (info, self.conns.get_mut(&conn)) {
                        let auth = c.auth.get_or_insert_with(Box::default);
                        auth.chan_infos.retain(|(ch, _)| ch.as_str() != req.channel);
                        auth.chan_infos.push((ChannelName::new(&req.channel), info));
                    }
                    true
                }
                Err(code) => {
                    self.error(conn, id, code);
                    return Ok(());
                }
            }
        } else if channel::parse(&req.channel).private {
            false
        } else if options.allow_user_limited_channels && req.channel.contains('#') {
            crate::auth::user_listed(&req.channel, &user)
        } else {
            options.allow_subscribe_for_client
                && (!anonymous || options.allow_subscribe_for_anonymous)
        };
        if !allowed {
            self.error(conn, id, ErrorCode::PermissionDenied);
            return Ok(());
        }
        let history = options.history();
        let history_access = history
            && (!anonymous || options.allow_history_for_anonymous)
            && (options.allow_history_for_client || options.allow_history_for_subscriber);
        let presence_access = options.presence
            && (!anonymous || options.allow_presence_for_anonymous)
            && (options.allow_presence_for_client || options.allow_presence_for_subscriber);
        // A resubscribe asks to `recover` without repeating `recoverable`.
        let asks_recovery = req.recoverable || req.recover;
        let recoverable = history
            && (options.force_recovery
                || asks_recovery && (options.allow_recovery || history_access));
        let positioned = history
            && (recoverable
                || options.force_positioning
                || req.positioned && (options.allow_positioning || history_access));
        let join_leave = options.join_leave
            && (options.force_push_join_leave || req.join_leave && presence_access);
        // The home decides: recovered with what was missed, or told plainly.
        let ask = SubscribeAsk {
            id,
            positioned,
            recoverable,
            recover: (req.recover && recoverable).then(|| (req.offset, req.epoch.clone())),
            expires,
            server_side: false,
        };
        self.ask_join(
            conn,
            ChannelName::new(&req.channel),
            Some(ask),
            join_leave,
            0,
        );
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, id: u32, channel: &str) -> CommandResult {
        if channel.is_empty() {
            return Err(Disconnect(CloseReason::BadRequest));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let channel = ChannelName::new(channel);
        if let Some(auth) = c.auth.as_mut() {
            auth.subs.retain(|(ch, _)| *ch != channel);
            auth.chan_infos.retain(|(ch, _)| *ch != channel);
        }
        let mut leave = false;
        if let Some(i) = c.subs.iter().position(|(ch, _)| *ch == channel) {
            let (_, seq) = c.subs.remove(i);
            self.leave_local(&channel, seq);
            leave = true;
        } else if let Some(p) = c
            .pending
            .iter_mut()
            .find(|p| !p.cancelled && p.channel == channel)
        {
            p.cancelled = true;
            leave = true;
        }
        self.reply(conn, centrifuge::reply(id, "unsubscribe", |_| {}));
        if leave {
            let home = self.home(channel.as_str());
            self.send_bus(home, BusMessage::Leave { channel, conn });
        }
        Ok(())
    }

    /// The checks every channel command shares, then `conn`'s standing in
    /// the channel. Answers the error itself: `None` when it did (or the
    /// connection is gone).
    pub(super) fn standing(
        &mut self,
        conn: ConnId,
        id: u32,
        channel: &str,
    ) -> Result<Option<Standing>, Disconnect> {
        let options = match self.channel_options(channel)? {
            Ok(options) => options,
            Err(code) => {
                self.error(conn, id, code);
                return Ok(None);
            }
        };
        Ok(self.conns.get(&conn).map(|c| Standing {
            restricted: channel::parse(channel).private
                || options.allow_user_limited_channels && channel.contains('#'),
            options,
            anonymous: c.anonymous(),
            subscribed: c.sub(channel).is_some(),
            user: c.user.clone(),
        }))
    }

    pub(super) fn client_publish(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        id: u32,
        channel: &str,
        data: Option<Bytes>,
    ) -> CommandResult {
        let Some(st) = self.standing(conn, id, channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !st.may(
            o.allow_publish_for_anonymous,
            o.allow_publish_for_client,
            o.allow_publish_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
            return Ok(());
        }
        let Some(data) = data else {
            self.error(conn, id, ErrorCode::BadRequest);
            return Ok(());
        };
        if !o.publication_data_format.accepts(&data) {
            self.error(conn, id, ErrorCode::BadRequest);
            return Ok(());
        }
        if !self.spend_publish(now, st.user.as_ref()) {
            self.error(conn, id, ErrorCode::TooManyRequests);
            return Ok(());
        }
        // The home answers, once the publication is accepted (durable).
        let home = self.home(channel);
        let infos = self.conns.get(&conn).and_then(|c| c.infos(channel));
        let msg = BusMessage::Publish {
            channel: ChannelName::new(channel),
            from: conn,
            user: st.user,
            infos,
            payload: PubPayload::Json(data),
            reply: Some((self.config.shard, id)),
        };
        self.send_bus(home, msg);
        Ok(())
    }

    /// Sends `query` about `channel` to its home, which answers `id`.
    pub(super) fn ask(&mut self, conn: ConnId, id: u32, channel: &str, query: Query) {
        let home = self.home(channel);
        let msg = BusMessage::Query {
            channel: ChannelName::new(channel),
            conn,
            shard: self.config.shard,
            id,
            query,
        };
        self.send_bus(home, msg);
    }

    pub(super) fn presence(
        &mut self,
        conn: ConnId,
        id: u32,
        channel: &str,
        stats: bool,
    ) -> CommandResult {
        let Some(st) = self.standing(conn, id, channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !o.presence {
            self.error(conn, id, ErrorCode::NotAvailable);
        } else if !st.may(
            o.allow_presence_for_anonymous,
            o.allow_presence_for_client,
            o.allow_presence_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
        } else {
            let query = if stats {
                Query::PresenceStats
            } else {
                Query::Presence
            };
            self.ask(conn, id, channel, query);
        }
        Ok(())
    }

    pub(super) fn history(
        &mut self,
        conn: ConnId,
        id: u32,
        req: &centrifuge::HistoryRequest,
    ) -> CommandResult {
        let Some(st) = self.standing(conn, id, &req.channel)? else {
            return Ok(());
        };
        let o = &st.options;
        if !o.history() {
            self.error(conn, id, ErrorCode::NotAvailable);
        } else if !st.may(
            o.allow_history_for_anonymous,
            o.allow_history_for_client,
            o.allow_history_for_subscriber,
        ) {
            self.error(conn, id, ErrorCode::PermissionDenied);
        } else {
            let query = Query::History {
                limit: req.limit,
                since: req.since.clone(),
                reverse: req.reverse,
            };
            self.ask(conn, id, &req.channel, query);
        }
        Ok(())
    }
}
