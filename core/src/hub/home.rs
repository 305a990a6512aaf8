//! The home side of the hub: a channel homed on this shard keeps its
//! members on every shard in join order, its stream position (offset,
//! epoch) and the order of its publications, and sends each publication,
//! join and leave once per shard with members, encoded once per protocol.

use super::api::{self, PubReply};
use super::*;
use crate::bus::ApiPart;
use crate::store::{PresenceChange, RemoteMember, StoreError, StreamState};

/// A member as the channel's home knows it.
#[derive(Clone, Debug)]
pub(super) struct HomeMember {
    pub(super) conn: ConnId,
    pub(super) shard: ShardId,
    pub(super) codec: Codec,
    pub(super) user: Option<Name>,
    pub(super) infos: crate::bus::Infos,
    pub(super) join_leave: bool,
}

/// A publication waiting for the store to make it durable.
#[derive(Debug)]
pub(super) struct Appending {
    from: ConnId,
    reply: PubReply,
    /// As the window will keep it, once it has its offset.
    stored: Stored,
}

/// A channel homed on this shard: every member on every shard.
#[derive(Debug)]
pub(super) struct Room {
    pub(super) options: Arc<ChannelOptions>,
    /// Members in join order.
    pub(super) members: JoinOrder<HomeMember>,
    /// Members per shard, by shard: where deliveries go.
    pub(super) shards: Vec<(ShardId, u32)>,
    /// Seed members (who need `online_users` and notices).
    pub(super) seed_members: u32,
    /// Centrifugo members that get join/leave pushes.
    pub(super) join_leave_members: u32,
    /// Publications accepted so far: the offset of the last one (the stream's top).
    pub(super) top: u64,
    /// The stream's epoch, fixed when the channel came to be.
    pub(super) epoch: u64,
    /// While the channel has no members: its place in the idle streams' order.
    pub(super) idle: Option<u64>,
    /// The stream's window: the latest publications, at most
    /// `history_size` and none older than `history_ttl` (kept while the
    /// channel has members; keeping streams past that is the store's job).
    pub(super) history: VecDeque<Stored>,
    /// `presence_rate`'s budget for `online_users` (`None`: full).
    pub(super) presence_budget: Option<crate::rate::Bucket>,
    /// A snapshot is held back and waits in `Hub::presence_timers`.
    pub(super) presence_held: bool,
    /// What only some rooms need (a publication waiting for the one
    /// before it, members on other nodes), boxed: every room pays 8 bytes
    /// for it, not 48, and an idle room of one member is the common case.
    delivering: Option<Box<Delivering>>,
}

/// The part of a [`Room`] that publications out of order and a delivering
/// engine's other nodes need.
#[derive(Debug, Default)]
struct Delivering {
    /// Publications after `top` that came before the one at `top + 1` (a
    /// delivering engine: this home's own append answered before another
    /// node's publication was delivered), by offset; at most
    /// `MAX_PUBLICATIONS`.
    pending: BTreeMap<u64, Stored>,
    /// Members on other nodes (a delivering engine), by (node, client),
    /// each with its place in this home's join order.
    remote: BTreeMap<RemoteKey, RemoteEntry>,
}

/// The remote members of a room without any.
static NO_REMOTE_MEMBERS: BTreeMap<RemoteKey, RemoteEntry> = BTreeMap::new();

/// A member on another node, as a [`Room`] files it: the node and the
/// client id, in that order. The id is held as two `u64` halves so the
/// key is 8-byte aligned (24 bytes, not the 32 a `u128` field pads to):
/// a node of a cluster keeps several remote members per local connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RemoteKey {
    node: u64,
    client_high: u64,
    client_low: u64,
}

impl RemoteKey {
    pub(super) fn new(node: u64, client: ClientId) -> Self {
        Self {
            node,
            // Truncation is the point: the two halves of the id.
            #[allow(clippy::cast_possible_truncation)]
            client_high: (client.0 >> 64) as u64,
            #[allow(clippy::cast_possible_truncation)]
            client_low: client.0 as u64,
        }
    }

    pub(super) fn node(self) -> u64 {
        self.node
    }

    pub(super) fn client(self) -> ClientId {
        ClientId(u128::from(self.client_high) << 64 | u128::from(self.client_low))
    }
}

/// What a [`Room`] keeps of a member on another node besides its key.
#[derive(Clone, Debug)]
pub(super) struct RemoteEntry {
    /// Its place in this home's join order.
    pub(super) seq: u64,
    pub(super) user: Option<Name>,
    pub(super) infos: crate::bus::Infos,
}

impl RemoteEntry {
    pub(super) fn member(&self, key: RemoteKey) -> RemoteMember {
        RemoteMember {
            node: key.node(),
            client: key.client(),
            user: self.user.clone(),
            infos: self.infos.clone(),
        }
    }
}

/// The most publications one recovery or one `history` reply carries
/// (Centrifugo's `recovery_max_publication_limit` and
/// `history_max_publication_limit`).
pub(super) const MAX_PUBLICATIONS: usize = 300;

impl Room {
    pub(super) fn new(
        options: Arc<ChannelOptions>,
        top: u64,
        epoch: u64,
        tail: Vec<Stored>,
    ) -> Self {
        Self {
            options,
            members: JoinOrder::new(),
            shards: Vec::new(),
            seed_members: 0,
            join_leave_members: 0,
            top,
            epoch,
            idle: None,
            history: tail.into(),
            presence_budget: None,
            presence_held: false,
            delivering: None,
        }
    }

    /// Members on other nodes, by (node, client).
    pub(super) fn remote(&self) -> &BTreeMap<RemoteKey, RemoteEntry> {
        self.delivering
            .as_ref()
            .map_or(&NO_REMOTE_MEMBERS, |d| &d.remote)
    }

    fn delivering_mut(&mut self) -> &mut Delivering {
        self.delivering.get_or_insert_with(Box::default)
    }

    fn remove_remote(&mut self, key: RemoteKey) -> Option<RemoteEntry> {
        self.delivering.as_mut()?.remote.remove(&key)
    }

    fn pending_len(&self) -> usize {
        self.delivering.as_ref().map_or(0, |d| d.pending.len())
    }

    /// Keeps `stored` until the publications before it are out (at most
    /// `MAX_PUBLICATIONS`; beyond, a gap the clients recover from).
    fn hold(&mut self, stored: Stored) {
        if self.pending_len() < MAX_PUBLICATIONS {
            self.delivering_mut().pending.insert(stored.offset, stored);
        }
    }

    fn clear_pending(&mut self) {
        if let Some(d) = self.delivering.as_mut() {
            d.pending.clear();
        }
    }

    /// The publication at `next` if it is held, dropping those before it
    /// (already seen).
    fn take_pending(&mut self, next: u64) -> Option<Stored> {
        let d = self.delivering.as_mut()?;
        d.pending = d.pending.split_off(&next);
        d.pending.remove(&next)
    }

    /// Drops what is beyond the window's size or age.
    fn trim(&mut self, now: Timestamp) {
        crate::store::trim(&mut self.history, self.options.stream_limits(), now);
    }

    /// Whether the window still holds every publication after `offset`.
    fn holds_after(&self, offset: u64) -> bool {
        offset >= self.top
            || self
                .history
                .front()
                .is_some_and(|oldest| oldest.offset <= offset + 1)
    }
}

impl Room {
    pub(super) fn codecs(&self) -> (bool, bool, bool) {
        self.members
            .values()
            .fold((false, false, false), |(s, c, r), m| match m.codec {
                Codec::SeedJson => (true, c, r),
                Codec::Centrifuge => (s, true, r),
                Codec::Relay => (s, c, true),
            })
    }
}

impl Hub {
    // ---- the home side: a channel's members, order and position ---------------

    pub(super) fn home_join(
        &mut self,
        channel: &ChannelName,
        member: HomeMember,
        attempt: u32,
        (recover, last): (Option<(u64, String)>, u8),
    ) {
        let seq = self.next_join_seq;
        self.next_join_seq += 1;
        if !self.rooms.contains_key(channel) {
            // A channel without a stream (no history, or the relay): its
            // room is made here. Streams are opened from the store first.
            let options = self
                .config
                .namespaces
                .resolve_room(channel.as_str())
                .clone();
            let epoch = self.new_epoch();
            self.rooms.insert(
                channel.clone(),
                Box::new(Room::new(options, 0, epoch, Vec::new())),
            );
            // Other nodes' publications to it (the relay's frames too) come
            // through the engine.
            if self.delivering && !self.unfollow.remove(channel) {
                self.follow.insert(channel.clone());
            }
        }
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        if let Some(seq) = room.idle.take() {
            self.idle.remove(&(seq, channel.clone()));
        }
        match room.shards.binary_search_by_key(&member.shard, |(s, _)| *s) {
            Ok(i) => room.shards[i].1 += 1,
            Err(i) => {
                if room.shards.capacity() == 0 {
                    room.shards.reserve_exact(1);
                }
                room.shards.insert(i, (member.shard, 1));
            }
        }
        if member.codec == Codec::SeedJson {
            room.seed_members += 1;
        }
        if member.codec == Codec::Centrifuge && member.join_leave {
            room.join_leave_members += 1;
        }
        let (top, epoch) = (room.top, room.epoch);
        let (conn, to) = (member.conn, member.shard);
        let user = member.user.clone();
        let infos = member.infos.clone();
        if self.delivering && !channel.as_str().is_empty() {
            self.presence_changes.push_back(PresenceChange {
                channel: channel.clone(),
                joined: true,
                client: self.client_id(conn),
                user: user.clone(),
                infos: infos.clone(),
            });
        }
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        room.members.insert(seq, member);
        // Registered and answered in one step: the missed publications in
        // the reply, then live ones from top + 1, none twice, none lost.
        room.trim(self.now);
        let recovery = recover.map(|(offset, client_epoch)| {
            let same_stream = client_epoch.is_empty() || client_epoch == epoch_text(epoch);
            let missed = top.saturating_sub(offset);
            let recovered = same_stream
                && offset <= top
                && missed <= MAX_PUBLICATIONS as u64
                && room.holds_after(offset);
            let publications = if recovered {
                room.history
                    .iter()
                    .filter(|p| p.offset > offset)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            Recovery {
                recovered,
                publications,
            }
        });
        // A seed client's `history=N`: the last N lines.
        let recovery = recovery.or_else(|| {
            (last > 0).then(|| {
                let skip = room.history.len().saturating_sub(usize::from(last));
                Recovery {
                    recovered: false,
                    publications: room.history.iter().skip(skip).cloned().collect(),
                }
            })
        });
        self.send_bus(
            to,
            BusMessage::Joined {
                channel: channel.clone(),
                conn,
                attempt,
                seq,
                top,
                epoch,
                recovery,
            },
        );
        let client = self.client_id(conn);
        self.announce(channel, client, (user.as_ref(), infos.as_deref()), true);
    }

    pub(super) fn home_leave(&mut self, channel: &ChannelName, conn: ConnId) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        let Some(seq) = room.members.position(|m| m.conn == conn) else {
            return;
        };
        let Some(m) = room.members.remove(seq) else {
            return;
        };
        if let Ok(i) = room.shards.binary_search_by_key(&m.shard, |(s, _)| *s) {
            room.shards[i].1 -= 1;
            if room.shards[i].1 == 0 {
                room.shards.remove(i);
            }
        }
        if m.codec == Codec::SeedJson {
            room.seed_members -= 1;
        }
        if m.codec == Codec::Centrifuge && m.join_leave {
            room.join_leave_members -= 1;
        }
        let emptied = room.members.is_empty();
        let client = self.client_id(conn);
        if self.delivering && !channel.as_str().is_empty() {
            self.presence_changes.push_back(PresenceChange {
                channel: channel.clone(),
                joined: false,
                client,
                user: m.user.clone(),
                infos: m.infos.clone(),
            });
        }
        if emptied {
            self.room_emptied(channel);
            return;
        }
        self.announce(
            channel,
            client,
            (m.user.as_ref(), m.infos.as_deref()),
            false,
        );
    }

    /// `channel` has no members left: a positioned stream stays in memory
    /// (bounded), so a client that comes back recovers at once; the rest
    /// go (a stream is still in the store, and is opened again when used).
    pub(super) fn room_emptied(&mut self, channel: &ChannelName) {
        if self.loading.contains_key(channel) || self.settling.as_ref() == Some(channel) {
            // Read again for a join that waits, or with messages still to
            // be carried out: it is not empty for long (and is looked at
            // again after them).
            return;
        }
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        if !room.members.is_empty() || room.idle.is_some() {
            return;
        }
        let keep = self.config.idle_streams > 0
            && room.options.history()
            && room.top > 0
            && !channel.as_str().is_empty();
        if keep {
            let seq = self.next_idle;
            self.next_idle += 1;
            room.idle = Some(seq);
            self.idle.insert((seq, channel.clone()));
            while self.idle.len() > self.config.idle_streams {
                if let Some((_, oldest)) = self.idle.pop_first() {
                    self.forget_room(&oldest);
                }
            }
        } else {
            self.forget_room(channel);
        }
    }

    /// Removes `channel`'s room; a delivering engine stops following its
    /// stream.
    fn forget_room(&mut self, channel: &ChannelName) {
        if self.rooms.remove(channel).is_some() && self.delivering && !self.follow.remove(channel) {
            self.unfollow.insert(channel.clone());
        }
    }

    /// A fresh stream's epoch: different from every earlier one of this
    /// hub (a counter) and of earlier runs (new entropy).
    pub(super) fn new_epoch(&mut self) -> u64 {
        let id = self.next_room_id;
        self.next_room_id += 1;
        let shard = u64::from(self.config.shard.0);
        mix64(self.config.entropy ^ mix64(id ^ (shard << 48) ^ 0x0065_706f_6368))
    }

    /// Tells the channel that `client` joined (`joined`) or left: Centrifugo
    /// members that asked get `join` / `leave`; seed members get, in the
    /// seed's order, the new `online_users` and `user_joined` (join) or
    /// `user_left` and then `online_users` (departure) — when the member
    /// has a name (anonymous clients are invisible to seed presence).
    pub(super) fn announce(
        &mut self,
        channel: &ChannelName,
        client: ClientId,
        (user, infos): (Option<&Name>, Option<&crate::bus::InfoPair>),
        joined: bool,
    ) {
        let send_list = user.is_some() && self.take_presence(channel);
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let mut items = Vec::new();
        if room.options.join_leave && room.join_leave_members > 0 {
            let client = client.to_string();
            let kind = if joined { "join" } else { "leave" };
            items.push(Delivery {
                frame: Frame::text(centrifuge::presence_push(
                    channel.as_str(),
                    kind,
                    &info(user, &client, infos),
                )),
                to: Audience::CentrifugeJoinLeave,
            });
        }
        if let (Some(user), true) = (user, room.seed_members > 0) {
            let name = user.as_str();
            let list = send_list.then(|| Delivery {
                frame: self.seed_presence(room, channel),
                to: Audience::SeedPresence,
            });
            if joined {
                let notice = format!("{name} joined the room");
                items.extend(list);
                items.push(Delivery {
                    frame: encode_seed(SeedType::UserJoined, &notice, channel.as_str(), name),
                    to: Audience::Seed,
                });
            } else {
                let notice = format!("{name} left the room");
                items.push(Delivery {
                    frame: encode_seed(SeedType::UserLeft, &notice, channel.as_str(), name),
                    to: Audience::Seed,
                });
                items.extend(list);
            }
        }
        if !items.is_empty() {
            self.deliver_everywhere(channel, items);
        }
    }

    /// Whether `channel`'s seed members get an `online_users` now; if the
    /// room is over `presence_rate`, the snapshot is held back (once) and
    /// [`Hub::deferred_presence`] sends the room as it is then.
    fn take_presence(&mut self, channel: &ChannelName) -> bool {
        let Some(rate) = self.config.presence_rate else {
            return true;
        };
        let now = self.now;
        let Some(room) = self.rooms.get_mut(channel) else {
            return true;
        };
        if room.seed_members == 0 {
            return true;
        }
        if room.presence_held {
            self.stats.presence_deferred += 1;
            return false;
        }
        let budget = room
            .presence_budget
            .get_or_insert_with(|| crate::rate::Bucket::full(rate, now));
        if budget.try_take(rate, now) {
            return true;
        }
        room.presence_held = true;
        let at = budget.ready_at(rate, now);
        self.stats.presence_deferred += 1;
        self.presence_timers.insert((at, channel.clone()));
        false
    }

    /// A held-back `online_users` is due: the room's members as they are now.
    pub(super) fn deferred_presence(&mut self, now: Timestamp, channel: &ChannelName) {
        let Some(rate) = self.config.presence_rate else {
            return;
        };
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        if !room.presence_held {
            return;
        }
        let budget = room
            .presence_budget
            .get_or_insert_with(|| crate::rate::Bucket::full(rate, now));
        if !budget.try_take(rate, now) {
            let at = budget
                .ready_at(rate, now)
                .max(now.saturating_add(std::time::Duration::from_millis(1)));
            self.presence_timers.insert((at, channel.clone()));
            return;
        }
        room.presence_held = false;
        if room.seed_members == 0 {
            return;
        }
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let list = Delivery {
            frame: self.seed_presence(room, channel),
            to: Audience::SeedPresence,
        };
        self.deliver_everywhere(channel, vec![list]);
    }

    /// The room's `online_users`: named members in join order (with those
    /// on other nodes, in the order this home learnt of them).
    pub(super) fn seed_presence(&self, room: &Room, channel: &ChannelName) -> Frame {
        let mut list = String::new();
        let mut push = |name: &Name| {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(name.as_str());
        };
        if room.remote().is_empty() {
            room.members
                .values()
                .filter_map(|m| m.user.as_ref())
                .for_each(push);
        } else {
            let mut named: Vec<(u64, &Name)> = room
                .members
                .iter()
                .filter_map(|(seq, m)| Some((seq, m.user.as_ref()?)))
                .chain(
                    room.remote()
                        .values()
                        .filter_map(|m| Some((m.seq, m.user.as_ref()?))),
                )
                .collect();
            named.sort_unstable_by_key(|(seq, _)| *seq);
            named.into_iter().for_each(|(_, name)| push(name));
        }
        // Names are never empty, so an empty list has no members with names.
        encode_seed(SeedType::OnlineUsers, &list, channel.as_str(), "")
    }

    /// Sends `items` to every shard with members of `channel`, once each.
    pub(super) fn deliver_everywhere(&mut self, channel: &ChannelName, items: Vec<Delivery>) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let shards: Vec<ShardId> = room.shards.iter().map(|(s, _)| *s).collect();
        let items: Arc<[Delivery]> = items.into();
        for shard in shards {
            self.send_bus(
                shard,
                BusMessage::Deliver {
                    channel: channel.clone(),
                    items: items.clone(),
                },
            );
        }
    }

    /// Accepts a publication into `channel` from `from`. A channel with a
    /// stream sends it to the store first and fans it out when it is
    /// durable ([`Hub::appended`]); any other goes out at once. Nothing
    /// happens when nobody is there and there is no stream.
    pub(super) fn home_publish(
        &mut self,
        channel: &ChannelName,
        from: ConnId,
        publisher: (Option<Name>, crate::bus::Infos),
        payload: PubPayload,
        reply: Option<(ShardId, u32)>,
    ) {
        self.home_publish_as(
            channel,
            from,
            publisher,
            payload,
            PubReply::Client(reply),
            false,
        );
    }

    /// [`Hub::home_publish`] for any publisher; with `skip_history`, a
    /// channel with a stream fans it out at once, without an offset, and
    /// keeps nothing (the server API's `skip_history`).
    pub(super) fn home_publish_as(
        &mut self,
        channel: &ChannelName,
        from: ConnId,
        (user, infos): (Option<Name>, crate::bus::Infos),
        payload: PubPayload,
        reply: PubReply,
        skip_history: bool,
    ) {
        let now = self.now;
        let Some(room) = self.rooms.get_mut(channel) else {
            let needs_stream = !skip_history
                && !matches!(payload, PubPayload::Relay(_))
                && !channel.as_str().is_empty()
                && self
                    .config
                    .namespaces
                    .resolve_room(channel.as_str())
                    .history();
            if needs_stream {
                // The channel keeps a stream but its room went away (its
                // last member left while this waited): open the stream again.
                let msg = match (reply, payload) {
                    (PubReply::Client(reply), payload) => BusMessage::Publish {
                        channel: channel.clone(),
                        from,
                        user,
                        infos,
                        payload,
                        reply,
                    },
                    (PubReply::Api { to, key }, PubPayload::Json(data)) => BusMessage::ApiHome {
                        channel: channel.clone(),
                        op: crate::bus::ApiHomeOp::Publish(crate::api::Publish {
                            data,
                            skip_history: false,
                            idempotency_key: key,
                        }),
                        reply: to,
                    },
                    (reply, _) => {
                        self.publish_answer(channel, from, reply, Err(ErrorCode::Internal));
                        return;
                    }
                };
                self.at_home(msg);
                return;
            }
            // Nobody here, but other nodes may have members.
            let publisher = self.publisher(from);
            self.broadcast(
                channel,
                publisher,
                (user.as_ref(), infos.as_deref()),
                &payload,
            );
            self.publish_answer(channel, from, reply, Ok(None));
            return;
        };
        let data = publication_data(&payload);
        let stored = !skip_history && room.options.history();
        let (Some(data), true) = (data, stored) else {
            // Goes out at once, without an offset (`skip_history` keeps
            // the stream's position as it is).
            if !(skip_history && room.options.history()) {
                room.top += 1;
            }
            let publisher = self.publisher(from);
            let who = (user.as_ref(), infos.as_deref());
            self.fan_out(channel, publisher, who, &payload, None);
            self.broadcast(channel, publisher, who, &payload);
            self.publish_answer(channel, from, reply, Ok(None));
            return;
        };
        let limits = room.options.stream_limits();
        if self.appending.len() >= self.config.store_queue {
            self.stats.store_rejected += 1;
            self.publish_answer(channel, from, reply, Err(ErrorCode::Internal));
            return;
        }
        let stored = Stored {
            offset: 0,
            at: now,
            data,
            text: match &payload {
                PubPayload::Text(text) => Some(text.clone()),
                _ => None,
            },
            user: user.clone(),
            client: self.publisher(from),
            infos,
        };
        let token = self.next_token;
        self.next_token += 1;
        self.store_out.push_back(StoreRequest::Append {
            channel: channel.clone(),
            token,
            publication: stored.clone(),
            limits,
        });
        self.appending.insert(
            token,
            Appending {
                from,
                reply,
                stored,
            },
        );
    }

    /// The store opened `channel`'s stream (or could not): the messages
    /// that waited for it are carried out, in order (or refused).
    pub(super) fn opened(
        &mut self,
        channel: &ChannelName,
        result: Result<StreamState, StoreError>,
    ) {
        let waiting = self.loading.remove(channel).unwrap_or_default();
        match result {
            Ok(state) => {
                self.stats.store_opens += 1;
                if !self.rooms.contains_key(channel) {
                    let options = self
                        .config
                        .namespaces
                        .resolve_room(channel.as_str())
                        .clone();
                    // Only a contiguous run ending at the top can be read
                    // as what a client missed: an engine's tail with a hole
                    // is cut after it, so recovery across it says it cannot.
                    let mut tail = state.tail;
                    let mut expected = state.top;
                    let mut keep = tail.len();
                    for p in tail.iter().rev() {
                        if p.offset != expected || expected == 0 {
                            break;
                        }
                        expected -= 1;
                        keep -= 1;
                    }
                    tail.drain(..keep);
                    let mut room = Room::new(options, state.top, state.epoch, tail);
                    room.trim(self.now);
                    self.rooms.insert(channel.clone(), Box::new(room));
                    // Those already there on other nodes joined first.
                    if let Some(members) = self.early_members.remove(channel) {
                        self.remote_snapshot(channel, members);
                    }
                } else {
                    self.reopened(channel, state);
                }
                self.apply_early(channel);
                let outer = self.settling.replace(channel.clone());
                for msg in waiting {
                    // A join behind its client may read the stream again;
                    // what came after it waits behind it.
                    match self.loading.get_mut(channel) {
                        Some(again) => again.push(msg),
                        None => self.dispatch_or_reread(msg),
                    }
                }
                self.settling = outer;
                self.room_emptied(channel);
            }
            Err(_) => {
                self.stats.store_failures += 1;
                self.early.remove(channel);
                self.early_members.remove(channel);
                let outer = self.settling.replace(channel.clone());
                for msg in waiting {
                    match msg {
                        BusMessage::Join {
                            channel,
                            conn,
                            shard,
                            attempt,
                            ..
                        } => {
                            self.reread.remove(&(channel.clone(), conn));
                            self.send_bus(
                                shard,
                                BusMessage::JoinFailed {
                                    channel,
                                    conn,
                                    attempt,
                                },
                            );
                        }
                        BusMessage::Publish { from, reply, .. } => {
                            self.publish_reply(from, reply, Err(ErrorCode::Internal));
                        }
                        BusMessage::ApiHome { reply, .. } => {
                            let code = ErrorCode::Internal;
                            let part = ApiPart::Error(code, code.message().to_owned());
                            self.api_answer(reply, part);
                        }
                        BusMessage::Query {
                            conn, shard, id, ..
                        } => {
                            let reply = centrifuge::error_reply(id, ErrorCode::Internal);
                            self.send_bus(shard, BusMessage::Reply { conn, reply });
                        }
                        // A leave needs no stream: the member goes (a room
                        // read again has it; a first read has none).
                        leave @ BusMessage::Leave { .. } => self.home_dispatch(leave),
                        _ => {}
                    }
                }
                self.settling = outer;
                self.room_emptied(channel);
            }
        }
    }

    /// The store answered an append: a durable publication takes its
    /// offset in the window and goes out to every member; a failed one is
    /// refused to its publisher, and nobody sees it.
    pub(super) fn appended(
        &mut self,
        channel: &ChannelName,
        token: u64,
        result: Result<(u64, u64), &StoreError>,
    ) {
        let Some(appending) = self.appending.remove(&token) else {
            return;
        };
        let Appending {
            from,
            reply,
            mut stored,
        } = appending;
        let Ok((offset, epoch)) = result else {
            self.stats.store_failures += 1;
            self.publish_answer(channel, from, reply, Err(ErrorCode::Internal));
            return;
        };
        self.stats.store_appends += 1;
        // A channel nobody is in may have been forgotten meanwhile: the
        // publication is durable, and whoever opens the stream reads it.
        if let Some(room) = self.rooms.get_mut(channel) {
            if room.epoch != epoch {
                // The stream was lost and started again: what the window
                // held belongs to the old one.
                room.epoch = epoch;
                room.top = 0;
                room.history.clear();
                room.clear_pending();
            }
            // With one writer this is `top + 1` and goes out at once; with
            // a delivering engine it may already have been delivered (then
            // it is not sent twice), or wait for other nodes' before it.
            stored.offset = offset;
            self.drain_pending(channel, Some(stored));
        }
        self.publish_answer(channel, from, reply, Ok(Some((offset, epoch))));
    }

    /// With a delivering engine: hands a publication without a position
    /// (a channel without history) to the other nodes, which fan it out to
    /// their members as it comes. Bounded: beyond `store_queue` waiting,
    /// the other nodes miss it (this node's members have it).
    fn broadcast(
        &mut self,
        channel: &ChannelName,
        publisher: ClientId,
        (user, infos): (Option<&Name>, Option<&crate::bus::InfoPair>),
        payload: &PubPayload,
    ) {
        if !self.delivering {
            return;
        }
        let (data, text) = match payload {
            PubPayload::Text(text) => (publication_data(payload), Some(text.clone())),
            PubPayload::Json(data) => (Some(data.clone()), None),
            PubPayload::Relay(frame) => relay_to_stored(frame),
        };
        let Some(data) = data else {
            return;
        };
        if self.broadcasts.len() >= self.config.store_queue {
            self.stats.store_rejected += 1;
            return;
        }
        self.broadcasts.push_back((
            channel.clone(),
            Stored {
                offset: 0,
                at: self.now,
                data,
                text,
                user: user.cloned(),
                client: publisher,
                infos: infos.map(|i| std::sync::Arc::new(i.clone())),
            },
        ));
    }

    /// Who a publication from `from` is by (the API has its own id).
    fn publisher(&self, from: ConnId) -> ClientId {
        if from == api::API_CONN {
            api::API_CLIENT
        } else {
            self.client_id(from)
        }
    }

    /// Takes the publications at `top + 1`, `top + 2`… out of the room's
    /// pending ones, in order: each enters the window and goes out to
    /// every member, once.
    ///
    /// `arrived` (a publication with its offset) is the one that made the
    /// call: when it is the next, as it always is with one writer, it goes
    /// out without passing through the held ones' map.
    fn drain_pending(&mut self, channel: &ChannelName, mut arrived: Option<Stored>) {
        let now = self.now;
        loop {
            let Some(room) = self.rooms.get_mut(channel) else {
                return;
            };
            let next = room.top + 1;
            let stored = match arrived.take() {
                Some(stored) if stored.offset == next => stored,
                later => {
                    // What is at or below the top has been seen.
                    if let Some(stored) = later.filter(|s| s.offset > next) {
                        room.hold(stored);
                    }
                    let Some(stored) = room.take_pending(next) else {
                        return;
                    };
                    stored
                }
            };
            room.top = next;
            room.history.push_back(stored.clone());
            room.trim(now);
            let payload = match &stored.text {
                Some(text) => PubPayload::Text(text.clone()),
                None => PubPayload::Json(stored.data.clone()),
            };
            self.fan_out(
                channel,
                stored.client,
                (stored.user.as_ref(), stored.infos.as_deref()),
                &payload,
                Some(next),
            );
        }
    }

    /// A delivering engine's publication (this node's or another's): goes
    /// out if it is the next; a gap or another epoch reads the stream again.
    pub(super) fn delivered(&mut self, channel: &ChannelName, epoch: u64, publication: Stored) {
        if publication.offset == 0 {
            // Without a position (another node's, in a channel without
            // history): its members here get it as it comes.
            if let Some(room) = self.rooms.get_mut(channel) {
                room.top += 1;
                let payload = match &publication.text {
                    _ if channel.as_str().is_empty() => relay_from_stored(&publication),
                    Some(text) => PubPayload::Text(text.clone()),
                    None => PubPayload::Json(publication.data.clone()),
                };
                let publisher = (publication.user.as_ref(), publication.infos.as_deref());
                self.fan_out(channel, publication.client, publisher, &payload, None);
            }
            return;
        }
        if self.loading.contains_key(channel) {
            // Its stream is being read: applied after the read, if newer.
            let early = self.early.entry(channel.clone()).or_default();
            if early.len() < MAX_PUBLICATIONS {
                early.push((epoch, publication));
            }
            return;
        }
        let Some(room) = self.rooms.get_mut(channel) else {
            // Not followed any more: nobody here needs it.
            return;
        };
        let offset = publication.offset;
        if room.epoch != epoch {
            let early = self.early.entry(channel.clone()).or_default();
            if early.len() < MAX_PUBLICATIONS {
                early.push((epoch, publication));
            }
            self.reopen(channel);
            return;
        }
        if offset <= room.top {
            return;
        }
        self.drain_pending(channel, Some(publication));
        if self
            .rooms
            .get(channel)
            .is_some_and(|room| room.top < offset)
        {
            // Deliveries come in order: what is missing was lost.
            self.reopen(channel);
        }
    }

    /// The engine may have missed deliveries: read the stream again.
    pub(super) fn resync(&mut self, channel: &ChannelName) {
        // A channel without a stream has nothing to read again.
        let stream = self.rooms.get(channel).is_some_and(|r| r.options.history());
        if stream && !self.loading.contains_key(channel) {
            self.reopen(channel);
        }
    }

    /// Reads a stream this home already has again (to fill a gap): its
    /// messages wait for the answer, as at a first open.
    pub(super) fn reopen(&mut self, channel: &ChannelName) {
        if self.loading.contains_key(channel) {
            return;
        }
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let limits = room.options.stream_limits();
        let new_epoch = self.new_epoch();
        self.unfollow.remove(channel);
        self.store_out.push_back(StoreRequest::Open {
            channel: channel.clone(),
            new_epoch,
            limits,
            now: self.now,
        });
        self.loading.insert(channel.clone(), Vec::new());
    }

    /// A stream read again while its room is here: what the room has not
    /// seen goes out in order; a range the stream no longer holds is
    /// skipped (the window starts again after it, so recovery across it
    /// says it cannot); another epoch replaces the room's position.
    fn reopened(&mut self, channel: &ChannelName, state: StreamState) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        if state.epoch != room.epoch {
            room.epoch = state.epoch;
            room.top = 0;
            room.history.clear();
            room.clear_pending();
        }
        let floor = state
            .tail
            .first()
            .map_or(state.top, |p| p.offset.saturating_sub(1));
        if room.top < floor {
            room.top = floor;
            room.history.clear();
        }
        // All of the tail that is new (bounded by the stream's size, and
        // drained at once): a node cut off for longer than `MAX_PUBLICATIONS`
        // publications must still catch up without waiting for new traffic.
        for p in state.tail {
            if p.offset > room.top {
                room.delivering_mut().pending.insert(p.offset, p);
            }
        }
        self.drain_pending(channel, None);
    }

    /// Applies what was delivered while `channel`'s stream was read.
    fn apply_early(&mut self, channel: &ChannelName) {
        let early = self.early.remove(channel).unwrap_or_default();
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        for (epoch, p) in early {
            if epoch == room.epoch && p.offset > room.top {
                room.hold(p);
            }
        }
        self.drain_pending(channel, None);
    }

    /// Answers a publication's publisher: a client's command, or the server API.
    pub(super) fn publish_answer(
        &mut self,
        channel: &ChannelName,
        from: ConnId,
        reply: PubReply,
        result: Result<Option<(u64, u64)>, ErrorCode>,
    ) {
        match reply {
            PubReply::Client(reply) => self.publish_reply(from, reply, result.map(|_| ())),
            PubReply::Api { to, key } => self.api_published(channel, to, key, result),
        }
    }

    /// Answers a publisher's command, if it asked for an answer.
    pub(super) fn publish_reply(
        &mut self,
        from: ConnId,
        reply: Option<(ShardId, u32)>,
        result: Result<(), ErrorCode>,
    ) {
        let Some((shard, id)) = reply else {
            return;
        };
        let reply = match result {
            Ok(()) => centrifuge::reply(id, "publish", |_| {}),
            Err(code) => centrifuge::error_reply(id, code),
        };
        self.send_bus(shard, BusMessage::Reply { conn: from, reply });
    }

    /// Sends a publication to every shard with members, encoded once per
    /// protocol: seed members get a `chat` message, Centrifugo members a
    /// `pub` push (with its offset when the channel is positioned), relay
    /// members the frame.
    fn fan_out(
        &mut self,
        channel: &ChannelName,
        publisher: ClientId,
        (user, infos): (Option<&Name>, Option<&crate::bus::InfoPair>),
        payload: &PubPayload,
        offset: Option<u64>,
    ) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let (seed, centrifuge, relay) = room.codecs();
        let mut items = Vec::with_capacity(2);
        if let (true, PubPayload::Relay(frame)) = (relay, payload) {
            items.push(Delivery {
                frame: frame.clone(),
                to: Audience::Relay,
            });
        }
        let username = user.map_or("", Name::as_str);
        if seed {
            let content = match payload {
                PubPayload::Text(text) => Some(text.to_string()),
                PubPayload::Json(data) => Some(seed_content(data)),
                PubPayload::Relay(_) => None,
            };
            if let Some(content) = content {
                items.push(Delivery {
                    frame: encode_seed(SeedType::Chat, &content, channel.as_str(), username),
                    to: Audience::Seed,
                });
            }
        }
        if centrifuge {
            if let Some(data) = publication_data(payload) {
                let client = publisher.to_string();
                // API publications have no publisher: no `info`.
                let info = (publisher != api::API_CLIENT).then(|| info(user, &client, infos));
                items.push(Delivery {
                    frame: Frame::text(centrifuge::publication(
                        channel.as_str(),
                        &data,
                        info.as_ref(),
                        offset,
                    )),
                    to: Audience::Centrifuge,
                });
            }
        }
        if !items.is_empty() {
            self.deliver_everywhere(channel, items);
        }
    }

    pub(super) fn home_query(&self, channel: &str, id: u32, query: &Query) -> Bytes {
        let room = self.rooms.get(channel);
        let members = room.into_iter().flat_map(|r| r.members.values());
        // Members on other nodes follow this node's (a delivering engine).
        let remote = room.into_iter().flat_map(|r| r.remote().iter());
        match query {
            Query::PresenceStats => {
                let users: BTreeSet<&str> = members
                    .clone()
                    .map(|m| m.user.as_ref())
                    .chain(remote.clone().map(|(_, m)| m.user.as_ref()))
                    .map(|user| user.map_or("", Name::as_str))
                    .collect();
                let clients = (members.count() + remote.count()) as u64;
                centrifuge::reply(id, "presence_stats", |r| {
                    r.uint("num_clients", clients)
                        .uint("num_users", users.len() as u64);
                })
            }
            Query::Presence => centrifuge::reply(id, "presence", |r| {
                r.object("presence", |p| {
                    let all =
                        members
                            .map(|m| (self.client_id(m.conn), m.user.as_ref(), m.infos.as_deref()))
                            .chain(remote.map(|(key, m)| {
                                (key.client(), m.user.as_ref(), m.infos.as_deref())
                            }));
                    for (client, user, infos) in all {
                        let client = client.to_string();
                        p.with(&client, |out| {
                            centrifuge::push_client_info(out, &info(user, &client, infos));
                        });
                    }
                });
            }),
            Query::History {
                limit,
                since,
                reverse,
            } => {
                // A channel nobody is in has no stream: a fresh, empty one answers.
                let (top, epoch) = match room {
                    Some(room) => (room.top, epoch_text(room.epoch)),
                    None => (
                        0,
                        epoch_text(mix64(self.config.entropy ^ self.next_room_id)),
                    ),
                };
                if let Some(since) = since {
                    if since.epoch != epoch {
                        return centrifuge::error_reply(id, ErrorCode::UnrecoverablePosition);
                    }
                    if *reverse && since.offset == 0 {
                        return centrifuge::error_reply(id, ErrorCode::BadRequest);
                    }
                }
                // 0: the position only; n: at most n; -1: all; capped.
                let cap = match *limit {
                    0 => 0,
                    n if n < 0 => MAX_PUBLICATIONS,
                    n => usize::try_from(n)
                        .unwrap_or(MAX_PUBLICATIONS)
                        .min(MAX_PUBLICATIONS),
                };
                let now = self.now;
                let ttl = room.map(|r| r.options.history_ttl);
                let window = room
                    .into_iter()
                    .flat_map(|r| r.history.iter())
                    .filter(|p| ttl.is_some_and(|ttl| now.since(p.at) <= ttl));
                let chosen: Vec<&Stored> = match (since, *reverse) {
                    (Some(since), false) => window
                        .filter(|p| p.offset > since.offset)
                        .take(cap)
                        .collect(),
                    (None, false) => window.take(cap).collect(),
                    (Some(since), true) => {
                        let older: Vec<&Stored> =
                            window.filter(|p| p.offset < since.offset).collect();
                        older.into_iter().rev().take(cap).collect()
                    }
                    (None, true) => {
                        let all: Vec<&Stored> = window.collect();
                        all.into_iter().rev().take(cap).collect()
                    }
                };
                centrifuge::reply(id, "history", |r| {
                    if !chosen.is_empty() {
                        r.with("publications", |out| self.push_publications(out, &chosen));
                    }
                    r.str("epoch", &epoch).uint("offset", top);
                })
            }
        }
    }
}

impl Hub {
    // ---- members on other nodes (a delivering engine) -------------------------

    /// A client joined `channel` on another node: this node's members hear
    /// of it as of a local join. A member already known is updated quietly.
    pub(super) fn remote_joined(&mut self, channel: &ChannelName, member: RemoteMember) {
        let seq = self.next_join_seq;
        let Some(room) = self.rooms.get_mut(channel) else {
            // Not followed here: nobody here needs it.
            return;
        };
        let key = RemoteKey::new(member.node, member.client);
        if let Some(known) = room.delivering_mut().remote.get_mut(&key) {
            known.user = member.user;
            known.infos = member.infos;
            return;
        }
        self.next_join_seq += 1;
        let RemoteMember {
            client,
            user,
            infos,
            ..
        } = member;
        let entry = RemoteEntry { seq, user, infos };
        let (user, infos) = (entry.user.clone(), entry.infos.clone());
        room.delivering_mut().remote.insert(key, entry);
        self.announce(channel, client, (user.as_ref(), infos.as_deref()), true);
    }

    /// A client left `channel` on another node.
    pub(super) fn remote_left(&mut self, channel: &ChannelName, node: u64, client: ClientId) {
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        let Some(gone) = room.remove_remote(RemoteKey::new(node, client)) else {
            return;
        };
        self.announce(
            channel,
            client,
            (gone.user.as_ref(), gone.infos.as_deref()),
            false,
        );
    }

    /// The engine read `channel`'s members on the other nodes: those this
    /// home knew and are not there leave, those new join (in the order
    /// given), the others are kept where they are in the join order.
    pub(super) fn remote_snapshot(&mut self, channel: &ChannelName, members: Vec<RemoteMember>) {
        let Some(room) = self.rooms.get(channel) else {
            if self.loading.contains_key(channel) {
                // Read with the stream: applied when the room comes to be.
                self.early_members.insert(channel.clone(), members);
            }
            return;
        };
        let now: BTreeSet<RemoteKey> = members
            .iter()
            .map(|m| RemoteKey::new(m.node, m.client))
            .collect();
        let gone: Vec<RemoteKey> = room
            .remote()
            .keys()
            .filter(|key| !now.contains(key))
            .copied()
            .collect();
        for key in gone {
            self.remote_left(channel, key.node(), key.client());
        }
        for member in members {
            self.remote_joined(channel, member);
        }
    }

    /// Another node is gone: its members leave every channel here.
    pub(super) fn node_gone(&mut self, node: u64) {
        let gone: Vec<(ChannelName, ClientId)> = self
            .rooms
            .iter()
            .flat_map(|(channel, room)| {
                room.remote()
                    .keys()
                    .filter(move |key| key.node() == node)
                    .map(move |key| (channel.clone(), key.client()))
            })
            .collect();
        for (channel, client) in gone {
            self.remote_left(&channel, node, client);
        }
    }
}

impl Hub {
    /// Appends `[{"data":…,"info":…,"offset":N},…]`.
    pub(super) fn push_publications(&self, out: &mut Vec<u8>, publications: &[&Stored]) {
        out.push(b'[');
        for (i, p) in publications.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let client = p.client.to_string();
            let info = (p.client != api::API_CLIENT)
                .then(|| info(p.user.as_ref(), &client, p.infos.as_deref()));
            centrifuge::push_publication(out, &p.data, info.as_ref(), Some(p.offset));
        }
        out.push(b']');
    }
}

/// A relay frame as another node gets it: its bytes as `data`, and `text`
/// `Some("")` marking a text frame (`None`: binary), so nothing is copied.
fn relay_to_stored(frame: &Frame) -> (Option<Bytes>, Option<std::sync::Arc<str>>) {
    let text = (frame.kind == crate::codec::MessageKind::Text).then(|| std::sync::Arc::from(""));
    (Some(frame.payload.clone()), text)
}

/// [`relay_to_stored`] undone.
fn relay_from_stored(publication: &Stored) -> PubPayload {
    let data = publication.data.clone();
    PubPayload::Relay(match publication.text {
        Some(_) => Frame::text(data),
        None => Frame::binary(data),
    })
}

/// A publication as Centrifugo clients see its `data`: a seed line as
/// `{"text": line}`, JSON as it came; relay frames have none.
fn publication_data(payload: &PubPayload) -> Option<Bytes> {
    match payload {
        PubPayload::Text(text) => {
            let mut data = Vec::with_capacity(text.len() + 12);
            data.extend_from_slice(b"{\"text\":");
            crate::codec::push_json_string(&mut data, text);
            data.push(b'}');
            Some(Bytes::from(data))
        }
        PubPayload::Json(data) => Some(data.clone()),
        PubPayload::Relay(_) => None,
    }
}

/// A seed client's view of Centrifugo `data`: the `text` of an object that
/// has a string `text`, else the data's compact JSON.
pub(super) fn seed_content(data: &[u8]) -> String {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(map)) => match map.get("text") {
            Some(serde_json::Value::String(text)) => text.clone(),
            _ => serde_json::Value::Object(map).to_string(),
        },
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    }
}
