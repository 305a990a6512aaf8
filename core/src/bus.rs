//! What crosses shards: the messages between a connection's shard and a
//! channel's home shard.
//!
//! Every channel has one **home** shard ([`home_of`]), which keeps its
//! members (across all shards) in join order, its stream position (offset,
//! epoch) and its order of publications. A shard asks the home to join,
//! leave, publish or query; the home answers the asking shard and sends
//! each publication, join and leave **once per shard that has members**,
//! already encoded, and every shard fans it out to its own members. Links
//! are FIFO per (sender, receiver), which is what keeps a channel's order
//! the same for every subscriber on every shard, and a subscribe reply
//! ahead of that channel's pushes.
//!
//! With one shard the hub is its own home and these messages never leave
//! it; with several, the driver carries them ([`crate::Hub::poll_bus`],
//! [`crate::Hub::handle_bus`]). This is the engine boundary a broker
//! between nodes plugs into as well.

use std::sync::Arc;

use bytes::Bytes;

use crate::centrifuge::StreamPosition;
use crate::channel::ChannelName;
use crate::codec::{Codec, Frame};
use crate::hub::{ClientId, ConnId};
use crate::route::Name;
use crate::time::Timestamp;

/// A shard of one process: a thread with its own hub and connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// The home shard of `channel` among `shards`: a stable hash (FNV-1a) of
/// the name, the same in every shard, run and build.
#[must_use]
pub fn home_of(channel: &str, shards: u16) -> ShardId {
    if shards <= 1 {
        return ShardId(0);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in channel.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId(u16::try_from(h % u64::from(shards)).unwrap_or(0))
}

/// The channel the relay (`/ws`) uses: no client can name it.
#[must_use]
pub fn relay_channel() -> ChannelName {
    ChannelName::new("")
}

/// What a publication carries into the home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PubPayload {
    /// A seed client's chat line; Centrifugo clients see `{"text": line}`.
    Text(Arc<str>),
    /// A Centrifugo client's `data`, raw JSON.
    Json(Bytes),
    /// A relay frame, passed on verbatim.
    Relay(Frame),
}

/// Who on a shard gets a delivered frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Seed members.
    Seed,
    /// Seed members, as a presence snapshot (a newer one supersedes it).
    SeedPresence,
    /// Every Centrifugo member.
    Centrifuge,
    /// Centrifugo members that get join/leave pushes.
    CentrifugeJoinLeave,
    /// Relay members.
    Relay,
}

impl Audience {
    #[must_use]
    pub fn includes(self, codec: Codec, join_leave: bool) -> bool {
        match self {
            Self::Seed | Self::SeedPresence => codec == Codec::SeedJson,
            Self::Centrifuge => codec == Codec::Centrifuge,
            Self::CentrifugeJoinLeave => codec == Codec::Centrifuge && join_leave,
            Self::Relay => codec == Codec::Relay,
        }
    }
}

/// A frame for part of a channel's members, as the home encoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub frame: Frame,
    pub to: Audience,
}

/// What a client's tokens say about it: the connection token's `info`
/// (`conn_info`) and the subscription token's (`chan_info`), raw JSON,
/// shown with its publications, presence and join/leave pushes. `None` for
/// a client without either: most clients pay one pointer.
pub type Infos = Option<Arc<InfoPair>>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfoPair {
    pub conn_info: Option<Bytes>,
    pub chan_info: Option<Bytes>,
}

/// The [`Infos`] for a client with `conn_info` and `chan_info`.
#[must_use]
pub fn infos(conn_info: Option<Bytes>, chan_info: Option<Bytes>) -> Infos {
    (conn_info.is_some() || chan_info.is_some()).then(|| {
        Arc::new(InfoPair {
            conn_info,
            chan_info,
        })
    })
}

/// A publication as a channel's home keeps it in the stream's window, and
/// sends it to a recovering subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    /// When the home accepted it (for `history_ttl`).
    pub at: Timestamp,
    /// The publication's data as Centrifugo clients see it (raw JSON).
    pub data: Bytes,
    /// A seed client's line, as seed clients see it. In the relay channel
    /// (`""`, crossing nodes) `data` is the frame and `Some("")` marks a
    /// text frame.
    pub text: Option<Arc<str>>,
    /// The publisher: its user and its client id (kept as it was, so
    /// history shows the same publisher after a restart).
    pub user: Option<Name>,
    pub client: ClientId,
    /// The publisher's `conn_info` / `chan_info` when it published.
    pub infos: Infos,
}

/// What the home decided about a subscriber's recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub recovered: bool,
    /// The missed publications, oldest first (when recovered).
    pub publications: Vec<Stored>,
}

/// A question about a channel only its home can answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Presence,
    PresenceStats,
    History {
        limit: i32,
        since: Option<StreamPosition>,
        reverse: bool,
    },
}

/// A server API operation only a channel's home can carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiHomeOp {
    Publish(crate::api::Publish),
    Query(Query),
    /// Empties the channel's window (`history_remove`); epoch and top stay.
    RemoveHistory,
}

/// A server API operation every shard carries out for its own connections
/// (a user's connections may be on any shard), or a question about each shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiShardOp {
    Subscribe { user: Name, channel: ChannelName },
    Unsubscribe { user: Name, channel: ChannelName },
    Disconnect { user: Name, whitelist: Vec<String> },
    Channels,
    Info,
}

/// One shard's or home's answer to an API operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiPart {
    /// A result object, as JSON.
    Body(Bytes),
    /// Done, nothing to say (`{}`).
    Done,
    /// Channels homed on the shard with members, and how many.
    Channels(Vec<(ChannelName, u64)>),
    /// The shard's connections, their distinct users, channels and subscriptions.
    Info {
        clients: u64,
        users: Vec<Name>,
        channels: u64,
        subs: u64,
    },
    Error(crate::centrifuge::ErrorCode, String),
}

/// A message between shards (or from a hub to itself, with one shard).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusMessage {
    /// To the home: `conn` (on `shard`) joins `channel`. `attempt` comes
    /// back in [`BusMessage::Joined`], so a shard can tell an answer to a
    /// subscribe it has since cancelled.
    Join {
        channel: ChannelName,
        conn: ConnId,
        shard: ShardId,
        codec: Codec,
        user: Option<Name>,
        infos: Infos,
        join_leave: bool,
        attempt: u32,
        /// The position a recovering subscriber had (offset, epoch).
        recover: Option<(u64, String)>,
        /// A seed client's `history=N`: the last N publications, sent first.
        last: u8,
    },
    /// To the home: `conn` left `channel` (or gave up joining it).
    Leave { channel: ChannelName, conn: ConnId },
    /// To the home: a publication from `from`. With `reply`, the home
    /// answers command `id` of `from` (on `shard`) once the publication is
    /// accepted (durable, when the channel keeps history) or refused.
    Publish {
        channel: ChannelName,
        from: ConnId,
        user: Option<Name>,
        infos: Infos,
        payload: PubPayload,
        reply: Option<(ShardId, u32)>,
    },
    /// To the home: `id` of `conn` (on `shard`) asks `query`.
    Query {
        channel: ChannelName,
        conn: ConnId,
        shard: ShardId,
        id: u32,
        query: Query,
    },
    /// From the home: `conn` is a member of `channel` at join position
    /// `seq`; the stream was at `top` in `epoch`.
    Joined {
        channel: ChannelName,
        conn: ConnId,
        attempt: u32,
        seq: u64,
        top: u64,
        epoch: u64,
        recovery: Option<Recovery>,
    },
    /// From the home: `conn` could not join `channel` (attempt `attempt`):
    /// its stream could not be opened.
    JoinFailed {
        channel: ChannelName,
        conn: ConnId,
        attempt: u32,
    },
    /// From the home, to every shard with members: frames for them, in order.
    Deliver {
        channel: ChannelName,
        items: Arc<[Delivery]>,
    },
    /// From the home: the encoded reply to a query.
    Reply { conn: ConnId, reply: Bytes },
    /// To the home: a server API operation; answered with
    /// [`BusMessage::ApiDone`] to `reply` (shard, token).
    ApiHome {
        channel: ChannelName,
        op: ApiHomeOp,
        reply: (ShardId, u64),
    },
    /// To every shard: a server API operation on its connections.
    ApiShard {
        op: ApiShardOp,
        reply: (ShardId, u64),
    },
    /// The answer to an API operation, to the shard that asked.
    ApiDone { token: u64, part: ApiPart },
    /// To a user's home shard (`home_of(user)`): `user` opened `conn` on
    /// `shard`, which let it in (`user_connection_limit` is counted there).
    UserConnected {
        user: Name,
        conn: ConnId,
        shard: ShardId,
    },
    /// To a user's home shard: `conn` of `user` on `shard` ended.
    UserDisconnected {
        user: Name,
        conn: ConnId,
        shard: ShardId,
    },
    /// From a user's home: `conn` is over the user's limit; close it (3504).
    UserRefused { conn: ConnId },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_stable_and_spread() {
        assert_eq!(home_of("anything", 1), ShardId(0));
        assert_eq!(home_of("lobby", 8), home_of("lobby", 8));
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[usize::from(home_of(&format!("room-{i}"), 8).0)] += 1;
        }
        assert!(
            counts.iter().all(|&n| (800..1_200).contains(&n)),
            "{counts:?}"
        );
    }
}
