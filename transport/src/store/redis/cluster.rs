//! The server API across nodes: what one node asks Redis for, and the
//! calls it hands to the others.
//!
//! ```text
//! hubbub-control:<db>:api   pub/sub: "<node> <method> <body>", a call that acts on
//!                           users' connections (disconnect, unsubscribe, subscribe,
//!                           refresh), run by every other node as it comes
//! hubbub:<db>:node:<id>     string: the node's `info` entry (JSON), written at each
//!                           beat, expiring with its liveness
//! ```

use std::collections::BTreeMap;

use ::redis::Value;
use bytes::Bytes;
use hubbub_core::{ChannelName, RemoteMember};
use tokio::sync::oneshot;

use super::presence::{parse_snapshot, presence_key, SNAPSHOT};
use super::{Engine, RedisStats, MAX_BATCH};

/// The most presence keys one `channels` call reads.
pub const MAX_CHANNELS: usize = 100_000;

/// The live nodes other than ARGV[1], with their `info` entries.
///
/// KEYS: nodes. ARGV: this node, the entries' key prefix. Returns
/// `{entry, …}` (nodes without one yet are left out).
pub const NODES: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if node ~= ARGV[1] then
    local entry = redis.call('GET', ARGV[2] .. node)
    if entry then out[#out + 1] = entry end
  end
end
return out
";

/// What the API asks of the cluster.
#[derive(Debug)]
pub enum ClusterQuery {
    /// Every live node's members of a channel (this node's included).
    Members(ChannelName),
    /// Every channel with members on a live node, with their count.
    Channels,
    /// The other live nodes' `info` entries.
    Nodes,
}

/// Its answer.
#[derive(Debug)]
pub enum ClusterAnswer {
    Members(Vec<RemoteMember>),
    Channels(BTreeMap<String, u64>),
    Nodes(Vec<Bytes>),
}

pub(super) type Answer = oneshot::Sender<Result<ClusterAnswer, String>>;

/// The pub/sub channel of forwarded API calls.
pub(super) fn control_name(db: i64) -> String {
    format!("hubbub-control:{db}:api")
}

/// `"<node> <method> <body>"`.
pub(super) fn parse_forwarded(payload: &[u8]) -> Option<(u64, String, Bytes)> {
    let mut parts = payload.splitn(3, |b| *b == b' ');
    let node = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let method = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let body = Bytes::copy_from_slice(parts.next()?);
    Some((node, method, body))
}

impl Engine {
    pub(super) fn node_info_key(&self, node: u64) -> String {
        format!("hubbub:{}:node:{node}", self.db)
    }

    /// Hands a call to the other nodes.
    pub(super) fn push_forward(&self, pipe: &mut ::redis::Pipeline, method: &str, body: &[u8]) {
        let mut message = format!("{} {method} ", self.node).into_bytes();
        message.extend_from_slice(body);
        pipe.cmd("PUBLISH")
            .arg(control_name(self.db))
            .arg(message)
            .ignore();
    }

    /// A call another node forwarded: run here.
    pub(super) fn forwarded(&self, payload: &[u8]) {
        let Some((node, method, body)) = parse_forwarded(payload) else {
            RedisStats::add(&self.stats.malformed, 1);
            return;
        };
        if node == self.node {
            return;
        }
        if let Some(tx) = &self.forward_tx {
            if tx.try_send((method, body)).is_err() {
                RedisStats::add(&self.stats.errors, 1);
            }
        }
    }

    /// Writes this node's `info` entry, expiring with its liveness.
    pub(super) fn push_node_info(&self, pipe: &mut ::redis::Pipeline) {
        let entry = self
            .node_info
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(entry) = entry {
            pipe.cmd("SET")
                .arg(self.node_info_key(self.node))
                .arg(entry.as_ref())
                .arg("PX")
                .arg(self.presence.ttl_ms() * 3 / 4)
                .ignore();
        }
    }

    /// Answers an API query from Redis.
    pub(super) async fn cluster_query(&mut self, query: ClusterQuery, answer: Answer) {
        let result = match query {
            ClusterQuery::Members(channel) => self.all_members(&channel).await,
            ClusterQuery::Channels => self.all_channels().await,
            ClusterQuery::Nodes => self.other_nodes().await,
        };
        if result.is_err() {
            RedisStats::add(&self.stats.errors, 1);
        }
        let _ = answer.send(result);
    }

    async fn all_members(&mut self, channel: &ChannelName) -> Result<ClusterAnswer, String> {
        let mut pipe = ::redis::pipe();
        self.push_snapshot_of_all(&mut pipe, channel);
        let values = self.checked_query(&pipe).await?;
        let value = values.first().ok_or("redis: no answer")?;
        parse_snapshot(value, &self.stats)
            .map(|(_, members)| ClusterAnswer::Members(members))
            .ok_or_else(|| "redis: unexpected answer to a presence read".to_owned())
    }

    /// A [`SNAPSHOT`] that leaves no node out (no node is called "-").
    fn push_snapshot_of_all(&self, pipe: &mut ::redis::Pipeline, channel: &ChannelName) {
        pipe.cmd("EVAL")
            .arg(SNAPSHOT)
            .arg(2)
            .arg(presence_key(channel))
            .arg(self.nodes_key())
            .arg("-")
            .arg(self.presence.ttl_ms().saturating_mul(3));
    }

    async fn all_channels(&mut self) -> Result<ClusterAnswer, String> {
        // The presence keys, by SCAN (bounded), then each one's live members.
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut pipe = ::redis::pipe();
            pipe.cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("hubbub:{*}:presence")
                .arg("COUNT")
                .arg(1000);
            let values = self.checked_query(&pipe).await?;
            let Some(Value::Array(parts)) = values.into_iter().next() else {
                return Err("redis: unexpected answer to SCAN".to_owned());
            };
            let [next, Value::Array(found)] = parts.as_slice() else {
                return Err("redis: unexpected answer to SCAN".to_owned());
            };
            for key in found {
                if let Value::BulkString(key) = key {
                    let name = std::str::from_utf8(key)
                        .ok()
                        .and_then(|k| k.strip_prefix("hubbub:{")?.strip_suffix("}:presence"));
                    if let Some(name) = name {
                        keys.push(ChannelName::new(name));
                    }
                }
            }
            cursor = super::int(next).ok_or("redis: a SCAN cursor that is not a number")?;
            if cursor == 0 || keys.len() >= MAX_CHANNELS {
                break;
            }
        }
        let mut channels = BTreeMap::new();
        for chunk in keys.chunks(MAX_BATCH) {
            let mut pipe = ::redis::pipe();
            for channel in chunk {
                self.push_snapshot_of_all(&mut pipe, channel);
            }
            let values = self.checked_query(&pipe).await?;
            for (channel, value) in chunk.iter().zip(&values) {
                let n = parse_snapshot(value, &self.stats).map_or(0, |(_, m)| m.len() as u64);
                if n > 0 {
                    channels.insert(channel.as_str().to_owned(), n);
                }
            }
        }
        Ok(ClusterAnswer::Channels(channels))
    }

    async fn other_nodes(&mut self) -> Result<ClusterAnswer, String> {
        let mut pipe = ::redis::pipe();
        pipe.cmd("EVAL")
            .arg(NODES)
            .arg(1)
            .arg(self.nodes_key())
            .arg(self.node.to_string())
            .arg(format!("hubbub:{}:node:", self.db));
        let values = self.checked_query(&pipe).await?;
        let Some(Value::Array(entries)) = values.into_iter().next() else {
            return Err("redis: unexpected answer to a nodes read".to_owned());
        };
        Ok(ClusterAnswer::Nodes(
            entries
                .into_iter()
                .filter_map(|e| match e {
                    Value::BulkString(b) => Some(Bytes::from(b)),
                    _ => None,
                })
                .collect(),
        ))
    }

    /// [`Engine::query`], with the reason when there is no answer.
    async fn checked_query(&mut self, pipe: &::redis::Pipeline) -> Result<Vec<Value>, String> {
        if !self.is_up() {
            return Err(format!("redis: {}", self.stats.reason_of(self.instance)));
        }
        match self.query(pipe).await {
            Some(values) => Ok(values),
            None => Err(format!("redis: {}", self.stats.reason_of(self.instance))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_calls_parse() {
        let (node, method, body) =
            parse_forwarded(br#"42 disconnect {"user":"a b"}"#).expect("parses");
        assert_eq!((node, method.as_str()), (42, "disconnect"));
        assert_eq!(body.as_ref(), br#"{"user":"a b"}"#);
        assert!(parse_forwarded(b"x disconnect {}").is_none());
        assert!(parse_forwarded(b"42").is_none());
    }
}
