//! The home side of the hub: a channel homed on this shard keeps its
//! members on every shard in join order, its stream position (offset,
//! epoch) and the order of its publications, and sends each publication,
//! join and leave once per shard with members, encoded once per protocol.

use super::*;

/// A member as the channel's home knows it.
#[derive(Clone, Debug)]
pub(super) struct HomeMember {
    pub(super) conn: ConnId,
    pub(super) shard: ShardId,
    pub(super) codec: Codec,
    pub(super) user: Option<Name>,
    pub(super) join_leave: bool,
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
}

/// The most publications one recovery or one `history` reply carries
/// (Centrifugo's `recovery_max_publication_limit` and
/// `history_max_publication_limit`).
pub(super) const MAX_PUBLICATIONS: usize = 300;

impl Room {
    /// Drops what is beyond the window's size or age.
    fn trim(&mut self, now: Timestamp) {
        let size = self.options.history_size as usize;
        while self.history.len() > size {
            self.history.pop_front();
        }
        let ttl = self.options.history_ttl;
        while self.history.front().is_some_and(|p| now.since(p.at) > ttl) {
            self.history.pop_front();
        }
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
        let next_room_id = &mut self.next_room_id;
        let entropy = self.config.entropy;
        let shard = self.config.shard;
        let options = self
            .config
            .namespaces
            .resolve_room(channel.as_str())
            .clone();
        let room = self.rooms.entry(channel.clone()).or_insert_with(|| {
            let id = *next_room_id;
            *next_room_id += 1;
            Room {
                options,
                members: JoinOrder::new(),
                shards: Vec::new(),
                seed_members: 0,
                join_leave_members: 0,
                top: 0,
                idle: None,
                history: VecDeque::new(),
                // A fresh stream: its epoch differs from every earlier stream
                // of this name, in this run (ids count up per home shard) or
                // an earlier one (new entropy).
                epoch: mix64(entropy ^ mix64(id ^ (u64::from(shard.0) << 48) ^ 0x0065_706f_6368)),
            }
        });
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
        self.announce(channel, conn, user.as_ref(), true);
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
        if room.members.is_empty() {
            // A positioned stream outlives its last member (bounded), so a
            // client that comes back recovers; the relay's never does.
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
                        self.rooms.remove(&oldest);
                    }
                }
            } else {
                self.rooms.remove(channel);
            }
            return;
        }
        self.announce(channel, conn, m.user.as_ref(), false);
    }

    /// Tells the channel that `conn` joined (`joined`) or left: Centrifugo
    /// members that asked get `join` / `leave`; seed members get, in the
    /// seed's order, the new `online_users` and `user_joined` (join) or
    /// `user_left` and then `online_users` (departure) — when the member
    /// has a name (anonymous clients are invisible to seed presence).
    pub(super) fn announce(
        &mut self,
        channel: &ChannelName,
        conn: ConnId,
        user: Option<&Name>,
        joined: bool,
    ) {
        let Some(room) = self.rooms.get(channel) else {
            return;
        };
        let mut items = Vec::new();
        if room.options.join_leave && room.join_leave_members > 0 {
            let client = self.client_id(conn).to_string();
            let kind = if joined { "join" } else { "leave" };
            items.push(Delivery {
                frame: Frame::text(centrifuge::presence_push(
                    channel.as_str(),
                    kind,
                    &info(user, &client),
                )),
                to: Audience::CentrifugeJoinLeave,
            });
        }
        if let (Some(user), true) = (user, room.seed_members > 0) {
            let name = user.as_str();
            let list = Delivery {
                frame: self.seed_presence(room, channel),
                to: Audience::SeedPresence,
            };
            if joined {
                let notice = format!("{name} joined the room");
                items.push(list);
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
                items.push(list);
            }
        }
        if !items.is_empty() {
            self.deliver_everywhere(channel, items);
        }
    }

    /// The room's `online_users`: named members in join order.
    pub(super) fn seed_presence(&self, room: &Room, channel: &ChannelName) -> Frame {
        let mut list = String::new();
        for name in room.members.values().filter_map(|m| m.user.as_ref()) {
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(name.as_str());
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

    /// Accepts a publication into `channel` from `from` and sends it to
    /// every shard with members, encoded once per protocol: seed members
    /// get a `chat` message, Centrifugo members a `pub` push (with the next
    /// offset when the channel is positioned), relay members the frame.
    /// Nothing happens when nobody is there.
    pub(super) fn home_publish(
        &mut self,
        channel: &ChannelName,
        from: ConnId,
        user: Option<&Name>,
        payload: &PubPayload,
    ) {
        let publisher = self.client_id(from);
        let Some(room) = self.rooms.get_mut(channel) else {
            return;
        };
        room.top += 1;
        let offset = room.options.history().then_some(room.top);
        let (seed, centrifuge, relay) = room.codecs();
        let data = match payload {
            PubPayload::Text(text) => {
                let mut data = Vec::with_capacity(text.len() + 12);
                data.extend_from_slice(b"{\"text\":");
                crate::codec::push_json_string(&mut data, text);
                data.push(b'}');
                Some(Bytes::from(data))
            }
            PubPayload::Json(data) => Some(data.clone()),
            PubPayload::Relay(_) => None,
        };
        if let (Some(offset), Some(data)) = (offset, &data) {
            room.history.push_back(Stored {
                offset,
                at: self.now,
                data: data.clone(),
                text: match payload {
                    PubPayload::Text(text) => Some(text.clone()),
                    _ => None,
                },
                user: user.cloned(),
                client: publisher,
            });
            room.trim(self.now);
        }
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
            let client = self.client_id(from).to_string();
            if let Some(data) = data {
                items.push(Delivery {
                    frame: Frame::text(centrifuge::publication(
                        channel.as_str(),
                        &data,
                        Some(&info(user, &client)),
                        offset,
                    )),
                    to: Audience::Centrifuge,
                });
            }
        }
        self.deliver_everywhere(channel, items);
    }

    pub(super) fn home_query(&self, channel: &str, id: u32, query: &Query) -> Bytes {
        let room = self.rooms.get(channel);
        let members = room.into_iter().flat_map(|r| r.members.values());
        match query {
            Query::PresenceStats => {
                let users: BTreeSet<&str> = members
                    .clone()
                    .map(|m| m.user.as_ref().map_or("", Name::as_str))
                    .collect();
                let clients = members.count() as u64;
                centrifuge::reply(id, "presence_stats", |r| {
                    r.uint("num_clients", clients)
                        .uint("num_users", users.len() as u64);
                })
            }
            Query::Presence => centrifuge::reply(id, "presence", |r| {
                r.object("presence", |p| {
                    for m in members {
                        let client = self.client_id(m.conn).to_string();
                        p.with(&client, |out| {
                            centrifuge::push_client_info(out, &info(m.user.as_ref(), &client));
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
    /// Appends `[{"data":…,"info":…,"offset":N},…]`.
    pub(super) fn push_publications(&self, out: &mut Vec<u8>, publications: &[&Stored]) {
        out.push(b'[');
        for (i, p) in publications.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let client = p.client.to_string();
            centrifuge::push_publication(
                out,
                &p.data,
                Some(&info(p.user.as_ref(), &client)),
                Some(p.offset),
            );
        }
        out.push(b']');
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
