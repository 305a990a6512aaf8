//! Several nodes over one delivering engine (the Redis engine's contract,
//! modelled with `MemoryStore`): every publication reaches every
//! subscriber once, in offset order, whatever node made it and however
//! the engine's answers and deliveries interleave; a lost delivery is
//! read back from the stream.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use hubbub_core::{
    ChannelName, ChannelOptions, ClientId, Config, ConnId, Frame, Hub, Input, MemoryStore,
    Namespaces, Output, RemoteMember, Route, StoreEvent, StoreRequest, Timestamp,
};
use serde_json::Value;

/// Nodes sharing one engine. Deliveries to a node wait in its queue
/// until the test lets them through, to interleave them with answers.
struct Cluster {
    store: MemoryStore,
    nodes: Vec<Hub>,
    /// Channels each node follows (from its `Open` to its unfollow).
    follows: Vec<BTreeSet<String>>,
    /// Deliveries not yet handed to each node.
    deliveries: Vec<VecDeque<StoreEvent>>,
    /// Answers not yet handed to each node.
    answers: Vec<VecDeque<StoreEvent>>,
    /// Frames each (node, conn) received: text frames' JSON lines.
    seen: Vec<Vec<(u64, Value)>>,
    /// Every frame each (node, conn) received, as sent.
    frames: Vec<Vec<(u64, Frame)>>,
    /// Members as the engine records them: (channel, node, client).
    members: BTreeMap<(String, u64, ClientId), RemoteMember>,
}

impl Cluster {
    fn new(nodes: usize, idle_streams: usize) -> Self {
        Self::with_history(nodes, idle_streams, 1000)
    }

    fn with_history(nodes: usize, idle_streams: usize, history_size: u32) -> Self {
        Self {
            store: MemoryStore::new(100),
            nodes: (0..nodes)
                .map(|i| {
                    Hub::with_delivering_store(Config {
                        entropy: 1 + i as u64,
                        idle_streams,
                        namespaces: Namespaces {
                            default: Arc::new(ChannelOptions {
                                history_size,
                                ..ChannelOptions::default()
                            }),
                            ..Namespaces::default()
                        },
                        ..Config::default()
                    })
                })
                .collect(),
            follows: vec![BTreeSet::new(); nodes],
            deliveries: vec![VecDeque::new(); nodes],
            answers: vec![VecDeque::new(); nodes],
            seen: vec![Vec::new(); nodes],
            frames: vec![Vec::new(); nodes],
            members: BTreeMap::new(),
        }
    }

    /// The members of `channel` on nodes other than `node`, as the engine
    /// has them.
    fn snapshot(&self, channel: &ChannelName, node: usize) -> StoreEvent {
        StoreEvent::RemoteMembers {
            channel: channel.clone(),
            members: self
                .members
                .iter()
                .filter(|((c, n, _), _)| c == channel.as_str() && *n != node as u64)
                .map(|(_, m)| m.clone())
                .collect(),
        }
    }

    /// Drains `node`'s outputs and runs its store requests on the engine.
    fn drain(&mut self, node: usize) {
        while let Some(out) = self.nodes[node].poll_output() {
            if let Output::Send { conn, frame, .. } = out {
                if frame.kind == hubbub_core::MessageKind::Text {
                    for line in frame.payload.split(|b| *b == b'\n') {
                        let v: Value = serde_json::from_slice(line).unwrap();
                        self.seen[node].push((conn.0, v));
                    }
                }
                self.frames[node].push((conn.0, frame));
            }
        }
        while let Some(request) = self.nodes[node].poll_store() {
            let mut then = None;
            if let StoreRequest::Open { channel, .. } = &request {
                self.follows[node].insert(channel.as_str().to_owned());
                // After the stream, the engine reads the other nodes' members.
                then = Some(self.snapshot(channel, node));
            }
            let event = self.store.execute(request);
            if let StoreEvent::Appended {
                channel,
                result: Ok((offset, epoch)),
                ..
            } = &event
            {
                let publication = self
                    .store
                    .publications(channel.as_str())
                    .find(|p| p.offset == *offset)
                    .cloned()
                    .unwrap();
                for to in 0..self.nodes.len() {
                    if self.follows[to].contains(channel.as_str()) {
                        self.deliveries[to].push_back(StoreEvent::Delivered {
                            channel: channel.clone(),
                            epoch: *epoch,
                            publication: publication.clone(),
                        });
                    }
                }
            }
            // The engine reads the members with the stream, and says so first.
            self.answers[node].extend(then);
            self.answers[node].push_back(event);
        }
        while let Some(channel) = self.nodes[node].poll_follow() {
            self.follows[node].insert(channel.as_str().to_owned());
            let snapshot = self.snapshot(&channel, node);
            self.deliveries[node].push_back(snapshot);
        }
        while let Some(change) = self.nodes[node].poll_presence() {
            let key = (
                change.channel.as_str().to_owned(),
                node as u64,
                change.client,
            );
            let event = if change.joined {
                let member = RemoteMember {
                    node: node as u64,
                    client: change.client,
                    user: change.user,
                    infos: change.infos,
                };
                self.members.insert(key, member.clone());
                StoreEvent::RemoteJoined {
                    channel: change.channel.clone(),
                    member,
                }
            } else {
                self.members.remove(&key);
                StoreEvent::RemoteLeft {
                    channel: change.channel.clone(),
                    node: node as u64,
                    client: change.client,
                }
            };
            for to in 0..self.nodes.len() {
                if to != node && self.follows[to].contains(change.channel.as_str()) {
                    self.deliveries[to].push_back(event.clone());
                }
            }
        }
        while let Some((channel, publication)) = self.nodes[node].poll_broadcast() {
            for to in 0..self.nodes.len() {
                if to != node && self.follows[to].contains(channel.as_str()) {
                    self.deliveries[to].push_back(StoreEvent::Delivered {
                        channel: channel.clone(),
                        epoch: 0,
                        publication: publication.clone(),
                    });
                }
            }
        }
        while let Some(channel) = self.nodes[node].poll_unfollow() {
            self.follows[node].remove(channel.as_str());
        }
    }

    fn input(&mut self, node: usize, input: Input) {
        self.nodes[node].handle_input(Timestamp::from_millis(1), input);
        self.drain(node);
    }

    fn send(&mut self, node: usize, conn: u64, text: &str) {
        self.input(
            node,
            Input::Message {
                conn: ConnId(conn),
                frame: Frame::text(text.to_owned()),
            },
        );
    }

    fn answer(&mut self, node: usize) -> bool {
        let Some(event) = self.answers[node].pop_front() else {
            return false;
        };
        self.nodes[node].handle_store(Timestamp::from_millis(1), event);
        self.drain(node);
        true
    }

    fn deliver(&mut self, node: usize) -> bool {
        let Some(event) = self.deliveries[node].pop_front() else {
            return false;
        };
        self.nodes[node].handle_store(Timestamp::from_millis(1), event);
        self.drain(node);
        true
    }

    /// Everything in flight, answers of each node first or deliveries first.
    fn settle(&mut self, deliveries_first: bool) {
        loop {
            let mut any = false;
            for node in 0..self.nodes.len() {
                type Step = fn(&mut Cluster, usize) -> bool;
                let (first, then): (Step, Step) = if deliveries_first {
                    (Self::deliver, Self::answer)
                } else {
                    (Self::answer, Self::deliver)
                };
                any |= first(self, node) || then(self, node);
            }
            if !any {
                return;
            }
        }
    }

    fn subscribe(&mut self, node: usize, conn: u64) {
        self.input(
            node,
            Input::Open {
                conn: ConnId(conn),
                route: Route::Centrifuge,
            },
        );
        self.send(
            node,
            conn,
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}",
        );
        self.settle(false);
    }

    /// The offsets and data of the `pub` pushes `conn` on `node` got.
    fn pushes(&self, node: usize, conn: u64) -> Vec<(u64, i64)> {
        self.seen[node]
            .iter()
            .filter(|(c, v)| *c == conn && v["push"]["pub"].is_object())
            .map(|(_, v)| {
                let p = &v["push"]["pub"];
                (p["offset"].as_u64().unwrap(), p["data"].as_i64().unwrap())
            })
            .collect()
    }
}

fn publish(cluster: &mut Cluster, node: usize, conn: u64, id: u32, data: i64) {
    cluster.send(
        node,
        conn,
        &format!(r#"{{"id":{id},"publish":{{"channel":"c","data":{data}}}}}"#),
    );
}

#[test]
fn publications_from_two_nodes_reach_everyone_once_in_order() {
    for deliveries_first in [false, true] {
        let mut cluster = Cluster::new(2, 1000);
        cluster.subscribe(0, 1);
        cluster.subscribe(1, 2);
        // Interleaved, with answers and deliveries held back.
        for i in 0..10 {
            publish(
                &mut cluster,
                i % 2,
                1 + i as u64 % 2,
                10 + i as u32,
                i as i64,
            );
            if i % 3 == 2 {
                cluster.settle(deliveries_first);
            }
        }
        cluster.settle(deliveries_first);
        for (node, conn) in [(0, 1), (1, 2)] {
            let offsets: Vec<u64> = cluster.pushes(node, conn).iter().map(|p| p.0).collect();
            assert_eq!(
                offsets,
                (1..=10).collect::<Vec<u64>>(),
                "node {node}, deliveries first: {deliveries_first}"
            );
        }
        // Both nodes' subscribers saw the same publication at each offset.
        assert_eq!(cluster.pushes(0, 1), cluster.pushes(1, 2));
    }
}

#[test]
fn a_lost_delivery_is_read_back_from_the_stream() {
    let mut cluster = Cluster::new(2, 1000);
    cluster.subscribe(0, 1);
    cluster.subscribe(1, 2);
    publish(&mut cluster, 0, 1, 10, 1);
    publish(&mut cluster, 0, 1, 11, 2);
    publish(&mut cluster, 0, 1, 12, 3);
    while cluster.answer(0) {}
    // Node 1 never hears of offset 2; offset 3 shows the gap.
    let lost = cluster.deliveries[1].remove(1);
    assert!(matches!(lost, Some(StoreEvent::Delivered { .. })));
    cluster.settle(true);
    let offsets: Vec<u64> = cluster.pushes(1, 2).iter().map(|p| p.0).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert_eq!(cluster.pushes(0, 1), cluster.pushes(1, 2));
}

#[test]
fn a_resync_reads_what_was_missed_and_a_lost_stream_starts_a_new_epoch() {
    let mut cluster = Cluster::new(2, 1000);
    cluster.subscribe(0, 1);
    cluster.subscribe(1, 2);
    publish(&mut cluster, 0, 1, 10, 1);
    publish(&mut cluster, 0, 1, 11, 2);
    cluster.settle(false);
    publish(&mut cluster, 0, 1, 12, 3);
    while cluster.answer(0) {}
    cluster.deliveries[1].clear();
    cluster.nodes[1].handle_store(
        Timestamp::from_millis(1),
        StoreEvent::Resync {
            channel: ChannelName::new("c"),
        },
    );
    cluster.drain(1);
    cluster.settle(false);
    let offsets: Vec<u64> = cluster.pushes(1, 2).iter().map(|p| p.0).collect();
    assert_eq!(offsets, [1, 2, 3]);
    // The engine loses everything: the next publication starts epoch 2 at
    // offset 1, and every node follows it.
    cluster.store.clear();
    publish(&mut cluster, 1, 2, 13, 4);
    cluster.settle(false);
    for (node, conn) in [(0, 1), (1, 2)] {
        assert_eq!(cluster.pushes(node, conn).last(), Some(&(1, 4)), "{node}");
    }
}

#[test]
fn a_node_follows_a_channel_only_while_it_has_its_room() {
    let mut cluster = Cluster::new(2, 0);
    cluster.subscribe(1, 2);
    assert!(cluster.follows[1].contains("c"));
    assert!(!cluster.follows[0].contains("c"));
    cluster.input(
        1,
        Input::Disconnect {
            conn: ConnId(2),
            reason: hubbub_core::CloseReason::PeerClosed,
        },
    );
    assert!(
        cluster.follows[1].is_empty(),
        "unfollowed with its last member"
    );
}

#[test]
fn a_channel_without_history_crosses_nodes_without_offsets() {
    let mut cluster = Cluster::with_history(2, 1000, 0);
    for (node, conn) in [(0, 1), (1, 2)] {
        cluster.input(
            node,
            Input::Open {
                conn: ConnId(conn),
                route: Route::Centrifuge,
            },
        );
        cluster.send(
            node,
            conn,
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"t\"}}",
        );
    }
    assert!(cluster.follows[1].contains("t"), "followed without an open");
    // A publisher on node 0 that is not a member there.
    cluster.input(
        0,
        Input::Open {
            conn: ConnId(3),
            route: Route::Centrifuge,
        },
    );
    cluster.send(0, 3, "{\"id\":1,\"connect\":{}}");
    for (conn, data) in [(1, 7), (3, 8)] {
        cluster.send(
            0,
            conn,
            &format!(r#"{{"id":5,"publish":{{"channel":"t","data":{data}}}}}"#),
        );
    }
    cluster.settle(false);
    let typing = |cluster: &Cluster, node: usize, conn: u64| -> Vec<Value> {
        cluster.seen[node]
            .iter()
            .filter(|(c, v)| *c == conn && v["push"]["channel"] == "t")
            .map(|(_, v)| v["push"]["pub"].clone())
            .collect()
    };
    let on_1 = typing(&cluster, 1, 2);
    let data: Vec<&Value> = on_1.iter().map(|p| &p["data"]).collect();
    assert_eq!(data, [7, 8], "once each");
    assert!(on_1.iter().all(|p| p.get("offset").is_none()), "no offset");
    assert_eq!(typing(&cluster, 0, 1), on_1, "its own not twice");
    // A resync of a channel without a stream reads nothing.
    cluster.nodes[1].handle_store(
        Timestamp::from_millis(1),
        StoreEvent::Resync {
            channel: ChannelName::new("t"),
        },
    );
    assert!(cluster.nodes[1].poll_store().is_none(), "no open");
    cluster.input(
        1,
        Input::Disconnect {
            conn: ConnId(2),
            reason: hubbub_core::CloseReason::PeerClosed,
        },
    );
    assert!(!cluster.follows[1].contains("t"));
}

#[test]
fn a_leave_and_a_join_waiting_for_a_reread_keep_the_room_and_its_remote_members() {
    let mut cluster = Cluster::new(2, 1000);
    cluster.subscribe(1, 2);
    cluster.subscribe(0, 1);
    let remote = |cluster: &Cluster| cluster.nodes[0].remote_members("c").count();
    assert_eq!(remote(&cluster), 1, "node 1's member, seen from node 0");
    // Node 0 reads the stream again (the engine had lost its subscription);
    // while it reads, its only member leaves and another client joins.
    cluster.nodes[0].handle_store(
        Timestamp::from_millis(1),
        StoreEvent::Resync {
            channel: ChannelName::new("c"),
        },
    );
    cluster.drain(0);
    cluster.input(
        0,
        Input::Disconnect {
            conn: ConnId(1),
            reason: hubbub_core::CloseReason::PeerClosed,
        },
    );
    cluster.input(
        0,
        Input::Open {
            conn: ConnId(3),
            route: Route::Centrifuge,
        },
    );
    cluster.send(
        0,
        3,
        "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\"}}",
    );
    cluster.settle(false);
    assert_eq!(remote(&cluster), 1, "node 1's member is still known");
    let epochs: Vec<&Value> = cluster.seen[0]
        .iter()
        .filter(|(_, v)| v["id"] == 2)
        .map(|(_, v)| &v["subscribe"]["epoch"])
        .collect();
    assert_eq!(epochs.len(), 2, "both subscribed: {epochs:?}");
    assert_eq!(epochs[0], epochs[1], "the stream's epoch, not a new one");
    // A publication through node 0 reaches node 1's member at offset 1.
    publish(&mut cluster, 0, 3, 9, 5);
    cluster.settle(false);
    assert_eq!(cluster.pushes(1, 2), [(1, 5)]);
}

#[test]
fn a_leave_waiting_for_a_reread_that_fails_still_leaves() {
    let mut cluster = Cluster::new(2, 1000);
    cluster.subscribe(1, 2);
    cluster.subscribe(0, 1);
    assert_eq!(cluster.nodes[1].remote_members("c").count(), 1);
    // Node 0 reads the stream again, and its member leaves meanwhile; the
    // read fails (the engine is unreachable).
    cluster.nodes[0].handle_store(
        Timestamp::from_millis(1),
        StoreEvent::Resync {
            channel: ChannelName::new("c"),
        },
    );
    let open = cluster.nodes[0].poll_store().unwrap();
    cluster.drain(0);
    cluster.input(
        0,
        Input::Disconnect {
            conn: ConnId(1),
            reason: hubbub_core::CloseReason::PeerClosed,
        },
    );
    let failed = open.fail(hubbub_core::StoreError::new("unreachable"));
    cluster.nodes[0].handle_store(Timestamp::from_millis(1), failed);
    cluster.drain(0);
    cluster.settle(false);
    assert_eq!(
        cluster.nodes[1].remote_members("c").count(),
        0,
        "node 1 heard that node 0's member left"
    );
    assert!(
        cluster.follows[0].is_empty(),
        "node 0 has no room for it any more"
    );
}

#[test]
fn relay_frames_cross_nodes_byte_for_byte_with_their_opcode() {
    let mut cluster = Cluster::new(3, 1000);
    // Relay connections on nodes 0 and 1; none on node 2.
    for (node, conn) in [(0, 1), (0, 2), (1, 3)] {
        cluster.input(
            node,
            Input::Open {
                conn: ConnId(conn),
                route: Route::Relay,
            },
        );
    }
    cluster.settle(false);
    assert!(cluster.follows[1].contains(""), "the relay is followed");
    assert!(
        !cluster.follows[2].contains(""),
        "not without relay members"
    );
    // Text (valid JSON, as the test's reader parses it) and binary.
    cluster.send(0, 1, "\"café\"");
    cluster.input(
        1,
        Input::Message {
            conn: ConnId(3),
            frame: Frame::binary(bytes::Bytes::from_static(b"\xff\x00bin")),
        },
    );
    cluster.settle(true);
    let text = Frame::text("\"café\"");
    let binary = Frame::binary(bytes::Bytes::from_static(b"\xff\x00bin"));
    let got = |cluster: &Cluster, node: usize, conn: u64| -> Vec<Frame> {
        cluster.frames[node]
            .iter()
            .filter(|(c, _)| *c == conn)
            .map(|(_, f)| f.clone())
            .collect()
    };
    for (node, conn) in [(0, 1), (0, 2), (1, 3)] {
        let frames = got(&cluster, node, conn);
        assert_eq!(
            frames.len(),
            2,
            "each frame once on node {node} conn {conn}"
        );
        assert!(frames.contains(&text) && frames.contains(&binary));
    }
    // Relay traffic never reaches rooms, presence or the engine's streams.
    assert!(cluster.members.is_empty(), "relay members have no presence");
    assert!(cluster.store.publications("").next().is_none());
    // The last relay member of node 1 leaves: it stops following.
    cluster.disconnect(1, 3);
    assert!(!cluster.follows[1].contains(""));
    cluster.send(0, 2, "1");
    cluster.settle(false);
    assert_eq!(got(&cluster, 1, 3).len(), 2, "nothing after leaving");
    assert_eq!(got(&cluster, 0, 1).len(), 3, "still on its own node");
}

impl Cluster {
    /// A seed client `name` in room `room` on `node`.
    fn seed_join(&mut self, node: usize, conn: u64, room: &str, name: &str) {
        self.input(
            node,
            Input::Open {
                conn: ConnId(conn),
                route: Route::Room {
                    room: hubbub_core::Name::new(room).unwrap(),
                    username: hubbub_core::Name::new(name).unwrap(),
                    history: 0,
                },
            },
        );
        self.settle(false);
    }

    /// The seed messages of `kind` that `conn` on `node` got, by content.
    fn seed_seen(&self, node: usize, conn: u64, kind: &str) -> Vec<String> {
        self.seen[node]
            .iter()
            .filter(|(c, v)| *c == conn && v["type"] == kind)
            .map(|(_, v)| v["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn disconnect(&mut self, node: usize, conn: u64) {
        self.input(
            node,
            Input::Disconnect {
                conn: ConnId(conn),
                reason: hubbub_core::CloseReason::PeerClosed,
            },
        );
        self.settle(false);
    }
}

#[test]
fn seed_members_on_two_nodes_see_one_room() {
    let mut cluster = Cluster::new(2, 1000);
    cluster.seed_join(0, 1, "lobby", "ann");
    cluster.seed_join(1, 2, "lobby", "bob");
    // Bob joined second, on the other node: both see both, in join order.
    assert_eq!(
        cluster.seed_seen(0, 1, "online_users").last().unwrap(),
        "ann,bob"
    );
    assert_eq!(
        cluster.seed_seen(1, 2, "online_users").last().unwrap(),
        "ann,bob"
    );
    assert!(cluster
        .seed_seen(0, 1, "user_joined")
        .contains(&"bob joined the room".to_owned()));
    cluster.seed_join(0, 3, "lobby", "cat");
    assert_eq!(
        cluster.seed_seen(1, 2, "online_users").last().unwrap(),
        "ann,bob,cat"
    );
    cluster.disconnect(0, 1);
    assert_eq!(
        cluster.seed_seen(1, 2, "online_users").last().unwrap(),
        "bob,cat"
    );
    assert!(cluster
        .seed_seen(1, 2, "user_left")
        .contains(&"ann left the room".to_owned()));
    // Node 0 dies: its members leave node 1's room.
    cluster.nodes[1].handle_store(Timestamp::from_millis(2), StoreEvent::NodeGone { node: 0 });
    cluster.drain(1);
    assert_eq!(
        cluster.seed_seen(1, 2, "online_users").last().unwrap(),
        "bob"
    );
    assert_eq!(cluster.nodes[1].remote_members("lobby").count(), 0);
}

#[test]
fn presence_and_join_leave_span_the_nodes() {
    let mut cluster = Cluster::new(2, 1000);
    for (node, conn) in [(0, 1), (1, 2)] {
        cluster.input(
            node,
            Input::Open {
                conn: ConnId(conn),
                route: Route::Centrifuge,
            },
        );
        cluster.send(
            node,
            conn,
            "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"c\",\"join_leave\":true}}",
        );
        cluster.settle(false);
    }
    // Node 0's member heard of its own join, then node 1's.
    let joined: Vec<String> = cluster.seen[0]
        .iter()
        .filter(|(c, v)| *c == 1 && v["push"]["join"].is_object())
        .map(|(_, v)| v["push"]["join"]["info"]["client"].to_string())
        .collect();
    let node1_client = cluster.nodes[1].client_id(ConnId(2)).to_string();
    assert_eq!(joined.len(), 2, "{:?}", cluster.seen[0]);
    assert_eq!(joined[1], format!("{node1_client:?}"));
    cluster.send(1, 2, r#"{"id":3,"presence":{"channel":"c"}}"#);
    cluster.send(0, 1, r#"{"id":4,"presence_stats":{"channel":"c"}}"#);
    let presence = cluster.seen[1]
        .iter()
        .find(|(c, v)| *c == 2 && v["id"] == 3)
        .map(|(_, v)| v["presence"]["presence"].clone())
        .unwrap();
    assert_eq!(presence.as_object().unwrap().len(), 2, "{presence}");
    let stats = cluster.seen[0]
        .iter()
        .find(|(c, v)| *c == 1 && v["id"] == 4)
        .map(|(_, v)| v["presence_stats"].clone())
        .unwrap();
    assert_eq!(stats["num_clients"], 2);
    // A snapshot without node 1's member: it leaves.
    cluster.nodes[0].handle_store(
        Timestamp::from_millis(2),
        StoreEvent::RemoteMembers {
            channel: ChannelName::new("c"),
            members: Vec::new(),
        },
    );
    cluster.drain(0);
    assert_eq!(
        cluster.seen[0]
            .iter()
            .filter(|(c, v)| *c == 1 && v["push"]["leave"].is_object())
            .count(),
        1
    );
    assert_eq!(cluster.nodes[0].remote_members("c").count(), 0);
}
