//! Scenario presets: mixes of traffic and faults that matter, each a
//! function of one seed like every other run.
//!
//! | preset | world | what dominates |
//! |---|---|---|
//! | `chat-heavy` | one hub ([`crate::scenario`]) | chat lines of up to 32–256 bytes in rooms of at most ~16: pings every 5–30 s of virtual time, clients talk every 50–400 ms, almost no faults |
//! | `churn-heavy` | one hub | joins and leaves: clean leaves, vanishing hosts, reconnect storms every few pings |
//! | `slow-consumer-heavy` | one hub | slow readers, stalls, silent clients, queues of 1–8 frames: eviction and heartbeat closes |
//! | `mixed` | one hub | the seed's own swarm of faults ([`SimParams::derive`]) |
//! | `sharded` | 2–4 shards ([`crate::cluster`]) | Centrifugo and seed subscribers and publishers across shards, with the store model |
//! | `restart-heavy` | 1–4 shards | a slow, failing store and a server that crashes and restarts every few hundred ms |
//! | `partition-heavy` | 2–4 nodes over a broker ([`crate::broker`]) | partitions of a node from the broker and broker restarts, clients moving between nodes |
//!
//! `tests/presets.rs` runs every preset and fails if any invariant of the
//! world ([`crate::invariants::Invariant`]) or of the cluster
//! ([`crate::cluster::Rule`]) was never put to the test.

use std::fmt;
use std::time::Duration;

use crate::cluster::ClusterParams;
use crate::rng::{mix64, Ppm, SimRng};
use crate::scenario::{Behaviours, Overrides, SimParams};

/// A named mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Preset {
    ChatHeavy,
    ChurnHeavy,
    SlowConsumerHeavy,
    Mixed,
    Sharded,
    RestartHeavy,
    PartitionHeavy,
}

impl Preset {
    pub const ALL: [Self; 7] = [
        Self::ChatHeavy,
        Self::ChurnHeavy,
        Self::SlowConsumerHeavy,
        Self::Mixed,
        Self::Sharded,
        Self::RestartHeavy,
        Self::PartitionHeavy,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::ChatHeavy => "chat-heavy",
            Self::ChurnHeavy => "churn-heavy",
            Self::SlowConsumerHeavy => "slow-consumer-heavy",
            Self::Mixed => "mixed",
            Self::Sharded => "sharded",
            Self::RestartHeavy => "restart-heavy",
            Self::PartitionHeavy => "partition-heavy",
        }
    }

    /// # Errors
    /// A message naming the presets there are.
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
                format!("unknown preset {s:?}: one of {}, or all", names.join(", "))
            })
    }

    /// Runs on several shards with the store model.
    #[must_use]
    pub const fn is_cluster(self) -> bool {
        matches!(self, Self::Sharded | Self::RestartHeavy)
    }

    /// Runs several nodes over the broker model.
    #[must_use]
    pub const fn is_broker(self) -> bool {
        matches!(self, Self::PartitionHeavy)
    }

    /// The preset `all` gives `seed`: mostly chat and subscription traffic
    /// (chat-heavy 3, sharded 3, each other 1, in 11), and a function of the
    /// seed alone, so a soak resumes from a seed.
    #[must_use]
    pub fn for_seed(seed: u64) -> Self {
        const WEIGHTED: [Preset; 11] = [
            Preset::ChatHeavy,
            Preset::ChatHeavy,
            Preset::ChatHeavy,
            Preset::Sharded,
            Preset::Sharded,
            Preset::Sharded,
            Preset::ChurnHeavy,
            Preset::SlowConsumerHeavy,
            Preset::Mixed,
            Preset::RestartHeavy,
            Preset::PartitionHeavy,
        ];
        WEIGHTED[usize::try_from(mix64(seed ^ 0x7072_6573_6574) % 11).unwrap_or(0)]
    }

    /// The single-hub run of a world preset (`mixed` for the cluster ones).
    #[must_use]
    pub fn sim_params(self, seed: u64, overrides: Overrides) -> SimParams {
        let mut p = SimParams::derive(seed, overrides);
        let mut r = SimRng::stream(seed, self.name());
        if self == Self::ChatHeavy && overrides.rooms.is_none() {
            // Rooms of at most ~16: a chat line's cost is its fan-out.
            p.rooms = p.rooms.max(p.clients.div_ceil(16));
        }
        let members_per_room =
            u64::from(p.clients.saturating_sub(p.relay_clients)) / u64::from(p.rooms);
        let crowd = (members_per_room / 8).max(1);
        match self {
            Self::ChatHeavy => {
                p.behaviours = Behaviours {
                    chat: 1_000,
                    leave: r.between_u32(0, 3),
                    oversize: r.between_u32(0, 1),
                    ..Behaviours::none()
                };
                set_ping(&mut p, r.between(5_000, 30_000), &mut r);
                p.think_ms = r.between(50, 400) * crowd;
                p.config.send_queue = *r.pick(&[64, 128, 256, 1_024]);
                // Chat lines as people type them (the encoding's cost is
                // their length; `mixed` keeps the long ones).
                p.config.max_message_bytes = *r.pick(&[32, 64, 128, 256]);
                p.config.max_connections = 2 * p.clients as usize + 16;
                p.storm_every_ms = 0;
                p.reconnect = Ppm::ALWAYS;
            }
            Self::ChurnHeavy => {
                p.behaviours.chat = r.between_u32(100, 300);
                p.behaviours.leave = r.between_u32(100, 300);
                p.behaviours.vanish = r.between_u32(10, 80);
                p.reconnect = Ppm::ALWAYS;
                let ping = u64::try_from(p.config.ping_interval.as_millis()).unwrap_or(1_000);
                p.storm_every_ms = ping * r.between(1, 6);
                p.storm_share = Ppm(r.between_u32(300_000, 700_000));
                p.think_ms = (ping / 4).max(1) * crowd;
            }
            Self::SlowConsumerHeavy => {
                p.behaviours.chat = r.between_u32(200, 500);
                p.behaviours.slow_reader = r.between_u32(60, 200);
                p.behaviours.stall = r.between_u32(30, 120);
                p.behaviours.silence = r.between_u32(5, 30);
                p.config.send_queue = *r.pick(&[1, 2, 3, 8]);
                p.resume = Ppm(r.between_u32(500_000, 1_000_000));
                p.heal = Ppm(r.between_u32(300_000, 1_000_000));
            }
            Self::Mixed | Self::Sharded | Self::RestartHeavy | Self::PartitionHeavy => {}
        }
        p
    }

    /// The cluster run of `sharded` or `restart-heavy` (`sharded` for the
    /// others), with `actions` client actions when given.
    #[must_use]
    pub fn cluster_params(self, seed: u64, actions: Option<u32>) -> ClusterParams {
        let mut r = SimRng::stream(seed, self.name());
        let mut p = match self {
            Self::RestartHeavy => {
                ClusterParams::restart_heavy(seed, u16::try_from(r.between(1, 4)).unwrap_or(2))
            }
            _ => ClusterParams::derive(seed, u16::try_from(r.between(2, 4)).unwrap_or(2)),
        };
        if let Some(actions) = actions {
            p.actions = actions;
        }
        p
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pings every `ping` ms, with a pong deadline a live client always meets.
fn set_ping(p: &mut SimParams, ping: u64, r: &mut SimRng) {
    let margin = r.between(1, ping);
    let pong = ping + 2 * p.latency_max_ms + margin;
    p.config.ping_interval = Duration::from_millis(ping);
    p.config.pong_timeout = Duration::from_millis(pong);
    p.ramp_ms = p.ramp_ms.min(4 * ping);
}
