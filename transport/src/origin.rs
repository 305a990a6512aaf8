//! Which browser origins may open a WebSocket (`--allowed-origins`).
//!
//! Browsers send `Origin` with every WebSocket handshake; a page on another
//! site could otherwise open connections with its visitors' cookies and
//! network position (cross-site WebSocket hijacking). The rules:
//! - no `Origin` header: not a browser (CLI clients, SDKs under node or
//!   Python): allowed;
//! - the origin is this server itself (its host and port are the request's
//!   `Host`): the pages hubbub serves are always allowed;
//! - no patterns configured: every origin is allowed (the seed tutorials'
//!   behaviour, so a client written for them keeps working);
//! - otherwise the origin must match a pattern: `https://chat.example.com`,
//!   `https://*.example.com` (any subdomain), `http://localhost:*` (any
//!   port). A pattern without a port matches the scheme's default port.

use std::fmt;

/// One `--allowed-origins` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// The host, lowercase; `*.example.com` is kept as `.example.com`
    /// with `subdomains` set.
    host: String,
    subdomains: bool,
    port: Port,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Any,
    Exact(u16),
}

/// The parsed origin of a request: scheme, lowercase host, port.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 hosts in brackets).
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &s[..end + 2];
        let after = &rest[end + 1..];
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(port))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((s, None)),
    }
}

impl Origin {
    /// `scheme://host[:port]`, nothing after it (a browser's `Origin`).
    fn parse(s: &str) -> Option<Self> {
        let (scheme, rest) = s.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        if host.is_empty() {
            return None;
        }
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port(&scheme)?,
        };
        Some(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl OriginPattern {
    /// Parses one pattern.
    ///
    /// # Errors
    /// What is wrong with it, for the start-up message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("{s:?} is not an origin pattern: {why} (like https://chat.example.com, https://*.example.com or http://localhost:*)")
        };
        let (scheme, rest) = s.trim().split_once("://").ok_or_else(|| bad("no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default =
            default_port(&scheme).ok_or_else(|| bad("the scheme is not http or https"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return Err(bad("only scheme://host[:port]"));
        }
        let (host, port) = split_host_port(rest).ok_or_else(|| bad("bad host"))?;
        let port = match port {
            Some("*") => Port::Any,
            Some(p) => Port::Exact(p.parse().map_err(|_| bad("bad port"))?),
            None => Port::Exact(default),
        };
        let host = host.to_ascii_lowercase();
        let (host, subdomains) = match host.strip_prefix("*.") {
            Some(base) if !base.is_empty() && !base.contains('*') => (format!(".{base}"), true),
            _ if host.contains('*') => return Err(bad("a wildcard only as *.domain")),
            _ if host.is_empty() => return Err(bad("no host")),
            _ => (host, false),
        };
        Ok(Self {
            scheme,
            host,
            subdomains,
            port,
        })
    }

    fn matches(&self, origin: &Origin) -> bool {
        let host = if self.subdomains {
            origin.host.ends_with(&self.host) && origin.host.len() > self.host.len()
        } else {
            origin.host == self.host
        };
        let port = match self.port {
            Port::Any => true,
            Port::Exact(p) => p == origin.port,
        };
        self.scheme == origin.scheme && host && port
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.subdomains {
            format!("*{}", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Port::Any => write!(f, "{}://{host}:*", self.scheme),
            Port::Exact(p) if Some(p) == default_port(&self.scheme) => {
                write!(f, "{}://{host}", self.scheme)
            }
            Port::Exact(p) => write!(f, "{}://{host}:{p}", self.scheme),
        }
    }
}

/// The configured patterns; empty allows every origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
}

impl OriginPolicy {
    #[must_use]
    pub fn new(patterns: Vec<OriginPattern>) -> Self {
        Self { patterns }
    }

    /// Parses comma-separated patterns (`--allowed-origins`).
    ///
    /// # Errors
    /// The first bad pattern.
    pub fn parse_list(list: &[String]) -> Result<Self, String> {
        let patterns = list
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(OriginPattern::parse)
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether origins are checked at all.
    #[must_use]
    pub fn is_restricted(&self) -> bool {
        !self.patterns.is_empty()
    }

    /// Whether a handshake with `origin` (its `Origin` header, if any) to
    /// a server reached as `host` (the `Host` header) may go on.
    #[must_use]
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true; // not a browser
        };
        if self.patterns.is_empty() {
            return true;
        }
        let Some(parsed) = Origin::parse(origin) else {
            return false; // "null" (a sandboxed page or a file) and junk
        };
        if let Some((host, port)) = host.and_then(split_host_port) {
            let port = port
                .and_then(|p| p.parse().ok())
                .or(default_port(&parsed.scheme));
            if parsed.host == host.to_ascii_lowercase() && Some(parsed.port) == port {
                return true; // this server's own pages
            }
        }
        self.patterns.iter().any(|p| p.matches(&parsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        OriginPolicy::parse_list(&list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("valid patterns")
    }

    #[test]
    fn no_patterns_allow_everyone_and_no_origin_is_always_allowed() {
        let open = OriginPolicy::default();
        assert!(open.allows(Some("https://evil.example"), Some("chat.example.com")));
        let closed = policy(&["https://chat.example.com"]);
        assert!(
            closed.allows(None, Some("chat.example.com")),
            "not a browser"
        );
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let p = policy(&[
            "https://chat.example.com",
            "https://*.example.org",
            "http://localhost:*",
        ]);
        let host = Some("hub.internal:8080");
        for ok in [
            "https://chat.example.com",
            "https://chat.example.com:443",
            "https://CHAT.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
            "http://localhost:3000",
            "http://localhost",
        ] {
            assert!(p.allows(Some(ok), host), "{ok}");
        }
        for refused in [
            "http://chat.example.com",
            "https://chat.example.com:8443",
            "https://evil.com",
            "https://example.org",
            "https://evilexample.org",
            "https://chat.example.com.evil.com",
            "http://localhost.evil.com:3000",
            "null",
            "https://chat.example.com/path",
            "",
        ] {
            assert!(!p.allows(Some(refused), host), "{refused}");
        }
    }

    #[test]
    fn the_servers_own_pages_are_always_allowed() {
        let p = policy(&["https://chat.example.com"]);
        assert!(p.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(p.allows(Some("https://hub.example.net"), Some("hub.example.net")));
        assert!(p.allows(Some("http://[::1]:8080"), Some("[::1]:8080")));
        assert!(!p.allows(Some("http://127.0.0.1:9999"), Some("127.0.0.1:8080")));
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("chat.example.com", "no scheme"),
            ("ftp://x", "not http or https"),
            ("https://x/y", "only scheme://host[:port]"),
            ("https://a*.example.com", "wildcard"),
            ("https://x:port", "bad port"),
        ] {
            let err = OriginPattern::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(
            OriginPattern::parse("https://*.Example.com:*")
                .expect("valid")
                .to_string(),
            "https://*.example.com:*"
        );
    }
}
