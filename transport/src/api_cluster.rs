//! The server API over several nodes (`--store redis`): a call answered by
//! this node's hubs is widened to the cluster.
//!
//! - `disconnect`, `unsubscribe`, `subscribe`, `refresh` act on users'
//!   connections: after this node has run it, the call goes to every other
//!   node (pub/sub), which runs it on its own connections.
//! - `presence` adds the members Redis lists on other nodes; `presence_stats`
//!   counts every node's members; `channels` lists every channel with
//!   members on a live node; `info` lists every live node.
//! - `publish` and `broadcast` already reach every node through the engine;
//!   `history` reads the shared stream.
//! - `batch` widens each of its commands as if it came alone
//!   ([`widen_batch`]).
//!
//! When Redis cannot answer, the call fails with error 100 (internal), as
//! a publish does.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use hubbub_core::api::glob_match;
use hubbub_core::centrifuge::{push_client_info, ClientInfo};
use hubbub_core::{ApiCommand, ChannelName, RemoteMember};
use serde_json::{Map, Value};

use crate::store::redis::{ClusterAnswer, ClusterQuery, RedisHandle};

/// How a call's answer reaches beyond this node.
#[derive(Debug)]
pub enum Widen {
    /// Run on every other node too.
    Forward,
    Presence(String),
    PresenceStats(String),
    Channels(Option<String>),
    Info,
}

impl Widen {
    /// What `command` needs, if anything.
    #[must_use]
    pub fn of(command: &ApiCommand) -> Option<Self> {
        Some(match command {
            ApiCommand::Disconnect { .. }
            | ApiCommand::Unsubscribe { .. }
            | ApiCommand::Subscribe { .. }
            | ApiCommand::Refresh { .. } => Self::Forward,
            ApiCommand::Presence { channel } => Self::Presence(channel.clone()),
            ApiCommand::PresenceStats { channel } => Self::PresenceStats(channel.clone()),
            ApiCommand::Channels { pattern } => Self::Channels(pattern.clone()),
            ApiCommand::Info { .. } => Self::Info,
            _ => return None,
        })
    }

    /// This node's answer `local`, widened to the cluster.
    pub async fn apply(
        self,
        cluster: &RedisHandle,
        method: &str,
        body: Bytes,
        local: Bytes,
    ) -> Bytes {
        let Ok(mut answer) = serde_json::from_slice::<Value>(&local) else {
            return local;
        };
        if answer.get("error").is_some() {
            return local;
        }
        if matches!(self, Self::Forward) {
            cluster.forward_api(method, body);
            return local;
        }
        let query = match &self {
            Self::Presence(channel) | Self::PresenceStats(channel) => {
                ClusterQuery::Members(ChannelName::new(channel))
            }
            Self::Channels(_) => ClusterQuery::Channels,
            Self::Info | Self::Forward => ClusterQuery::Nodes,
        };
        let wide = match cluster.query(query).await {
            Ok(wide) => wide,
            Err(why) => {
                tracing::warn!(method, error = %why, "the cluster's part of an API call failed");
                return Bytes::from_static(
                    br#"{"error":{"code":100,"message":"internal server error"}}"#,
                );
            }
        };
        let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) else {
            return local;
        };
        match (self, wide) {
            (Self::Presence(_), ClusterAnswer::Members(members)) => {
                add_members(result, &members);
            }
            (Self::PresenceStats(_), ClusterAnswer::Members(members)) => {
                count_members(result, &members);
            }
            (Self::Channels(pattern), ClusterAnswer::Channels(counts)) => {
                add_channels(result, pattern.as_deref(), counts);
            }
            (Self::Info, ClusterAnswer::Nodes(entries)) => add_nodes(result, &entries),
            _ => {}
        }
        Bytes::from(answer.to_string())
    }
}

/// What each command of a `batch` needs, in order; `None` for a command
/// that is not widened (or for a call that is not a batch).
#[must_use]
pub fn of_batch(command: &ApiCommand) -> Option<Vec<Option<Widen>>> {
    match command {
        ApiCommand::Batch(commands) => {
            let widen: Vec<_> = commands.iter().map(Widen::of).collect();
            widen.iter().any(Option::is_some).then_some(widen)
        }
        _ => None,
    }
}

/// This node's answer `local` to the batch `body`, each reply widened as
/// [`Widen::apply`] widens a single call; a reply whose widening fails
/// becomes error 100 without touching the others. `widen` comes from
/// [`of_batch`] on the same body.
pub async fn widen_batch(
    cluster: &RedisHandle,
    widen: Vec<Option<Widen>>,
    body: &[u8],
    local: Bytes,
) -> Bytes {
    let Ok(mut answer) = serde_json::from_slice::<Value>(&local) else {
        return local;
    };
    // The commands as they came: each one's method and body, to forward.
    let sent: Vec<(String, Bytes)> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|b| b.get("commands").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            c.as_object()
                .and_then(|o| o.iter().next())
                .map(|(m, b)| (m.clone(), Bytes::from(b.to_string())))
                .unwrap_or_default()
        })
        .collect();
    let Some(replies) = answer
        .pointer_mut("/result/replies")
        .and_then(Value::as_array_mut)
    else {
        return local;
    };
    for (i, widen) in widen.into_iter().enumerate() {
        let (Some(widen), Some(reply), Some((method, sent))) =
            (widen, replies.get_mut(i), sent.get(i))
        else {
            continue;
        };
        let Some(result) = reply.get(method.as_str()) else {
            continue; // an error reply stays as it is
        };
        let single = Bytes::from(serde_json::json!({ "result": result }).to_string());
        let wide = widen.apply(cluster, method, sent.clone(), single).await;
        let Ok(mut wide) = serde_json::from_slice::<Value>(&wide) else {
            continue;
        };
        *reply = match wide.get_mut("result") {
            Some(result) => serde_json::json!({ method.as_str(): result.take() }),
            None => wide,
        };
    }
    Bytes::from(answer.to_string())
}

/// A member as a `presence` answer shows it.
fn member_json(m: &RemoteMember) -> Value {
    let client = m.client.to_string();
    let infos = m.infos.as_deref();
    let mut out = Vec::new();
    push_client_info(
        &mut out,
        &ClientInfo {
            user: m.user.as_ref().map_or("", |u| u.as_str()),
            client: &client,
            conn_info: infos.and_then(|i| i.conn_info.as_deref()),
            chan_info: infos.and_then(|i| i.chan_info.as_deref()),
        },
    );
    serde_json::from_slice(&out).unwrap_or(Value::Null)
}

fn add_members(result: &mut Map<String, Value>, members: &[RemoteMember]) {
    let presence = result
        .entry("presence")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(presence) = presence.as_object_mut() {
        for m in members {
            presence
                .entry(m.client.to_string())
                .or_insert_with(|| member_json(m));
        }
    }
}

/// Every node's members (Redis has this node's too); never fewer than this
/// node counted (a join not yet written).
fn count_members(result: &mut Map<String, Value>, members: &[RemoteMember]) {
    let users: BTreeSet<&str> = members
        .iter()
        .map(|m| m.user.as_ref().map_or("", |u| u.as_str()))
        .collect();
    for (key, n) in [("num_clients", members.len()), ("num_users", users.len())] {
        let local = result.get(key).and_then(Value::as_u64).unwrap_or(0);
        result.insert(key.to_owned(), Value::from((n as u64).max(local)));
    }
}

fn add_channels(
    result: &mut Map<String, Value>,
    pattern: Option<&str>,
    counts: BTreeMap<String, u64>,
) {
    let channels = result
        .entry("channels")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(channels) = channels.as_object_mut() else {
        return;
    };
    for (name, n) in counts {
        if pattern.is_some_and(|p| !glob_match(p, &name)) {
            continue;
        }
        let entry = channels
            .entry(name)
            .or_insert_with(|| serde_json::json!({"num_clients": 0}));
        let local = entry["num_clients"].as_u64().unwrap_or(0);
        entry["num_clients"] = Value::from(n.max(local));
    }
}

fn add_nodes(result: &mut Map<String, Value>, entries: &[Bytes]) {
    let Some(nodes) = result.get_mut("nodes").and_then(Value::as_array_mut) else {
        return;
    };
    for entry in entries {
        if let Ok(node @ Value::Object(_)) = serde_json::from_slice::<Value>(entry) {
            nodes.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hubbub_core::{ClientId, Name};

    fn member(client: u128, user: &str) -> RemoteMember {
        RemoteMember {
            node: 1,
            client: ClientId(client),
            user: Name::new(user).ok(),
            infos: None,
        }
    }

    #[test]
    fn answers_widen_without_doubling() {
        let mut result = serde_json::json!({"presence": {}});
        let result = result.as_object_mut().expect("object");
        add_members(result, &[member(1, "ann"), member(2, "bob")]);
        add_members(result, &[member(1, "ann")]);
        assert_eq!(result["presence"].as_object().map(Map::len), Some(2));
        let mut stats = serde_json::json!({"num_clients": 3, "num_users": 1});
        let stats = stats.as_object_mut().expect("object");
        count_members(stats, &[member(1, "ann"), member(2, "ann")]);
        assert_eq!(
            (stats["num_clients"].clone(), stats["num_users"].clone()),
            (3.into(), 1.into())
        );
        let mut channels = serde_json::json!({"channels": {"a": {"num_clients": 2}}});
        let channels = channels.as_object_mut().expect("object");
        let counts = [
            ("a".to_owned(), 5),
            ("b:x".to_owned(), 1),
            ("c".to_owned(), 1),
        ]
        .into();
        add_channels(channels, Some("b*"), counts);
        // The local answer was filtered already; Redis' counts are here.
        assert_eq!(
            Value::Object(channels.clone()),
            serde_json::json!({"channels": {"a": {"num_clients": 2}, "b:x": {"num_clients": 1}}})
        );
    }
}
