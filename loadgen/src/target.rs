//! The server under test: loopback-only URL parsing, opening WebSocket
//! connections (optionally from a chosen 127.0.0.N source address), and the
//! clock shared by the generator's processes.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// A client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Where the server listens (always a loopback address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Socket address to connect to.
    pub addr: SocketAddr,
    /// `host:port` as written in request URLs (`[::1]:p` for IPv6).
    pub authority: String,
}

/// Parses `ws://HOST[:PORT][/]` and refuses anything that is not loopback
/// (127.0.0.0/8, `localhost`, `::1`).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        format!("--url {url:?}: only plain ws://HOST:PORT URLs are supported (no wss, no http)")
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') || rest.contains('@') {
        return Err(format!(
            "--url {url:?}: give only the base ws://HOST:PORT; the path comes from --protocol"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("--url {url:?}: unterminated [IPv6] host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("--url {url:?}: junk after ]"))?,
            ),
        };
        (h, port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port: u16 = match port {
        None => 80,
        Some(p) => p
            .parse()
            .map_err(|_| format!("--url {url:?}: bad port {p:?}"))?,
    };
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            format!(
                "--url {url:?}: host {host:?} is not an IP address or localhost \
                 (the load generator only drives servers on this machine's loopback)"
            )
        })?
    };
    if !ip.is_loopback() {
        return Err(format!(
            "refusing to load non-loopback host {ip} (from --url {url:?}): the load generator \
             only drives servers on 127.0.0.0/8, localhost or ::1"
        ));
    }
    let authority = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        authority,
    })
}

/// The source address of client `id` when spreading clients over
/// 127.0.0.1..=127.0.0.`n` (`None` when `n <= 1`: let the kernel choose).
#[must_use]
pub fn source_ip(id: u32, n: u32) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let last = u8::try_from(1 + id % n).unwrap_or(1);
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// WebSocket settings of the generator's clients: small buffers so that
/// thousands of idle connections stay cheap.
#[must_use]
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
}

/// Opens a TCP connection (from `source` if given) and completes the
/// WebSocket handshake for `path` (e.g. `/ws/r0?username=u1`).
pub async fn open(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
    read_buffer: usize,
) -> Result<Ws, String> {
    let stream = match source {
        None => TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("tcp connect: {e}"))?,
        Some(ip) => {
            let sock = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4(),
                IpAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|e| format!("socket: {e}"))?;
            sock.set_reuseaddr(true)
                .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
            sock.connect(target.addr)
                .await
                .map_err(|e| format!("tcp connect from {ip}: {e}"))?
        }
    };
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let url = format!("ws://{}{}", target.authority, path);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config(read_buffer)))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// A monotonic nanosecond clock shared by all processes of one run: time 0
/// is the parent's start (`epoch`, wall-clock ns since 1970, passed to
/// children), and each process advances it with its own monotonic
/// `Instant`, so timestamps written by one process can be compared with
/// receive times in another.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    offset_ns: u64,
    epoch_ns: u64,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Clock {
    /// A clock whose zero is `epoch_ns` (wall-clock), or now if `None`.
    #[must_use]
    pub fn new(epoch_ns: Option<u64>) -> Self {
        let base = Instant::now();
        let now = unix_ns();
        let epoch_ns = epoch_ns.unwrap_or(now);
        Self {
            base,
            offset_ns: now.saturating_sub(epoch_ns),
            epoch_ns,
        }
    }

    /// Wall-clock ns of time zero (what children are given).
    #[must_use]
    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }

    /// Nanoseconds since time zero.
    #[must_use]
    pub fn now_ns(&self) -> u64 {
        self.offset_ns + u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The local `Instant` of clock time `ns`.
    #[must_use]
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.base + Duration::from_nanos(ns.saturating_sub(self.offset_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_accepted() {
        let t = parse_url("ws://127.0.0.1:8080").expect("ok");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_url("ws://localhost:18081/").expect("ok");
        assert_eq!(t.authority, "127.0.0.1:18081");
        let t = parse_url("ws://127.3.2.1:9").expect("ok");
        assert_eq!(t.authority, "127.3.2.1:9");
        let t = parse_url("ws://[::1]:8090").expect("ok");
        assert_eq!(t.authority, "[::1]:8090");
        assert_eq!(t.addr.ip(), IpAddr::V6(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(parse_url("ws://127.0.0.1").expect("ok").addr.port(), 80);
    }

    #[test]
    fn non_loopback_refused() {
        for bad in [
            "ws://10.0.0.1:80",
            "ws://0.0.0.0:80",
            "ws://example.com:80",
            "ws://[2001:db8::1]:80",
            "ws://192.168.1.1",
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(
                err.contains("loopback") || err.contains("refusing"),
                "{bad}: {err}"
            );
        }
        assert!(parse_url("wss://127.0.0.1:1").is_err());
        assert!(parse_url("http://127.0.0.1:1").is_err());
        assert!(parse_url("ws://127.0.0.1:1/ws").is_err());
        assert!(parse_url("ws://127.0.0.1:x").is_err());
    }

    #[test]
    fn source_addresses_round_robin() {
        assert_eq!(source_ip(5, 1), None);
        assert_eq!(
            source_ip(0, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)))
        );
        assert_eq!(
            source_ip(4, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
    }

    #[test]
    fn clock_shared_epoch() {
        let a = Clock::new(None);
        let b = Clock::new(Some(a.epoch_ns()));
        let (ta, tb) = (a.now_ns(), b.now_ns());
        assert!(ta.abs_diff(tb) < 50_000_000, "{ta} vs {tb}");
        let at = b.instant_at(b.now_ns() + 1_000_000);
        assert!(at > Instant::now());
    }
}
