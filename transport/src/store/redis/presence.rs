//! Presence across nodes: who is in a channel on every node, kept in Redis.
//!
//! ```text
//! hubbub:{C}:presence  hash  "<node>:<client>" → member (see `encode_member`),
//!                            "v" → version, counted up by every change
//! hubbub:<db>:nodes    zset  node → the time (ms, Redis' clock) its liveness ends
//! hubbub:<db>:C        pub/sub, next to publications:
//!                      "j <node> <client> <version> <member>" (joined),
//!                      "l <node> <client> <version>" (left); version: the
//!                      hash's after the change (0: not known)
//! ```
//!
//! A node writes its members' entries as they join and leave and tells the
//! other nodes on the channel's pub/sub channel; every quarter of
//! `--presence-ttl` it renews its liveness ([`BEAT`]), which also names the
//! nodes whose liveness ran out: their members leave every channel here
//! ([`StoreEvent::NodeGone`]), and their entries are dropped by the next
//! [`SNAPSHOT`] that meets them. A node reads a channel's members when it
//! starts following it (before the stream's `Open` is answered, so those
//! already there come first in the join order), after a reconnection, and
//! every `--presence-ttl` for every channel it follows whose version moved
//! since it last read it (a quarter of the channels at each beat), which
//! heals whatever pub/sub lost. A node that finds its liveness gone (Redis
//! flushed or restarted, or the node stalled past the TTL) writes its
//! members again and announces them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ::redis::Value;
use bytes::Bytes;
use hubbub_core::{ChannelName, ClientId, Name, PresenceChange, RemoteMember, StoreEvent};
use tokio::sync::oneshot;

use super::{Engine, RedisStats, MAX_BATCH, RESPONSE_TIMEOUT};
use std::sync::Arc;

/// Renews a node's liveness and reads the live nodes.
///
/// KEYS: nodes. ARGV: node, ttl ms. Returns `{new, live nodes}`: `new` is 1
/// when the node's liveness had run out or was never there.
pub const BEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 1)
local new = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {new, redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')}
";

/// A channel's members on live nodes other than this one; entries of nodes
/// whose liveness ran out are deleted on the way.
///
/// KEYS: presence hash, nodes. ARGV: this node, keep ms (the hash's expiry,
/// renewed). Returns `{version, {field, member, …}}`: the hash's version
/// after the deletions (0 without a hash), which the members are as of.
pub const SNAPSHOT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local out = {}
for i = 1, #all, 2 do
  local field = all[i]
  local node = string.match(field, '^(%d+):')
  if node then
    local ok = alive[node]
    if ok == nil then
      local score = redis.call('ZSCORE', KEYS[2], node)
      ok = (score and tonumber(score) >= now) or false
      alive[node] = ok
    end
    if not ok then
      redis.call('HDEL', KEYS[1], field)
      redis.call('HINCRBY', KEYS[1], 'v', 1)
    elseif node ~= ARGV[1] then
      out[#out + 1] = field
      out[#out + 1] = all[i + 1]
    end
  end
end
if #all > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {tonumber(redis.call('HGET', KEYS[1], 'v') or '0'), out}
";

/// A local member joined or left: its entry written or deleted, the hash's
/// version counted up and the change published with that version, in one
/// step, so that every node can tell whether it heard every change.
///
/// KEYS: presence hash. ARGV: field, member (empty for a leave), keep ms,
/// pub/sub channel, the message's head and tail (around the version).
/// Returns the version.
pub const CHANGE: &str = r"
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('PUBLISH', ARGV[4], ARGV[5] .. v .. ARGV[6])
return v
";

/// Writes a node's members of a channel afresh: its old entries go.
///
/// KEYS: presence hash. ARGV: "<node>:", keep ms, then field, member, ….
pub const REGISTER: &str = r"
local all = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(all) do
  if string.sub(field, 1, #ARGV[1]) == ARGV[1] then redis.call('HDEL', KEYS[1], field) end
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if #ARGV > 2 then
  redis.call('HINCRBY', KEYS[1], 'v', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// What the engine keeps for presence.
pub(super) struct Presence {
    /// `--presence-ttl`.
    pub(super) ttl: Duration,
    /// This node's members: channel → client → encoded member (what Redis
    /// has, or will have once it is back).
    pub(super) local: BTreeMap<ChannelName, BTreeMap<ClientId, Vec<u8>>>,
    /// The other nodes alive at the last beat.
    pub(super) live: BTreeSet<u64>,
    /// Whether a beat ever found this node alive (a later "new" means its
    /// liveness ran out meanwhile).
    pub(super) beaten: bool,
    pub(super) last_beat: Option<Instant>,
    /// When every followed channel is to be read at once (at start, after
    /// a reconnection or a flush); `None`: a slice per beat will do.
    pub(super) full_snapshot_at: Option<Instant>,
    /// Which slice of the followed channels the next beat reads.
    pub(super) slice: u64,
    /// The version each followed channel's hash had when this node last
    /// read it whole.
    pub(super) versions: BTreeMap<ChannelName, u64>,
    /// The answer of the snapshot in flight (read on a task of its own, so
    /// that publications keep flowing while Redis answers).
    pub(super) answer: Option<oneshot::Receiver<SnapshotAnswer>>,
    /// While a snapshot is in flight: its channels, and the presence
    /// messages heard meanwhile, applied after it.
    pub(super) held: Option<Held>,
}

/// What a snapshot read, or why Redis did not answer.
pub(super) type SnapshotAnswer = Result<SnapshotRead, String>;

/// The hash field counted up by every change of a channel's members.
const VERSION: &str = "v";

/// A snapshot's reads.
pub(super) struct SnapshotRead {
    /// Redis' `TIME` and `ZRANGE nodes 0 -1 WITHSCORES`, read first.
    time: Value,
    nodes: Value,
    /// For each channel of [`Held::channels`] read: its index there, its
    /// version, its `HGETALL`. Channels whose version had not moved are
    /// not read.
    hashes: Vec<(usize, u64, Value)>,
}

/// A beat reads one of this many slices of the followed channels, so each
/// channel is read once per `--presence-ttl` (four beats), a quarter at a
/// time.
const SLICES: u64 = 4;

/// Which slice `channel` is read in.
fn slice_of(channel: &ChannelName) -> u64 {
    // Mixed (a murmur3 finalizer step) so the slice does not follow the
    // Redis instance, which the plain hash picks.
    let mut h = super::fnv1a(channel.as_str());
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h % SLICES
}

/// The most presence messages held back while a snapshot is in flight;
/// beyond it they are dropped, and another snapshot follows at the next
/// beat (it has them all).
const MAX_HELD: usize = 65_536;

/// A snapshot in flight.
pub(super) struct Held {
    channels: Vec<ChannelName>,
    messages: VecDeque<(ChannelName, u64, Option<Heard>)>,
    dropped: bool,
    started: Instant,
}

impl Held {
    /// Keeps a presence message for after the snapshot: one heard now may
    /// have been published after Redis read the snapshot, and applied
    /// before it would be undone by it.
    pub(super) fn hold(&mut self, channel: ChannelName, version: u64, heard: Option<Heard>) {
        if self.messages.len() < MAX_HELD {
            self.messages.push_back((channel, version, heard));
        } else {
            self.dropped = true;
        }
    }
}

impl Presence {
    pub(super) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            local: BTreeMap::new(),
            live: BTreeSet::new(),
            beaten: false,
            last_beat: None,
            full_snapshot_at: Some(Instant::now()),
            slice: 0,
            versions: BTreeMap::new(),
            answer: None,
            held: None,
        }
    }

    /// How often the node renews its liveness.
    pub(super) fn beat_every(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(50))
    }

    /// How long the node's entries (and a channel's hash) outlive a beat.
    pub(super) fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(200)
    }

    /// Records a local change; returns the member's encoding on a join.
    pub(super) fn apply(&mut self, change: &PresenceChange) -> Option<Vec<u8>> {
        if change.joined {
            let member = encode_member(change.user.as_ref(), change.infos.as_deref());
            self.local
                .entry(change.channel.clone())
                .or_default()
                .insert(change.client, member.clone());
            Some(member)
        } else {
            if let Some(members) = self.local.get_mut(&change.channel) {
                members.remove(&change.client);
                if members.is_empty() {
                    self.local.remove(&change.channel);
                }
            }
            None
        }
    }
}

pub(super) fn presence_key(channel: &ChannelName) -> String {
    format!("hubbub:{{{}}}:presence", channel.as_str())
}

pub(super) fn field(node: u64, client: ClientId) -> String {
    format!("{node}:{}", client.0)
}

/// A member as Redis keeps it: version 1, then user, `conn_info` and
/// `chan_info`, each a u32 length (big-endian; `u32::MAX`: absent) and bytes.
pub(super) fn encode_member(
    user: Option<&Name>,
    infos: Option<&hubbub_core::bus::InfoPair>,
) -> Vec<u8> {
    let fields = [
        user.map(|u| u.as_str().as_bytes()),
        infos.and_then(|i| i.conn_info.as_deref()),
        infos.and_then(|i| i.chan_info.as_deref()),
    ];
    let mut out = vec![1u8];
    for field in fields {
        match field {
            Some(bytes) => {
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX - 1);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&bytes[..len as usize]);
            }
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    out
}

/// The member [`encode_member`] wrote, with its node and client.
pub(super) fn decode_member(node: u64, client: ClientId, bytes: &[u8]) -> Option<RemoteMember> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != 1 {
        return None;
    }
    let mut fields: [Option<&[u8]>; 3] = [None; 3];
    for field in &mut fields {
        let (len, after) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?);
        rest = after;
        if len != u32::MAX {
            let (value, after) = rest.split_at_checked(len as usize)?;
            *field = Some(value);
            rest = after;
        }
    }
    let [user, conn_info, chan_info] = fields;
    let user = match user {
        Some(u) => Some(Name::new(std::str::from_utf8(u).ok()?).ok()?),
        None => None,
    };
    Some(RemoteMember {
        node,
        client,
        user,
        infos: hubbub_core::bus::infos(
            conn_info.map(Bytes::copy_from_slice),
            chan_info.map(Bytes::copy_from_slice),
        ),
    })
}

/// `"<node>:<client>"`.
fn parse_field(field: &[u8]) -> Option<(u64, ClientId)> {
    let text = std::str::from_utf8(field).ok()?;
    let (node, client) = text.split_once(':')?;
    Some((node.parse().ok()?, ClientId(client.parse().ok()?)))
}

/// A presence message from pub/sub.
pub(super) enum Heard {
    Joined(RemoteMember),
    Left(u64, ClientId),
}

/// A presence message: `j <node> <client> <version> <member>` or
/// `l <node> <client> <version>`, as the hash's version after it (0: not
/// known) and what it says (`None`: malformed); `None` when the payload is
/// no presence message.
pub(super) fn parse_presence_message(payload: &[u8]) -> Option<(u64, Option<Heard>)> {
    let joined = match payload.get(..2)? {
        b"j " => true,
        b"l " => false,
        _ => return None,
    };
    let mut parts = payload[2..].splitn(4, |b| *b == b' ');
    let mut number = || parts.next().and_then(|n| std::str::from_utf8(n).ok());
    let node: Option<u64> = number().and_then(|n| n.parse().ok());
    let client: Option<u128> = number().and_then(|c| c.parse().ok());
    let version: Option<u64> = number().and_then(|v| v.parse().ok());
    let (Some(node), Some(client), Some(version)) = (node, client, version) else {
        return Some((0, None));
    };
    let client = ClientId(client);
    if !joined {
        return Some((version, Some(Heard::Left(node, client))));
    }
    Some((
        version,
        parts
            .next()
            .and_then(|m| decode_member(node, client, m))
            .map(Heard::Joined),
    ))
}

/// The version and the members of a [`SNAPSHOT`] answer; entries that
/// cannot be read are counted and skipped.
pub(super) fn parse_snapshot(
    value: &Value,
    stats: &RedisStats,
) -> Option<(u64, Vec<RemoteMember>)> {
    let Value::Array(answer) = value else {
        return None;
    };
    let [version, Value::Array(items)] = answer.as_slice() else {
        return None;
    };
    let version = super::int(version)?;
    let mut members = Vec::with_capacity(items.len() / 2);
    for pair in items.chunks(2) {
        let [Value::BulkString(field), Value::BulkString(member)] = pair else {
            RedisStats::add(&stats.malformed, 1);
            continue;
        };
        match parse_field(field).and_then(|(node, client)| decode_member(node, client, member)) {
            Some(m) => members.push(m),
            None => RedisStats::add(&stats.malformed, 1),
        }
    }
    Some((version, members))
}

/// A snapshot's two round trips: the time, the nodes' liveness and each
/// channel's version (its hash's expiry renewed on the way), then the
/// hashes of the channels whose version is not the `known` one.
async fn read_snapshot(
    conn: &mut ::redis::aio::MultiplexedConnection,
    stats: &RedisStats,
    keys: &[String],
    known: &[Option<u64>],
    nodes_key: &str,
    keep: u64,
) -> SnapshotAnswer {
    let mut pipe = ::redis::pipe();
    pipe.cmd("TIME");
    pipe.cmd("ZRANGE")
        .arg(nodes_key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES");
    for key in keys {
        pipe.cmd("HGET").arg(key).arg(VERSION);
        pipe.cmd("PEXPIRE").arg(key).arg(keep).ignore();
    }
    let mut first = query(conn, stats, &pipe).await?.into_iter();
    let (Some(time), Some(nodes)) = (first.next(), first.next()) else {
        return Err("redis: a short answer to a presence read".to_owned());
    };
    let changed: Vec<(usize, u64)> = first
        .enumerate()
        .filter_map(|(i, v)| {
            let version = if v == Value::Nil { 0 } else { super::int(&v)? };
            (known.get(i).copied().flatten() != Some(version)).then_some((i, version))
        })
        .collect();
    let mut hashes = Vec::with_capacity(changed.len());
    for chunk in changed.chunks(MAX_BATCH) {
        let mut pipe = ::redis::pipe();
        for (i, _) in chunk {
            pipe.cmd("HGETALL").arg(&keys[*i]);
        }
        let values = query(conn, stats, &pipe).await?;
        if values.len() != chunk.len() {
            return Err("redis: a short answer to a presence read".to_owned());
        }
        hashes.extend(
            chunk
                .iter()
                .zip(values)
                .map(|((i, v), value)| (*i, *v, value)),
        );
    }
    Ok(SnapshotRead {
        time,
        nodes,
        hashes,
    })
}

/// One pipeline, bounded by [`RESPONSE_TIMEOUT`].
async fn query(
    conn: &mut ::redis::aio::MultiplexedConnection,
    stats: &RedisStats,
    pipe: &::redis::Pipeline,
) -> Result<Vec<Value>, String> {
    RedisStats::add(&stats.pipelines, 1);
    match tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async::<Vec<Value>>(conn)).await {
        Ok(Ok(values)) => Ok(values),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis did not answer in time".to_owned()),
    }
}

/// The nodes alive at Redis' `TIME`, from `ZRANGE nodes 0 -1 WITHSCORES`
/// (each node's score is when its liveness runs out, in ms).
fn live_nodes(time: &Value, nodes: &Value) -> Option<BTreeSet<u64>> {
    let Value::Array(time) = time else {
        return None;
    };
    let [secs, micros] = time.as_slice() else {
        return None;
    };
    let now = super::int(secs)?
        .saturating_mul(1000)
        .saturating_add(super::int(micros)? / 1000);
    let Value::Array(items) = nodes else {
        return None;
    };
    let mut live = BTreeSet::new();
    for pair in items.chunks(2) {
        let [node, score] = pair else {
            return None;
        };
        let score = match score {
            Value::Double(d) => *d,
            Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
            _ => return None,
        };
        if score >= now as f64 {
            live.insert(super::int(node)?);
        }
    }
    Some(live)
}

/// A presence hash (`HGETALL`): the members of live nodes other than `me`,
/// and the fields of dead nodes' entries (to delete). Entries that cannot
/// be read are counted and skipped.
fn parse_hash(
    value: &Value,
    live: &BTreeSet<u64>,
    me: u64,
    stats: &RedisStats,
) -> Option<(Vec<RemoteMember>, Vec<Vec<u8>>)> {
    let pairs: Vec<(&Value, &Value)> = match value {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|p| Some((p.first()?, p.get(1)?)))
            .collect(),
        Value::Map(entries) => entries.iter().map(|(f, m)| (f, m)).collect(),
        _ => return None,
    };
    let mut members = Vec::with_capacity(pairs.len());
    let mut dead = Vec::new();
    for (field, member) in pairs {
        let (Value::BulkString(field), Value::BulkString(member)) = (field, member) else {
            RedisStats::add(&stats.malformed, 1);
            continue;
        };
        if field == VERSION.as_bytes() {
            continue;
        }
        let Some((node, client)) = parse_field(field) else {
            RedisStats::add(&stats.malformed, 1);
            continue;
        };
        if !live.contains(&node) {
            dead.push(field.clone());
        } else if node != me {
            match decode_member(node, client, member) {
                Some(m) => members.push(m),
                None => RedisStats::add(&stats.malformed, 1),
            }
        }
    }
    Some((members, dead))
}

impl Engine {
    /// Adds a local change to `pipe`: the entry written or deleted, and the
    /// message to the other nodes.
    pub(super) fn push_change(&mut self, pipe: &mut ::redis::Pipeline, change: &PresenceChange) {
        let member = self.presence.apply(change);
        let key = presence_key(&change.channel);
        let field = field(self.node, change.client);
        let pubsub = self.pubsub_name(&change.channel);
        let (kind, tail) = match &member {
            Some(member) => {
                let mut tail = b" ".to_vec();
                tail.extend_from_slice(member);
                ('j', tail)
            }
            None => ('l', Vec::new()),
        };
        pipe.cmd("EVAL")
            .arg(CHANGE)
            .arg(1)
            .arg(&key)
            .arg(&field)
            .arg(member.unwrap_or_default())
            .arg(self.presence.ttl_ms().saturating_mul(3))
            .arg(pubsub)
            .arg(format!("{kind} {} {} ", self.node, change.client.0))
            .arg(tail)
            .ignore();
        RedisStats::add(&self.stats.presence_writes, 1);
    }

    /// Adds a [`SNAPSHOT`] of `channel` to `pipe` (its answer is kept).
    pub(super) fn push_snapshot(&self, pipe: &mut ::redis::Pipeline, channel: &ChannelName) {
        pipe.cmd("EVAL")
            .arg(SNAPSHOT)
            .arg(2)
            .arg(presence_key(channel))
            .arg(self.nodes_key())
            .arg(self.node.to_string())
            .arg(self.presence.ttl_ms().saturating_mul(3));
    }

    /// Hands a snapshot's members of `channel` to its home, and notes the
    /// version they are as of: the changes after it move it one by one, so
    /// the periodic read skips this hash while no change was missed
    /// (without it, every channel a node starts following was read whole
    /// again within a TTL: after a join storm, every member of every
    /// channel on every node).
    pub(super) fn deliver_snapshot(&mut self, channel: &ChannelName, value: &Value) {
        let Some((version, members)) = parse_snapshot(value, &self.stats) else {
            RedisStats::add(&self.stats.errors, 1);
            return;
        };
        RedisStats::add(&self.stats.snapshots, 1);
        if let Some(tx) = self.followed.get(channel).and_then(|s| self.shards.get(*s)) {
            self.presence.versions.insert(channel.clone(), version);
            let _ = tx.send(StoreEvent::RemoteMembers {
                channel: channel.clone(),
                members,
            });
        }
    }

    pub(super) fn nodes_key(&self) -> String {
        format!("hubbub:{}:nodes", self.db)
    }

    /// A presence message (this node's own too): the channel's version
    /// follows it when it is the next one; another node's change goes to
    /// the channel's home.
    pub(super) fn forward_presence(
        &mut self,
        channel: ChannelName,
        version: u64,
        heard: Option<Heard>,
    ) {
        if let Some(known) = self.presence.versions.get_mut(&channel) {
            // A gap (a message lost) leaves it behind: the next read of the
            // hash sees a version it does not know and reads it whole.
            if version > 0 && *known + 1 == version {
                *known = version;
            }
        }
        let Some(shard) = self.followed.get(&channel).copied() else {
            return;
        };
        let event = match heard {
            None => {
                RedisStats::add(&self.stats.malformed, 1);
                return;
            }
            Some(Heard::Joined(member)) if member.node != self.node => {
                StoreEvent::RemoteJoined { channel, member }
            }
            Some(Heard::Left(node, client)) if node != self.node => StoreEvent::RemoteLeft {
                channel,
                node,
                client,
            },
            // This node's own.
            Some(_) => return,
        };
        if let Some(tx) = self.shards.get(shard) {
            let _ = tx.send(event);
        }
    }

    /// Renews this node's liveness; tells every shard of nodes that are
    /// gone; writes this node's members again if its liveness had run out;
    /// every `--presence-ttl`, reads every followed channel's members.
    pub(super) async fn beat(&mut self) {
        if !self.is_up() {
            return;
        }
        self.presence.last_beat = Some(Instant::now());
        let mut pipe = ::redis::pipe();
        pipe.cmd("EVAL")
            .arg(BEAT)
            .arg(1)
            .arg(self.nodes_key())
            .arg(self.node.to_string())
            // Liveness for three beats: two may be missed, and the others
            // notice a dead node within the TTL (3/4 + the 1/4 to their beat).
            .arg(self.presence.ttl_ms() * 3 / 4);
        self.push_node_info(&mut pipe);
        let Some(value) = self.query(&pipe).await.and_then(|v| v.into_iter().next()) else {
            return;
        };
        let Some((new, live)) = parse_beat(&value) else {
            RedisStats::add(&self.stats.errors, 1);
            return;
        };
        let live: BTreeSet<u64> = live.into_iter().filter(|n| *n != self.node).collect();
        let gone: Vec<u64> = self.presence.live.difference(&live).copied().collect();
        self.presence.live = live;
        for node in gone {
            RedisStats::add(&self.stats.nodes_gone, 1);
            tracing::info!(
                node,
                "redis engine: a node's liveness ran out; its members leave"
            );
            for tx in &self.shards {
                let _ = tx.send(StoreEvent::NodeGone { node });
            }
            // Its entries stay in the hashes (their versions unmoved) until
            // a read that meets them deletes them: read every channel.
            self.presence.full_snapshot_at = Some(Instant::now());
        }
        if new && self.presence.beaten {
            tracing::warn!("redis engine: this node's liveness had run out (Redis restarted or flushed, or the node stalled); writing its members again");
            self.register_all(true).await;
            // The other nodes write theirs at their next beat: read after
            // that, not before (their members would seem to leave).
            self.snapshot_after_beats();
        }
        self.presence.beaten = true;
        let full = self
            .presence
            .full_snapshot_at
            .is_some_and(|at| Instant::now() >= at);
        if full {
            if self.start_snapshot(None) {
                self.presence.full_snapshot_at = None;
            }
        } else if self.start_snapshot(Some(self.presence.slice)) {
            self.presence.slice = (self.presence.slice + 1) % SLICES;
        }
    }

    /// Every channel is read two beats from now.
    pub(super) fn snapshot_after_beats(&mut self) {
        self.presence.full_snapshot_at = Some(Instant::now() + self.presence.beat_every() * 2);
    }

    /// Writes every local member again (after Redis lost them); with
    /// `announce`, tells the other nodes of each, as of a join.
    pub(super) async fn register_all(&mut self, announce: bool) {
        let channels: Vec<ChannelName> = self.presence.local.keys().cloned().collect();
        for chunk in channels.chunks(MAX_BATCH) {
            let mut pipe = ::redis::pipe();
            for channel in chunk {
                let Some(members) = self.presence.local.get(channel) else {
                    continue;
                };
                let cmd = pipe
                    .cmd("EVAL")
                    .arg(REGISTER)
                    .arg(1)
                    .arg(presence_key(channel))
                    .arg(format!("{}:", self.node))
                    .arg(self.presence.ttl_ms().saturating_mul(3));
                for (client, member) in members {
                    cmd.arg(field(self.node, *client)).arg(member.as_slice());
                }
                cmd.ignore();
                if announce {
                    for (client, member) in members {
                        // Version 0: the others cannot tell what they missed
                        // from it; their next read of the hash tells them.
                        let mut message = format!("j {} {} 0 ", self.node, client.0).into_bytes();
                        message.extend_from_slice(member);
                        pipe.cmd("PUBLISH")
                            .arg(self.pubsub_name(channel))
                            .arg(message)
                            .ignore();
                    }
                }
            }
            if self.query(&pipe).await.is_none() {
                return;
            }
        }
    }

    /// Reads the members of the followed channels in `slice` (`None`: all
    /// of them), for their homes, on a task of its own: the engine goes on
    /// delivering publications and carrying out requests meanwhile, and
    /// holds presence messages back until the answer is in
    /// ([`Self::snapshot_answered`]). One at a time; `false` when one was
    /// still in flight (or Redis is down).
    ///
    /// Plain `HGETALL`s, no script: a script looping over a channel's
    /// entries holds Redis about a microsecond per member, and with every
    /// node reading every channel that stalled every publication (~100 ms
    /// at 5 nodes × 97 channels × 196 members). The nodes' liveness comes
    /// in the same pipeline; entries of dead nodes are deleted afterwards.
    pub(super) fn start_snapshot(&mut self, slice: Option<u64>) -> bool {
        if self.presence.answer.is_some() {
            return false;
        }
        let Some(mut conn) = self.conn.clone() else {
            return false;
        };
        let followed = &self.followed;
        self.presence
            .versions
            .retain(|c, _| followed.contains_key(c));
        let channels: Vec<ChannelName> = self
            .followed
            .keys()
            .filter(|c| !c.as_str().is_empty())
            .filter(|c| slice.is_none_or(|s| slice_of(c) == s))
            .cloned()
            .collect();
        if channels.is_empty() {
            return true;
        }
        // Known versions (none on a full read: every hash is read).
        let known: Vec<Option<u64>> = channels
            .iter()
            .map(|c| slice.and_then(|_| self.presence.versions.get(c)).copied())
            .collect();
        let keys: Vec<String> = channels.iter().map(presence_key).collect();
        let nodes_key = self.nodes_key();
        let keep = self.presence.ttl_ms().saturating_mul(3);
        let stats = Arc::clone(&self.stats);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let read = read_snapshot(&mut conn, &stats, &keys, &known, &nodes_key, keep).await;
            let _ = tx.send(read);
        });
        self.presence.answer = Some(rx);
        self.presence.held = Some(Held {
            channels,
            messages: VecDeque::new(),
            dropped: false,
            started: Instant::now(),
        });
        true
    }

    /// The snapshot's answer: each channel's members to its home, then the
    /// presence messages heard meanwhile, in order; dead nodes' entries
    /// are deleted.
    pub(super) fn snapshot_answered(&mut self, answer: SnapshotAnswer) {
        let Some(held) = self.presence.held.take() else {
            return;
        };
        let read = match answer {
            Ok(read) => read,
            Err(why) => {
                for (channel, version, heard) in held.messages {
                    self.forward_presence(channel, version, heard);
                }
                self.lost(&why);
                return;
            }
        };
        let Some(live) = live_nodes(&read.time, &read.nodes) else {
            RedisStats::add(&self.stats.errors, 1);
            self.presence.full_snapshot_at = Some(Instant::now());
            for (channel, version, heard) in held.messages {
                self.forward_presence(channel, version, heard);
            }
            return;
        };
        let mut dead = ::redis::pipe();
        let mut any_dead = false;
        for (index, version, value) in read.hashes {
            let Some(channel) = held.channels.get(index) else {
                continue;
            };
            let Some((members, gone)) = parse_hash(&value, &live, self.node, &self.stats) else {
                RedisStats::add(&self.stats.errors, 1);
                continue;
            };
            if !gone.is_empty() {
                any_dead = true;
                let key = presence_key(channel);
                dead.cmd("HDEL").arg(&key).arg(gone).ignore();
                dead.cmd("HINCRBY").arg(&key).arg(VERSION).arg(1).ignore();
            }
            RedisStats::add(&self.stats.snapshots, 1);
            if let Some(tx) = self.followed.get(channel).and_then(|s| self.shards.get(*s)) {
                self.presence.versions.insert(channel.clone(), version);
                let _ = tx.send(StoreEvent::RemoteMembers {
                    channel: channel.clone(),
                    members,
                });
            }
        }
        let messages = held.messages.len();
        for (channel, version, heard) in held.messages {
            self.forward_presence(channel, version, heard);
        }
        if held.dropped {
            // Some were dropped: the next beat reads everything again.
            self.presence.full_snapshot_at = Some(Instant::now());
        }
        if any_dead {
            if let Some(mut conn) = self.conn.clone() {
                tokio::spawn(async move {
                    let deleted =
                        tokio::time::timeout(RESPONSE_TIMEOUT, dead.query_async::<()>(&mut conn))
                            .await;
                    if !matches!(deleted, Ok(Ok(()))) {
                        tracing::debug!("redis engine: dead nodes' presence entries stay for now");
                    }
                });
            }
        }
        tracing::debug!(
            channels = held.channels.len(),
            held = messages,
            dropped = held.dropped,
            ms = held.started.elapsed().as_millis(),
            "redis engine: presence snapshot"
        );
    }

    /// Sends `pipe`; `None` (and the engine down) when Redis did not answer.
    pub(super) async fn query(&mut self, pipe: &::redis::Pipeline) -> Option<Vec<Value>> {
        let conn = self.conn.as_mut()?;
        RedisStats::add(&self.stats.pipelines, 1);
        match tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async::<Vec<Value>>(conn)).await {
            Ok(Ok(values)) => Some(values),
            Ok(Err(e)) => {
                self.lost(&format!("redis: {e}"));
                None
            }
            Err(_) => {
                self.lost("redis did not answer in time");
                None
            }
        }
    }
}

/// `{new, {node, …}}`.
fn parse_beat(value: &Value) -> Option<(bool, Vec<u64>)> {
    let Value::Array(items) = value else {
        return None;
    };
    let [new, Value::Array(live)] = items.as_slice() else {
        return None;
    };
    let new = super::int(new)? == 1;
    Some((new, live.iter().filter_map(super::int).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_and_messages_round_trip() {
        let infos = hubbub_core::bus::infos(Some(Bytes::from_static(b"{\"a\":1}")), None);
        let user = Name::new("ann").ok();
        let bytes = encode_member(user.as_ref(), infos.as_deref());
        let member = decode_member(7, ClientId(9), &bytes).expect("decodes");
        assert_eq!(
            member,
            RemoteMember {
                node: 7,
                client: ClientId(9),
                user,
                infos
            }
        );
        let mut message = b"j 7 9 12 ".to_vec();
        message.extend_from_slice(&bytes);
        assert!(matches!(
            parse_presence_message(&message),
            Some((12, Some(Heard::Joined(m)))) if m == member
        ));
        assert!(matches!(
            parse_presence_message(b"l 7 9 13"),
            Some((13, Some(Heard::Left(7, ClientId(9)))))
        ));
        assert!(matches!(
            parse_presence_message(b"j x 9 1 "),
            Some((0, None))
        ));
        assert!(matches!(parse_presence_message(b"l 7 9"), Some((0, None))));
        assert!(parse_presence_message(b"12 34 xx").is_none());
        for cut in 0..bytes.len() {
            let _ = decode_member(1, ClientId(1), &bytes[..cut]);
        }
        assert_eq!(parse_field(b"12:345"), Some((12, ClientId(345))));
        assert_eq!(parse_field(b"12345"), None);
    }

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn a_snapshot_keeps_live_nodes_members_and_names_dead_ones() {
        // TIME is 1000.5 s: node 1's liveness runs to 1000500 ms (alive),
        // node 2's ran out at 1000499 ms.
        let time = Value::Array(vec![bulk("1000"), bulk("500000")]);
        let nodes = Value::Array(vec![
            bulk("1"),
            bulk("1000500"),
            bulk("2"),
            bulk("1000499"),
            bulk("3"),
            bulk("2e6"),
        ]);
        let live = live_nodes(&time, &nodes).expect("parses");
        assert_eq!(live, BTreeSet::from([1, 3]));
        let ann = encode_member(Name::new("ann").ok().as_ref(), None);
        let hash = Value::Array(vec![
            bulk("1:10"),
            Value::BulkString(ann.clone()),
            bulk("2:20"),
            Value::BulkString(ann.clone()),
            bulk("3:30"),
            Value::BulkString(ann.clone()),
            bulk("junk"),
            Value::BulkString(ann),
            bulk("v"),
            bulk("7"),
        ]);
        let stats = RedisStats::default();
        let (members, dead) = parse_hash(&hash, &live, 3, &stats).expect("parses");
        // This node's own (3) are not members; node 2's entry is dead; the
        // version is no member and not malformed.
        assert_eq!(
            members
                .iter()
                .map(|m| (m.node, m.client))
                .collect::<Vec<_>>(),
            vec![(1, ClientId(10))]
        );
        assert_eq!(dead, vec![b"2:20".to_vec()]);
        assert_eq!(RedisStats::get(&stats.malformed), 1);
        assert!(live_nodes(&Value::Nil, &nodes).is_none());
    }

    #[test]
    fn every_channel_is_in_one_of_the_slices() {
        let mut seen = BTreeSet::new();
        for i in 0..200 {
            let slice = slice_of(&ChannelName::new(&format!("room{i}")));
            assert!(slice < SLICES);
            seen.insert(slice);
        }
        assert_eq!(seen.len() as u64, SLICES, "200 channels use every slice");
    }
}
