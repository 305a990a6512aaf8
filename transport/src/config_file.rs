//! `--config FILE`: the server's settings in TOML.
//!
//! Top-level keys are the flags' names with `_` for `-` (`ping_interval =
//! "25s"`, `max_connections = 50000`); `[channel]` holds the default
//! namespace's options and each `[[namespace]]` a `name` and the same
//! options, with Centrifugo's names. An option a namespace leaves out takes
//! hubbub's default (the same as the default namespace's out of the box).
//! Flags and `HUBBUB_*` variables override the file. Unknown keys and bad
//! values stop the server at start, naming the key.
//!
//! ```toml
//! ping_interval = "25s"
//!
//! [channel]
//! history_size = 100
//!
//! [[namespace]]
//! name = "typing"
//! history_size = 0
//! join_leave = false
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use hubbub_core::{ChannelOptions, ChannelPattern, DataFormat, Namespaces};
use serde::Deserialize;

use crate::cli::parse_duration;

/// A key that takes one string or a list of them.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    #[must_use]
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one],
            Self::Many(many) => many,
        }
    }
}

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub ping_interval: Option<String>,
    pub pong_timeout: Option<String>,
    pub write_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub write_coalesce: Option<String>,
    pub max_message_bytes: Option<usize>,
    pub send_queue: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_command_bytes: Option<usize>,
    pub channel_limit: Option<usize>,
    pub idle_streams: Option<usize>,
    pub store: Option<String>,
    pub data_dir: Option<std::path::PathBuf>,
    /// One URL, or a list (channels spread over the instances).
    pub redis_url: Option<OneOrMany>,
    pub presence_ttl: Option<String>,
    pub history_sync: Option<String>,
    pub store_queue: Option<usize>,
    pub allowed_origins: Option<Vec<String>>,
    pub max_connections_per_ip: Option<usize>,
    pub handshakes_per_ip: Option<u32>,
    pub limit_loopback: Option<bool>,
    pub command_rate: Option<u32>,
    pub user_publish_rate: Option<u32>,
    pub user_connection_limit: Option<usize>,
    pub presence_rate: Option<u32>,
    #[serde(alias = "workers")]
    pub shards: Option<usize>,
    pub token_hmac_secret: Option<String>,
    pub token_rsa_public_key: Option<std::path::PathBuf>,
    pub token_ecdsa_public_key: Option<std::path::PathBuf>,
    pub token_audience: Option<String>,
    pub token_issuer: Option<String>,
    pub allow_anonymous: Option<bool>,
    pub channel: Option<NamespaceFile>,
    #[serde(default)]
    pub namespace: Vec<NamespaceFile>,
}

/// One namespace's options as written (`name` only in `[[namespace]]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFile {
    pub name: Option<String>,
    pub presence: Option<bool>,
    pub join_leave: Option<bool>,
    pub force_push_join_leave: Option<bool>,
    pub allow_subscribe_for_client: Option<bool>,
    pub allow_subscribe_for_anonymous: Option<bool>,
    pub allow_publish_for_subscriber: Option<bool>,
    pub allow_publish_for_client: Option<bool>,
    pub allow_publish_for_anonymous: Option<bool>,
    pub allow_presence_for_subscriber: Option<bool>,
    pub allow_presence_for_client: Option<bool>,
    pub allow_presence_for_anonymous: Option<bool>,
    pub allow_history_for_subscriber: Option<bool>,
    pub allow_history_for_client: Option<bool>,
    pub allow_history_for_anonymous: Option<bool>,
    pub history_size: Option<u32>,
    pub history_ttl: Option<String>,
    pub force_recovery: Option<bool>,
    pub allow_recovery: Option<bool>,
    pub force_positioning: Option<bool>,
    pub allow_positioning: Option<bool>,
    pub channel_regex: Option<String>,
    pub allow_user_limited_channels: Option<bool>,
    pub publication_data_format: Option<String>,
}

/// Reads and parses `path`.
///
/// # Errors
/// A message naming the file and what is wrong (TOML's own messages name
/// the key and its line).
pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

/// Parses the text of a config file.
///
/// # Errors
/// What is wrong, naming the key.
pub fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// A duration value of the file, or an error naming its key.
///
/// # Errors
/// The key and why its value is not a duration.
pub fn duration(key: &str, value: &str) -> Result<std::time::Duration, String> {
    parse_duration(value).map_err(|e| format!("{key}: {e}"))
}

impl NamespaceFile {
    /// These options over hubbub's defaults.
    fn options(&self, what: &str) -> Result<ChannelOptions, String> {
        let d = ChannelOptions::default();
        let history_ttl = match &self.history_ttl {
            Some(v) => duration(&format!("{what}.history_ttl"), v)?,
            None => d.history_ttl,
        };
        let channel_regex = match &self.channel_regex {
            Some(source) => {
                let re = regex::Regex::new(source)
                    .map_err(|e| format!("{what}.channel_regex: invalid pattern: {e}"))?;
                Some(ChannelPattern::new(source, move |name| re.is_match(name)))
            }
            None => None,
        };
        let publication_data_format = match self.publication_data_format.as_deref() {
            None | Some("") => DataFormat::Any,
            Some("json") => DataFormat::Json,
            Some("json_object") => DataFormat::JsonObject,
            Some(other) => {
                return Err(format!(
                    "{what}.publication_data_format: {other:?} is not \"\", \"json\" or \"json_object\""
                ))
            }
        };
        Ok(ChannelOptions {
            presence: self.presence.unwrap_or(d.presence),
            join_leave: self.join_leave.unwrap_or(d.join_leave),
            force_push_join_leave: self
                .force_push_join_leave
                .unwrap_or(d.force_push_join_leave),
            allow_subscribe_for_client: self
                .allow_subscribe_for_client
                .unwrap_or(d.allow_subscribe_for_client),
            allow_subscribe_for_anonymous: self
                .allow_subscribe_for_anonymous
                .unwrap_or(d.allow_subscribe_for_anonymous),
            allow_publish_for_subscriber: self
                .allow_publish_for_subscriber
                .unwrap_or(d.allow_publish_for_subscriber),
            allow_publish_for_client: self
                .allow_publish_for_client
                .unwrap_or(d.allow_publish_for_client),
            allow_publish_for_anonymous: self
                .allow_publish_for_anonymous
                .unwrap_or(d.allow_publish_for_anonymous),
            allow_presence_for_subscriber: self
                .allow_presence_for_subscriber
                .unwrap_or(d.allow_presence_for_subscriber),
            allow_presence_for_client: self
                .allow_presence_for_client
                .unwrap_or(d.allow_presence_for_client),
            allow_presence_for_anonymous: self
                .allow_presence_for_anonymous
                .unwrap_or(d.allow_presence_for_anonymous),
            allow_history_for_subscriber: self
                .allow_history_for_subscriber
                .unwrap_or(d.allow_history_for_subscriber),
            allow_history_for_client: self
                .allow_history_for_client
                .unwrap_or(d.allow_history_for_client),
            allow_history_for_anonymous: self
                .allow_history_for_anonymous
                .unwrap_or(d.allow_history_for_anonymous),
            history_size: self.history_size.unwrap_or(d.history_size),
            history_ttl,
            force_recovery: self.force_recovery.unwrap_or(d.force_recovery),
            allow_recovery: self.allow_recovery.unwrap_or(d.allow_recovery),
            force_positioning: self.force_positioning.unwrap_or(d.force_positioning),
            allow_positioning: self.allow_positioning.unwrap_or(d.allow_positioning),
            channel_regex,
            allow_user_limited_channels: self
                .allow_user_limited_channels
                .unwrap_or(d.allow_user_limited_channels),
            publication_data_format,
        })
    }
}

impl FileConfig {
    /// The namespaces the file declares.
    ///
    /// # Errors
    /// A bad option value, a namespace without a usable name, or a name
    /// declared twice.
    pub fn namespaces(&self) -> Result<Namespaces, String> {
        let default = match &self.channel {
            Some(ns) if ns.name.is_some() => {
                return Err("[channel]: `name` belongs in [[namespace]] entries".to_owned())
            }
            Some(ns) => ns.options("channel")?,
            None => ChannelOptions::default(),
        };
        let mut named = BTreeMap::new();
        for ns in &self.namespace {
            let Some(name) = ns.name.as_deref() else {
                return Err("[[namespace]]: every namespace needs a `name`".to_owned());
            };
            if name.is_empty() || name.contains([':', '$', '#']) {
                return Err(format!(
                    "[[namespace]] name {name:?}: must be non-empty, without ':', '$' or '#'"
                ));
            }
            let options = ns.options(&format!("namespace {name:?}"))?;
            if named.insert(name.to_owned(), Arc::new(options)).is_some() {
                return Err(format!("[[namespace]] {name:?} is declared twice"));
            }
        }
        Ok(Namespaces {
            default: Arc::new(default),
            named,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_take_defaults_for_what_they_leave_out() {
        let file = parse(
            r#"
            ping_interval = "25s"
            [channel]
            history_size = 10
            [[namespace]]
            name = "typing"
            history_size = 0
            join_leave = false
            channel_regex = "^typing:[a-z]+$"
            "#,
        )
        .expect("valid");
        assert_eq!(file.ping_interval.as_deref(), Some("25s"));
        let ns = file.namespaces().expect("valid");
        assert_eq!(ns.default.history_size, 10);
        let typing = &ns.named["typing"];
        assert!(!typing.history() && !typing.join_leave && typing.presence);
        let re = typing.channel_regex.as_ref().expect("pattern");
        assert!(re.is_match("typing:abc") && !re.is_match("typing:ABC"));
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, what) in [
            ("pingg_interval = \"1s\"", "pingg_interval"),
            ("[channel]\npresense = true", "presense"),
            ("[channel]\npresence = 1", "presence"),
            ("max_connections = -1", "max_connections"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(what), "{text}: {err}");
        }
        for (text, what) in [
            ("[[namespace]]\npresence = true", "needs a `name`"),
            ("[[namespace]]\nname = \"a:b\"", "without ':'"),
            (
                "[[namespace]]\nname = \"a\"\n[[namespace]]\nname = \"a\"",
                "twice",
            ),
            ("[channel]\nhistory_ttl = \"7\"", "channel.history_ttl"),
            ("[channel]\nchannel_regex = \"(\"", "channel.channel_regex"),
            (
                "[channel]\npublication_data_format = \"xml\"",
                "channel.publication_data_format",
            ),
        ] {
            let err = parse(text).expect("parses").namespaces().expect_err(text);
            assert!(err.contains(what), "{text}: {err}");
        }
    }
}
