//! Every limit the hub enforces lives here.

use std::time::Duration;

/// Hub limits. The defaults are the seed tutorials' constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// A ping is sent this long after the connection opened, and every interval after.
    pub ping_interval: Duration,
    /// A connection with no pong for this long (since open or its last pong) is closed.
    pub pong_timeout: Duration,
    /// Largest message a client may send, in bytes (after reassembly of fragments).
    pub max_message_bytes: usize,
    /// Most messages waiting in one connection's outbound queue (enforced by
    /// the driver, which reports a full queue with `Input::QueueFull`).
    pub send_queue: usize,
    /// Most open connections; an `Open` beyond it is closed at once with 1013.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            max_message_bytes: 512,
            send_queue: 256,
            max_connections: 100_000,
        }
    }
}
