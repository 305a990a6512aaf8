//! Per-IP limits before the upgrade: WebSocket connections held, and
//! handshakes per second (a token bucket). Beyond either, the handshake is
//! answered 429 with `Retry-After`, and nothing else is affected.
//!
//! Loopback peers are exempt unless configured otherwise: a reverse proxy
//! on the same machine (every client then shares its address) and the
//! load generator must not be mistaken for one abusive client.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most addresses tracked at once; beyond it new addresses are refused
/// (503) until some leave, so the table itself is bounded.
pub const MAX_TRACKED_IPS: usize = 100_000;

/// The limits (0: off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLimitConfig {
    /// WebSocket connections one address may hold.
    pub connections_per_ip: usize,
    /// Handshakes per second one address may start (burst: twice that).
    pub handshakes_per_ip: u32,
    /// Whether loopback addresses are limited too.
    pub limit_loopback: bool,
}

impl Default for IpLimitConfig {
    fn default() -> Self {
        Self {
            connections_per_ip: 1_000,
            handshakes_per_ip: 100,
            limit_loopback: false,
        }
    }
}

/// Sockets one address may hold in their HTTP phase (before an upgrade),
/// when `connections_per_ip` is on: a client cannot pin descriptors with
/// connections that never finish a request.
pub const HTTP_SOCKETS_PER_IP: usize = 100;

#[derive(Debug)]
struct IpState {
    connections: usize,
    /// Sockets in their HTTP phase.
    sockets: usize,
    /// Handshake tokens left, and when they were last topped up.
    tokens: f64,
    refilled: Instant,
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections or handshakes from this address: try again
    /// after this long (429).
    TooMany {
        retry_after: Duration,
        what: &'static str,
    },
    /// The table of addresses is full (503).
    Busy,
}

/// The table, shared by every shard.
#[derive(Debug)]
pub struct IpLimits {
    config: IpLimitConfig,
    ips: Mutex<BTreeMap<IpAddr, IpState>>,
}

/// A socket in its HTTP phase counted against its address; uncounted on drop.
#[derive(Debug)]
pub struct SocketGuard {
    limits: Arc<IpLimits>,
    ip: Option<IpAddr>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut ips = self
                .limits
                .ips
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = ips.get_mut(&ip) {
                state.sockets = state.sockets.saturating_sub(1);
                if state.connections == 0
                    && state.sockets == 0
                    && self.limits.refilled(state, Instant::now()) >= self.limits.burst()
                {
                    ips.remove(&ip);
                }
            }
        }
    }
}

/// A connection counted against its address; uncounted on drop.
#[derive(Debug)]
pub struct IpGuard {
    limits: Arc<IpLimits>,
    ip: Option<IpAddr>,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            self.limits.release(ip);
        }
    }
}

impl IpLimits {
    #[must_use]
    pub fn new(config: IpLimitConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            ips: Mutex::new(BTreeMap::new()),
        })
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        ip.is_loopback() && !self.config.limit_loopback
    }

    /// Counts a socket just accepted from `ip` against its address's
    /// [`HTTP_SOCKETS_PER_IP`]; `None` when the address is at it (or the
    /// table is full).
    pub fn open_socket(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<SocketGuard> {
        if self.exempt(ip) || self.config.connections_per_ip == 0 {
            return Some(SocketGuard {
                limits: self.clone(),
                ip: None,
            });
        }
        let mut ips = self.ips.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state_of(&mut ips, ip, now)?;
        if state.sockets >= HTTP_SOCKETS_PER_IP {
            return None;
        }
        state.sockets += 1;
        Some(SocketGuard {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a handshake from `ip` at `now`, counting the connection it
    /// opens until the guard is dropped.
    ///
    /// # Errors
    /// The limit it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpGuard, Refusal> {
        let c = self.config;
        if self.exempt(ip) || (c.connections_per_ip == 0 && c.handshakes_per_ip == 0) {
            return Ok(IpGuard {
                limits: self.clone(),
                ip: None,
            });
        }
        let mut ips = self.ips.lock().unwrap_or_else(PoisonError::into_inner);
        let state = self.state_of(&mut ips, ip, now).ok_or(Refusal::Busy)?;
        if c.handshakes_per_ip > 0 {
            let rate = f64::from(c.handshakes_per_ip);
            state.tokens = self.refilled(state, now);
            state.refilled = now;
            if state.tokens < 1.0 {
                let wait = (1.0 - state.tokens) / rate;
                return Err(Refusal::TooMany {
                    retry_after: Duration::from_secs_f64(wait.max(1.0).ceil()),
                    what: "too many handshakes from this address",
                });
            }
        }
        if c.connections_per_ip > 0 && state.connections >= c.connections_per_ip {
            return Err(Refusal::TooMany {
                retry_after: Duration::from_secs(5),
                what: "too many connections from this address",
            });
        }
        if c.handshakes_per_ip > 0 {
            state.tokens -= 1.0;
        }
        state.connections += 1;
        Ok(IpGuard {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// `ip`'s entry, made if need be; `None` when the table is full even
    /// after forgetting the addresses with nothing open and a full bucket.
    fn state_of<'m>(
        &self,
        ips: &'m mut BTreeMap<IpAddr, IpState>,
        ip: IpAddr,
        now: Instant,
    ) -> Option<&'m mut IpState> {
        let burst = self.burst();
        if !ips.contains_key(&ip) && ips.len() >= MAX_TRACKED_IPS {
            ips.retain(|_, s| s.connections > 0 || s.sockets > 0 || self.refilled(s, now) < burst);
            if ips.len() >= MAX_TRACKED_IPS {
                return None;
            }
        }
        Some(ips.entry(ip).or_insert(IpState {
            connections: 0,
            sockets: 0,
            tokens: burst,
            refilled: now,
        }))
    }

    fn burst(&self) -> f64 {
        f64::from(self.config.handshakes_per_ip) * 2.0
    }

    /// The tokens `state` has at `now`.
    fn refilled(&self, state: &IpState, now: Instant) -> f64 {
        let rate = f64::from(self.config.handshakes_per_ip);
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        (state.tokens + elapsed * rate).min(self.burst())
    }

    fn release(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut ips = self.ips.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(state) = ips.get_mut(&ip) {
            state.connections = state.connections.saturating_sub(1);
            // An address with no connection and a full bucket is forgotten
            // (one that is still refilling is kept, or a client could
            // reset its bucket by closing its connections).
            if state.connections == 0
                && state.sockets == 0
                && self.refilled(state, now) >= self.burst()
            {
                ips.remove(&ip);
            }
        }
    }

    /// Addresses tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.ips
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let limits = IpLimits::new(IpLimitConfig {
            connections_per_ip: 2,
            handshakes_per_ip: 0,
            limit_loopback: false,
        });
        let now = Instant::now();
        let a = limits.admit(ip("10.0.0.1"), now).expect("first");
        let _b = limits.admit(ip("10.0.0.1"), now).expect("second");
        assert!(matches!(
            limits.admit(ip("10.0.0.1"), now),
            Err(Refusal::TooMany { .. })
        ));
        assert!(limits.admit(ip("10.0.0.2"), now).is_ok(), "another address");
        drop(a);
        assert!(
            limits.admit(ip("10.0.0.1"), now).is_ok(),
            "a place came free"
        );
    }

    #[test]
    fn handshakes_per_second_refill() {
        let limits = IpLimits::new(IpLimitConfig {
            connections_per_ip: 0,
            handshakes_per_ip: 5,
            limit_loopback: false,
        });
        let now = Instant::now();
        let mut guards = Vec::new();
        for _ in 0..10 {
            guards.push(limits.admit(ip("10.0.0.1"), now).expect("the burst"));
        }
        let Err(Refusal::TooMany { retry_after, .. }) = limits.admit(ip("10.0.0.1"), now) else {
            panic!("beyond the burst");
        };
        assert_eq!(retry_after, Duration::from_secs(1));
        let later = now + Duration::from_millis(400);
        assert!(limits.admit(ip("10.0.0.1"), later).is_ok(), "2 tokens back");
    }

    #[test]
    fn loopback_is_exempt_unless_asked() {
        let strict = IpLimitConfig {
            connections_per_ip: 1,
            handshakes_per_ip: 0,
            limit_loopback: false,
        };
        let limits = IpLimits::new(strict);
        let now = Instant::now();
        let _a = limits.admit(ip("127.0.0.1"), now).expect("admitted");
        assert!(limits.admit(ip("127.0.0.1"), now).is_ok());
        assert!(limits.admit(ip("::1"), now).is_ok());
        assert_eq!(limits.tracked(), 0);
        let limits = IpLimits::new(IpLimitConfig {
            limit_loopback: true,
            ..strict
        });
        let _a = limits.admit(ip("127.0.0.1"), now).expect("admitted");
        assert!(limits.admit(ip("127.0.0.1"), now).is_err());
    }
}

/// The process's open-files limit (the soft `RLIMIT_NOFILE`), read from
/// `/proc/self/limits`; `None` where that cannot be read or says unlimited.
#[must_use]
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&text)
}

fn parse_open_files_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How the open-files limit is shared out: descriptors kept back for the
/// listener, the store, logs and health checks; sockets still in their HTTP
/// phase; and WebSocket connections (`max_connections`), so that a full
/// server answers 503 instead of failing to accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBudget {
    /// WebSocket connections (handshakes beyond get 503).
    pub max_connections: usize,
    /// Open client sockets of any kind; a connection accepted beyond it is
    /// answered 503 at once and closed.
    pub max_sockets: usize,
}

impl SocketBudget {
    /// Descriptors never given to clients: the listener, the store's files,
    /// the log, a `/health` probe, and room to answer 503.
    #[must_use]
    pub const fn reserve(open_files: usize) -> usize {
        let reserve = 64 + open_files / 100;
        // A tiny limit (tests, misconfigured hosts) still leaves half for clients.
        if reserve > open_files / 2 {
            open_files / 2
        } else {
            reserve
        }
    }

    /// Sockets allowed in their HTTP phase on top of `max_connections`.
    #[must_use]
    pub const fn pre_upgrade_headroom(open_files: usize) -> usize {
        let h = open_files / 100;
        if h < 32 {
            32
        } else {
            h
        }
    }

    /// The budget for `open_files` descriptors (`None`: unknown), with
    /// `--max-connections` if given (it is capped by what the descriptors allow).
    #[must_use]
    pub fn derive(open_files: Option<usize>, max_connections: Option<usize>) -> Self {
        match open_files {
            Some(fds) => {
                let usable = fds.saturating_sub(Self::reserve(fds)).max(1);
                let headroom = Self::pre_upgrade_headroom(fds).min(usable / 2);
                let fitting = usable - headroom;
                // An explicit 0 stays 0, for the configuration check to refuse.
                let max_connections = max_connections.map_or(fitting, |m| m.min(fitting));
                Self {
                    max_connections,
                    max_sockets: usable,
                }
            }
            None => {
                let max_connections = max_connections.unwrap_or(100_000);
                Self {
                    max_connections,
                    max_sockets: max_connections.saturating_add(1_024),
                }
            }
        }
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read_from_proc_self_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             unlimited            unlimited            processes \n\
                    Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(text), Some(20_000));
        assert_eq!(
            parse_open_files_limit("Max open files unlimited unlimited files"),
            None
        );
        assert_eq!(parse_open_files_limit(""), None);
        // On Linux the real file has it.
        if cfg!(target_os = "linux") {
            assert!(open_files_limit().is_some());
        }
    }

    #[test]
    fn the_budget_keeps_descriptors_back_and_answers_503_before_the_limit() {
        let b = SocketBudget::derive(Some(20_000), None);
        assert_eq!(b.max_sockets, 20_000 - 264);
        assert_eq!(b.max_connections, 20_000 - 264 - 200);
        // An explicit --max-connections above what fits is capped.
        assert_eq!(SocketBudget::derive(Some(20_000), Some(100_000)), b);
        let small = SocketBudget::derive(Some(20_000), Some(500));
        assert_eq!(small.max_connections, 500);
        assert_eq!(small.max_sockets, b.max_sockets);
        // A tiny limit still leaves something.
        let tiny = SocketBudget::derive(Some(40), None);
        assert_eq!(tiny.max_sockets, 20);
        assert_eq!(tiny.max_connections, 10);
        // Unknown: the old default.
        let unknown = SocketBudget::derive(None, None);
        assert_eq!(unknown.max_connections, 100_000);
    }
}
