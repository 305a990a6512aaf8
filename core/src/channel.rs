//! Channels and namespaces: names, per-namespace options, and how a channel
//! name finds its options (Centrifugo's rules, brief section 6).
//!
//! A seed room `NAME` and the channel `NAME` are the same room: seed clients
//! and Centrifugo clients chat together. Everything here is plain data; the
//! only code that runs is name parsing and an optional pattern supplied by
//! the driver (so no regex engine enters the core).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Longest channel name, in bytes (Centrifugo's `channel.max_length`).
pub const MAX_CHANNEL_BYTES: usize = 255;

/// A channel name. Seed room names are channel names too.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    #[must_use]
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A predicate channel names of a namespace must satisfy (`channel_regex`).
/// The driver compiles the pattern; the core only calls it. Compared by its
/// source text.
#[derive(Clone)]
pub struct ChannelPattern {
    source: Arc<str>,
    matches: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl ChannelPattern {
    pub fn new(source: &str, matches: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self {
            source: source.into(),
            matches: Arc::new(matches),
        }
    }

    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    #[must_use]
    pub fn is_match(&self, name: &str) -> bool {
        (self.matches)(name)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelPattern({:?})", self.source)
    }
}

impl PartialEq for ChannelPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for ChannelPattern {}

/// A namespace's options, with Centrifugo's names. The defaults make a chat
/// work with no configuration at all: anyone may subscribe and publish,
/// presence and join/leave are on, and channels are positioned (offsets
/// and epochs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// Keep presence: the `presence` and `presence_stats` commands answer (else 108).
    pub presence: bool,
    /// Emit join/leave pushes to subscribers that asked for them.
    pub join_leave: bool,
    /// Deliver join/leave to every subscriber, asked or not.
    pub force_push_join_leave: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_anonymous: bool,
    /// History is on when both size and ttl are above zero; then every
    /// publication gets the next offset of the channel's stream.
    pub history_size: u32,
    pub history_ttl: Duration,
    pub force_recovery: bool,
    pub allow_recovery: bool,
    pub force_positioning: bool,
    pub allow_positioning: bool,
    /// Channel names must match this, else 107.
    pub channel_regex: Option<ChannelPattern>,
    /// `name#alice,bob` admits the users listed after the last `#`
    /// (authenticated ones, by their token's `sub`), and only them.
    pub allow_user_limited_channels: bool,
    /// What a client publication's `data` must be (else 107).
    pub publication_data_format: DataFormat,
}

/// `publication_data_format`: what client publications may carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataFormat {
    /// Any JSON value (Centrifugo's empty setting).
    #[default]
    Any,
    /// `json`: any JSON value (the JSON protocol only carries JSON).
    Json,
    /// `json_object`: a JSON object.
    JsonObject,
}

impl DataFormat {
    /// Whether raw JSON `data` has this format.
    #[must_use]
    pub fn accepts(self, data: &[u8]) -> bool {
        match self {
            Self::Any | Self::Json => true,
            Self::JsonObject => data.first() == Some(&b'{'),
        }
    }
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            presence: true,
            join_leave: true,
            force_push_join_leave: false,
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_client: true,
            allow_publish_for_anonymous: true,
            allow_presence_for_subscriber: true,
            allow_presence_for_client: false,
            allow_presence_for_anonymous: true,
            allow_history_for_subscriber: true,
            allow_history_for_client: false,
            allow_history_for_anonymous: true,
            history_size: 1000,
            history_ttl: Duration::from_secs(7 * 24 * 3600),
            force_recovery: false,
            allow_recovery: true,
            force_positioning: false,
            allow_positioning: true,
            channel_regex: None,
            allow_user_limited_channels: false,
            publication_data_format: DataFormat::Any,
        }
    }
}

impl ChannelOptions {
    /// Whether the channel keeps a stream: offsets, an epoch, history.
    #[must_use]
    pub fn history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// What the channel's stream retains.
    #[must_use]
    pub fn stream_limits(&self) -> crate::store::StreamLimits {
        crate::store::StreamLimits {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }
}

/// The default namespace's options and every named namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    pub default: Arc<ChannelOptions>,
    pub named: BTreeMap<String, Arc<ChannelOptions>>,
}

/// Why a channel name has no options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// `ns:name` with no namespace `ns` configured (102).
    Namespace,
}

/// What a channel name says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// A leading `$`: subscribing needs a subscription token.
    pub private: bool,
    /// The part before the first `:` (after `$`), if any.
    pub namespace: Option<&'a str>,
}

/// Splits a channel name by Centrifugo's rules: a leading `$` marks a
/// private channel; the namespace is what precedes the first `:`.
#[must_use]
pub fn parse(name: &str) -> Parsed<'_> {
    let (private, rest) = match name.strip_prefix('$') {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    Parsed {
        private,
        namespace: rest.split_once(':').map(|(ns, _)| ns),
    }
}

impl Namespaces {
    /// The options for `name`.
    ///
    /// # Errors
    /// [`Unknown::Namespace`] when its namespace is not configured.
    pub fn resolve(&self, name: &str) -> Result<&Arc<ChannelOptions>, Unknown> {
        match parse(name).namespace {
            None => Ok(&self.default),
            Some(ns) => self.named.get(ns).ok_or(Unknown::Namespace),
        }
    }

    /// The options for a seed room: its namespace's when configured, else the
    /// default namespace's (a seed client may join any room it could before).
    #[must_use]
    pub fn resolve_room(&self, name: &str) -> &Arc<ChannelOptions> {
        self.resolve(name).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_by_centrifugo_rules() {
        assert_eq!(
            parse("chat:room"),
            Parsed {
                private: false,
                namespace: Some("chat")
            }
        );
        assert_eq!(
            parse("$chat:a:b"),
            Parsed {
                private: true,
                namespace: Some("chat")
            }
        );
        assert_eq!(
            parse("lobby"),
            Parsed {
                private: false,
                namespace: None
            }
        );
    }

    #[test]
    fn resolution() {
        let mut ns = Namespaces::default();
        let quiet = Arc::new(ChannelOptions {
            presence: false,
            ..ChannelOptions::default()
        });
        ns.named.insert("quiet".to_owned(), quiet.clone());
        assert_eq!(ns.resolve("lobby"), Ok(&ns.default));
        assert_eq!(ns.resolve("quiet:x"), Ok(&quiet));
        assert_eq!(ns.resolve("nope:x"), Err(Unknown::Namespace));
        assert_eq!(ns.resolve_room("nope:x"), &ns.default);
        assert!(ChannelOptions::default().history());
        let pattern = ChannelPattern::new("^a", |s| s.starts_with('a'));
        assert!(pattern.is_match("abc") && !pattern.is_match("b"));
    }
}
