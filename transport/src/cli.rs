//! The command line: flags, their `HUBBUB_*` environment equivalents, and
//! the duration syntax (`250ms`, `2s`, `1m`).
//!
//! Parsing only checks each value on its own; [`Cli::server_config`] builds
//! the [`ServerConfig`] whose `validate` checks them together.

use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use hubbub_core::{Config, Namespaces};

use crate::config::{ServerConfig, StoreConfig};

/// hubbub: a WebSocket chat server.
///
/// Endpoints: `GET /ws` (anonymous relay: every message goes to every relay
/// connection), `GET /ws/{room}?username=NAME` and `GET /ws?username=NAME`
/// (JSON chat rooms; the latter joins room `default`), `GET
/// /connection/websocket` (the Centrifugo client protocol, JSON, for the
/// official SDKs; seed rooms and channels of the same name are one room),
/// `GET /health`, `GET /metrics` (Prometheus).
///
/// Durations are a whole number with a unit: `250ms`, `2s`, `1m`, `1h`.
/// Logging is configured with `RUST_LOG` (default `info`).
#[derive(Clone, Debug, Parser)]
#[command(name = "hubbub", version)]
pub struct Cli {
    /// Address (host:port) to listen on.
    #[arg(long, env = "HUBBUB_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,

    /// Send each connection a WebSocket ping this often.
    #[arg(long, env = "HUBBUB_PING_INTERVAL", default_value = "54s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// Close a connection (code 1008) that has not answered a ping for this
    /// long. Must be longer than --ping-interval.
    #[arg(long, env = "HUBBUB_PONG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// Drop a connection whose socket accepts no data for this long.
    #[arg(long, env = "HUBBUB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Largest message a client may send, in bytes, after reassembling
    /// fragments; larger ones close the connection with 1009.
    #[arg(long, env = "HUBBUB_MAX_MESSAGE_BYTES", default_value_t = 512)]
    pub max_message_bytes: usize,

    /// Messages that may wait to be written to one connection; a client that
    /// falls further behind is evicted (code 1008).
    #[arg(long, env = "HUBBUB_SEND_QUEUE", default_value_t = 256)]
    pub send_queue: usize,

    /// Most simultaneous WebSocket connections; more get HTTP 503. Default:
    /// what the open-files limit allows, after keeping descriptors back for
    /// the listener, the store, health checks and sockets still in their
    /// HTTP phase (19,536 with a limit of 20,000); a larger value is capped
    /// to that.
    #[arg(long, env = "HUBBUB_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Centrifugo protocol (/connection/websocket): largest incoming frame in
    /// bytes; larger ones close the connection with 1009.
    #[arg(long, env = "HUBBUB_MAX_COMMAND_BYTES", default_value_t = 65_536)]
    pub max_command_bytes: usize,

    /// Centrifugo protocol: close a connection that has not sent its
    /// `connect` command this long after opening (code 3502).
    #[arg(long, env = "HUBBUB_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Centrifugo protocol: most channels one connection may subscribe to
    /// (error 106 beyond).
    #[arg(long, env = "HUBBUB_CHANNEL_LIMIT", default_value_t = 128)]
    pub channel_limit: usize,

    /// Streams (epoch, offsets, latest publications) kept for channels whose
    /// last member left, so clients that come back recover; the least
    /// recently emptied go first. 0: a stream ends with its last member.
    #[arg(long, env = "HUBBUB_IDLE_STREAMS", default_value_t = 1_000)]
    pub idle_streams: usize,

    /// Where channels' history (offsets, epochs, publications) is kept:
    /// `sqlite` (durable, under --data-dir), `memory` (lost on exit) or
    /// `redis` (at --redis-url, shared by every node started with it: one
    /// hub over several nodes). `--engine` is the same flag.
    #[arg(long, alias = "engine", env = "HUBBUB_STORE", default_value = "sqlite", value_parser = ["sqlite", "memory", "redis"])]
    pub store: String,

    /// The Redis engine's server (`--store redis`):
    /// `redis://[:PASSWORD@]HOST:PORT/DB`. Repeat it (or separate URLs with
    /// commas) to spread channels over several Redis instances by a stable
    /// hash of the channel name; every node needs the same list, in the
    /// same order.
    #[arg(
        long,
        env = "HUBBUB_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/0",
        value_delimiter = ','
    )]
    pub redis_url: Vec<String>,

    /// With `--store redis`: how long a node's presence entries outlive it.
    /// Each node refreshes its liveness in Redis every quarter of this; when
    /// a node stops, the other nodes drop its members (leave pushes, a new
    /// `online_users`) within this time, and read every channel's members
    /// again this often to heal whatever pub/sub lost.
    #[arg(long, env = "HUBBUB_PRESENCE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub presence_ttl: Duration,

    /// The SQLite store's directory (created on first start); the data is
    /// in `hubbub.db` (and its `-wal` file) there.
    #[arg(long, env = "HUBBUB_DATA_DIR", default_value = "./hubbub-data")]
    pub data_dir: std::path::PathBuf,

    /// How the SQLite store syncs a commit before publications are
    /// acknowledged: `normal` (survives a crash of hubbub; a power loss may
    /// lose the last commits) or `full` (survives a power loss; slower).
    #[arg(long, env = "HUBBUB_HISTORY_SYNC", default_value = "normal")]
    pub history_sync: crate::store::HistorySync,

    /// Publications a shard may have waiting for the store at once; beyond
    /// it publishes get error 100 (temporary).
    #[arg(long, env = "HUBBUB_STORE_QUEUE", default_value_t = 10_000)]
    pub store_queue: usize,

    /// History kept per channel in the default namespace (publications;
    /// 0 turns history, offsets and recovery off). Default 1000, or the
    /// config file's `[channel] history_size`.
    #[arg(long, env = "HUBBUB_HISTORY_SIZE")]
    pub history_size: Option<u32>,

    /// How long the default namespace keeps a publication (default 7 days:
    /// `168h`, or the config file's `[channel] history_ttl`).
    #[arg(long, env = "HUBBUB_HISTORY_TTL", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,

    /// A TOML file with settings and channel namespaces (see README):
    /// top-level keys are these flags' names with `_`, `[channel]` the
    /// default namespace, `[[namespace]]` the named ones. Flags and
    /// `HUBBUB_*` variables override the file.
    #[arg(long, env = "HUBBUB_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Let a woken connection writer wait this long before writing, so a
    /// burst leaves in fewer, larger writes (e.g. 1ms): less CPU per
    /// delivery under load for that much more latency. Off by default.
    #[arg(long, env = "HUBBUB_WRITE_COALESCE", value_parser = parse_duration)]
    pub write_coalesce: Option<Duration>,

    /// Channel namespaces, from `--config` (not a flag).
    #[arg(skip)]
    pub namespaces: Namespaces,

    /// Shards: threads that each own a share of the connections, with
    /// their own runtime and hub; a channel's home shard orders it, and a
    /// publication crosses to each other shard once. Default: the cores
    /// this process may use minus one (at least 1), leaving a core for the
    /// kernel's network work: on 2 cores one shard kept the fan-out tail
    /// lower than two (BENCHMARKS.md). (`--workers`, its name before
    /// shards, is an alias.)
    #[arg(long, env = "HUBBUB_SHARDS", alias = "workers", value_parser = parse_workers)]
    pub shards: Option<usize>,

    /// Turns on the server HTTP API (`POST /api/<method>`) with this key,
    /// sent as `X-API-Key: KEY` or `Authorization: apikey KEY`. Without
    /// it the API is off (404).
    #[arg(long, env = "HUBBUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Serve HTTPS and WSS: the certificate chain (PEM). Needs --tls-key.
    #[arg(long, env = "HUBBUB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) for --tls-cert.
    #[arg(long, env = "HUBBUB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Browser pages allowed to open WebSockets here, comma-separated:
    /// `https://chat.example.com`, `https://*.example.com`,
    /// `http://localhost:*`. A handshake with another `Origin` gets 403;
    /// clients that send no `Origin` (not browsers) and this server's own
    /// pages are always allowed. Default: any origin (as the seed servers).
    #[arg(long, env = "HUBBUB_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::origin::OriginPattern::parse)]
    pub allowed_origins: Vec<crate::origin::OriginPattern>,

    /// WebSocket connections one client address may hold (429 beyond; 0:
    /// no limit). Loopback addresses are exempt unless --limit-loopback.
    #[arg(long, env = "HUBBUB_MAX_CONNECTIONS_PER_IP", default_value_t = 1_000)]
    pub max_connections_per_ip: usize,

    /// WebSocket handshakes per second one client address may start, with
    /// bursts of twice that (429 with Retry-After beyond; 0: no limit).
    #[arg(long, env = "HUBBUB_HANDSHAKES_PER_IP", default_value_t = 100)]
    pub handshakes_per_ip: u32,

    /// Commands one connection may send per second (Centrifugo commands and
    /// seed chat lines), with bursts of twice that. Over it a command gets
    /// error 111 and a seed line is dropped; a connection that keeps
    /// flooding is closed (3013; seed clients 1008). 0: no limit.
    #[arg(long, env = "HUBBUB_COMMAND_RATE", default_value_t = 200)]
    pub command_rate: u32,

    /// Publications one user may make per second across its connections on
    /// a shard, with bursts of twice that (111 beyond; seed lines dropped).
    /// 0: no limit.
    #[arg(long, env = "HUBBUB_USER_PUBLISH_RATE", default_value_t = 500)]
    pub user_publish_rate: u32,

    /// Connections one user (a token's `sub`, a seed client's username) may
    /// hold at once, across shards (3504; seed clients 1008). 0: no limit.
    #[arg(long, env = "HUBBUB_USER_CONNECTION_LIMIT", default_value_t = 1_000)]
    pub user_connection_limit: usize,

    /// `online_users` lists a room sends per second, with bursts of twice
    /// that: in a join/leave storm the lists beyond wait and go out as one
    /// exact list. 0: no limit (a list for every change).
    #[arg(long, env = "HUBBUB_PRESENCE_RATE", default_value_t = 20)]
    pub presence_rate: u32,

    /// Apply the per-IP limits to loopback clients too (off by default: a
    /// reverse proxy on this machine makes every client look like one).
    #[arg(long, env = "HUBBUB_LIMIT_LOOPBACK")]
    pub limit_loopback: bool,
    /// Connection and subscription tokens (JWT) signed with this secret
    /// (HS256/384/512) are accepted; with any token key set, clients
    /// without a token are refused unless --allow-anonymous.
    #[arg(
        long,
        env = "HUBBUB_TOKEN_HMAC_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub token_hmac_secret: Option<String>,

    /// Tokens signed with the RSA private key of this PEM public key
    /// (RS256/384/512) are accepted.
    #[arg(long, env = "HUBBUB_TOKEN_RSA_PUBLIC_KEY", value_name = "FILE")]
    pub token_rsa_public_key: Option<std::path::PathBuf>,

    /// Tokens signed with the ECDSA private key of this PEM public key
    /// (ES256/384) are accepted.
    #[arg(long, env = "HUBBUB_TOKEN_ECDSA_PUBLIC_KEY", value_name = "FILE")]
    pub token_ecdsa_public_key: Option<std::path::PathBuf>,

    /// Tokens must carry this `aud` claim.
    #[arg(long, env = "HUBBUB_TOKEN_AUDIENCE")]
    pub token_audience: Option<String>,

    /// Tokens must carry this `iss` claim.
    #[arg(long, env = "HUBBUB_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,

    /// With a token key set: still let clients in without a token, as
    /// anonymous Centrifugo users or seed users named by `username`.
    #[arg(long, env = "HUBBUB_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Write every input the hub receives to FILE, for `hubbub-sim
    /// replay` (off by default; needs --shards 1; any store engine).
    #[arg(long, env = "HUBBUB_RECORD_INPUTS", value_name = "FILE")]
    pub record_inputs: Option<std::path::PathBuf>,

    /// The recording stops growing at this size; later inputs are counted
    /// as dropped and the replay says the recording is incomplete.
    #[arg(long, env = "HUBBUB_RECORD_INPUTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub record_inputs_max_bytes: u64,

    /// Record message contents as `x` bytes of the same length.
    #[arg(long, env = "HUBBUB_RECORD_INPUTS_REDACT")]
    pub record_inputs_redact: bool,

    #[command(subcommand)]
    pub command: Option<Subcommand>,
}

/// What to do instead of serving (nothing: serve).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Subcommand {
    /// Print an HS256 connection token signed with --token-hmac-secret
    /// (or HUBBUB_TOKEN_HMAC_SECRET, or the config file's), to try auth.
    Token {
        /// The user the token names (its `sub`).
        #[arg(long)]
        user: String,
        /// How long the token is valid (`30m`, `1h`, `24h`).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// JSON shown to others as this connection's `conn_info`.
        #[arg(long)]
        info: Option<String>,
    },
}

/// `typing:ROOM`: short-lived signals such as "alice is typing" (the
/// browser page's): no offsets, no history, no join/leave pushes; the
/// default namespace's permissions otherwise.
#[must_use]
pub fn typing_namespace() -> std::sync::Arc<hubbub_core::ChannelOptions> {
    std::sync::Arc::new(hubbub_core::ChannelOptions {
        history_size: 0,
        history_ttl: Duration::ZERO,
        join_leave: false,
        ..hubbub_core::ChannelOptions::default()
    })
}

/// One shard per core the process may use, but one: the kernel's network
/// work (loopback and softirq) needs a core of its own under load.
#[must_use]
pub fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) if n > 1024 => Err("must be at most 1024".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number of shards")),
    }
}

impl Cli {
    /// Parses the command line and the environment, then applies the
    /// `--config` file under them.
    ///
    /// # Errors
    /// A message for the user (clap's own errors exit the process).
    pub fn load() -> Result<Self, String> {
        let matches = Self::command().get_matches();
        let cli = Self::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        cli.with_file(&matches)
    }

    /// Applies the `--config` file (if any) to the settings that neither a
    /// flag nor an environment variable gave.
    ///
    /// # Errors
    /// The file cannot be read, or a key or value in it is wrong.
    pub fn with_file(mut self, matches: &ArgMatches) -> Result<Self, String> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let file = crate::config_file::load(&path)?;
        let unset = |id: &str| {
            !matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let context = |e: String| format!("config file {}: {e}", path.display());
        let duration = |key: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
            v.as_deref()
                .map(|v| crate::config_file::duration(key, v))
                .transpose()
                .map_err(context)
        };
        if let (Some(v), true) = (&file.listen, unset("listen")) {
            self.listen.clone_from(v);
        }
        for (id, value, slot) in [
            (
                "ping_interval",
                &file.ping_interval,
                &mut self.ping_interval,
            ),
            ("pong_timeout", &file.pong_timeout, &mut self.pong_timeout),
            (
                "write_timeout",
                &file.write_timeout,
                &mut self.write_timeout,
            ),
            (
                "connect_timeout",
                &file.connect_timeout,
                &mut self.connect_timeout,
            ),
            ("presence_ttl", &file.presence_ttl, &mut self.presence_ttl),
        ] {
            if let (Some(v), true) = (duration(id, value)?, unset(id)) {
                *slot = v;
            }
        }
        for (id, value, slot) in [
            (
                "max_message_bytes",
                file.max_message_bytes,
                &mut self.max_message_bytes,
            ),
            ("send_queue", file.send_queue, &mut self.send_queue),
            (
                "max_command_bytes",
                file.max_command_bytes,
                &mut self.max_command_bytes,
            ),
            ("channel_limit", file.channel_limit, &mut self.channel_limit),
            ("idle_streams", file.idle_streams, &mut self.idle_streams),
            ("store_queue", file.store_queue, &mut self.store_queue),
            (
                "max_connections_per_ip",
                file.max_connections_per_ip,
                &mut self.max_connections_per_ip,
            ),
        ] {
            if let (Some(v), true) = (value, unset(id)) {
                *slot = v;
            }
        }
        if let (Some(v), true) = (
            duration("write_coalesce", &file.write_coalesce)?,
            unset("write_coalesce"),
        ) {
            self.write_coalesce = Some(v);
        }
        if let (Some(v), true) = (file.shards, unset("shards")) {
            self.shards =
                Some(parse_workers(&v.to_string()).map_err(|e| context(format!("shards: {e}")))?);
        }
        for (id, value, slot) in [
            ("command_rate", file.command_rate, &mut self.command_rate),
            (
                "user_publish_rate",
                file.user_publish_rate,
                &mut self.user_publish_rate,
            ),
            ("presence_rate", file.presence_rate, &mut self.presence_rate),
        ] {
            if let (Some(v), true) = (value, unset(id)) {
                *slot = v;
            }
        }
        if let (Some(v), true) = (file.user_connection_limit, unset("user_connection_limit")) {
            self.user_connection_limit = v;
        }
        if let (Some(v), true) = (file.max_connections, unset("max_connections")) {
            self.max_connections = Some(v);
        }
        if let (Some(v), true) = (file.handshakes_per_ip, unset("handshakes_per_ip")) {
            self.handshakes_per_ip = v;
        }
        if let (Some(v), true) = (file.limit_loopback, unset("limit_loopback")) {
            self.limit_loopback = v;
        }
        if let (Some(list), true) = (&file.allowed_origins, unset("allowed_origins")) {
            self.allowed_origins = list
                .iter()
                .map(|p| crate::origin::OriginPattern::parse(p))
                .collect::<Result<_, _>>()
                .map_err(|e| context(format!("allowed_origins: {e}")))?;
        }
        if let (Some(v), true) = (&file.store, unset("store")) {
            if v != "sqlite" && v != "memory" && v != "redis" {
                return Err(context(format!(
                    "store: {v:?} is not a store (sqlite, memory or redis)"
                )));
            }
            self.store.clone_from(v);
        }
        if let (Some(v), true) = (&file.redis_url, unset("redis_url")) {
            self.redis_url = v.clone().into_vec();
        }
        if let (Some(v), true) = (&file.data_dir, unset("data_dir")) {
            self.data_dir.clone_from(v);
        }
        if let (Some(v), true) = (&file.history_sync, unset("history_sync")) {
            self.history_sync = v
                .parse()
                .map_err(|e: String| context(format!("history_sync: {e}")))?;
        }
        for (id, value, slot) in [
            (
                "token_hmac_secret",
                &file.token_hmac_secret,
                &mut self.token_hmac_secret,
            ),
            (
                "token_audience",
                &file.token_audience,
                &mut self.token_audience,
            ),
            ("token_issuer", &file.token_issuer, &mut self.token_issuer),
        ] {
            if let (Some(v), true) = (value, unset(id)) {
                *slot = Some(v.clone());
            }
        }
        for (id, value, slot) in [
            (
                "token_rsa_public_key",
                &file.token_rsa_public_key,
                &mut self.token_rsa_public_key,
            ),
            (
                "token_ecdsa_public_key",
                &file.token_ecdsa_public_key,
                &mut self.token_ecdsa_public_key,
            ),
        ] {
            if let (Some(v), true) = (value, unset(id)) {
                *slot = Some(v.clone());
            }
        }
        if let (Some(v), true) = (file.allow_anonymous, unset("allow_anonymous")) {
            self.allow_anonymous = v;
        }
        self.namespaces = file.namespaces().map_err(context)?;
        Ok(self)
    }

    /// The token keys these flags name.
    #[must_use]
    pub fn keys(&self) -> crate::auth::KeyConfig {
        crate::auth::KeyConfig {
            hmac_secret: self.token_hmac_secret.clone(),
            rsa_public_key: self.token_rsa_public_key.clone(),
            ecdsa_public_key: self.token_ecdsa_public_key.clone(),
            audience: self.token_audience.clone(),
            issuer: self.token_issuer.clone(),
        }
    }

    /// Shards to run: `--shards`, or the cores this process may use minus one.
    #[must_use]
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(default_shards)
    }

    /// The server settings these flags ask for (not yet validated).
    #[must_use]
    pub fn server_config(&self) -> ServerConfig {
        let budget = crate::limits::SocketBudget::derive(
            crate::limits::open_files_limit(),
            self.max_connections,
        );
        ServerConfig {
            hub: Config {
                ping_interval: self.ping_interval,
                pong_timeout: self.pong_timeout,
                max_message_bytes: self.max_message_bytes,
                send_queue: self.send_queue,
                max_connections: budget.max_connections,
                max_command_bytes: self.max_command_bytes,
                connect_timeout: self.connect_timeout,
                channel_limit: self.channel_limit,
                idle_streams: self.idle_streams,
                store_queue: self.store_queue,
                namespaces: self.namespaces(),
                entropy: crate::config::entropy(),
                server_version: concat!("hubbub ", env!("CARGO_PKG_VERSION")).to_owned(),
                allow_anonymous: self.allow_anonymous,
                command_rate: per_second(self.command_rate),
                user_publish_rate: per_second(self.user_publish_rate),
                user_connection_limit: self.user_connection_limit,
                presence_rate: per_second(self.presence_rate),
                ..Config::default()
            },
            write_timeout: self.write_timeout,
            shards: self.shard_count(),
            write_coalesce: self.write_coalesce,
            store: match self.store.as_str() {
                "memory" => StoreConfig::Memory,
                "redis" => StoreConfig::Redis {
                    urls: self.redis_url.clone(),
                    presence_ttl: self.presence_ttl,
                },
                _ => StoreConfig::Sqlite {
                    dir: self.data_dir.clone(),
                    sync: self.history_sync,
                },
            },
            api_key: self.api_key.as_deref().and_then(crate::api::ApiKey::new),
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            max_sockets: budget.max_sockets,
            origins: crate::origin::OriginPolicy::new(self.allowed_origins.clone()),
            ip_limits: crate::limits::IpLimitConfig {
                connections_per_ip: self.max_connections_per_ip,
                handshakes_per_ip: self.handshakes_per_ip,
                limit_loopback: self.limit_loopback,
            },
            record: self
                .record_inputs
                .clone()
                .map(|path| crate::record::RecordConfig {
                    path,
                    max_bytes: self.record_inputs_max_bytes,
                    redact: self.record_inputs_redact,
                }),
        }
    }

    /// The namespaces, with `--history-size` and `--history-ttl` applied
    /// to the default one, and the built-in `typing` namespace unless the
    /// config file declares its own.
    fn namespaces(&self) -> Namespaces {
        let mut namespaces = self.namespaces.clone();
        namespaces
            .named
            .entry("typing".to_owned())
            .or_insert_with(typing_namespace);
        if self.history_size.is_some() || self.history_ttl.is_some() {
            let default = std::sync::Arc::make_mut(&mut namespaces.default);
            if let Some(size) = self.history_size {
                default.history_size = size;
            }
            if let Some(ttl) = self.history_ttl {
                default.history_ttl = ttl;
            }
        }
        namespaces
    }
}

/// Parses a positive duration: digits followed by `ms`, `s`, `m` or `h`.
///
/// # Errors
/// A message saying what is wrong and what is expected.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a whole number followed by ms, s, m or h (e.g. 250ms, 2s, 1m)";
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid duration {input:?}: {EXPECTED}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => {
            return Err(format!(
                "invalid duration {input:?}: missing unit; {EXPECTED}"
            ))
        }
        _ => {
            return Err(format!(
                "invalid duration {input:?}: unknown unit {unit:?}; {EXPECTED}"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
    if ms == 0 {
        return Err(format!(
            "invalid duration {input:?}: must be greater than zero"
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A per-second limit with bursts of twice it; 0 is no limit.
fn per_second(rate: u32) -> Option<hubbub_core::Rate> {
    (rate > 0).then(|| hubbub_core::Rate::new(rate, rate.saturating_mul(2)))
}

#[cfg(test)]
mod tests {

    #[test]
    fn workers_must_be_a_positive_count() {
        assert_eq!(parse_workers("1"), Ok(1));
        assert_eq!(parse_workers(" 8 "), Ok(8));
        assert!(parse_workers("0")
            .expect_err("zero workers")
            .contains("at least 1"));
        assert!(parse_workers("two")
            .expect_err("not a number")
            .contains("not a whole number"));
        assert!(parse_workers("5000").is_err());
    }

    use super::*;

    #[test]
    fn token_settings_from_the_file_and_the_token_subcommand() {
        let dir = std::env::temp_dir().join(format!("hubbub-cli-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("hubbub.toml");
        std::fs::write(
            &path,
            "token_hmac_secret = \"file-secret\"\ntoken_audience = \"chat\"\nallow_anonymous = true\n[[namespace]]\nname = \"dm\"\nallow_user_limited_channels = true\npublication_data_format = \"json_object\"\n",
        )
        .expect("write");
        let file = path.to_str().expect("utf8");
        let matches = Cli::command().get_matches_from(["hubbub", "--config", file]);
        let cli = Cli::from_arg_matches(&matches)
            .expect("parses")
            .with_file(&matches)
            .expect("valid file");
        assert_eq!(cli.token_hmac_secret.as_deref(), Some("file-secret"));
        assert_eq!(cli.token_audience.as_deref(), Some("chat"));
        assert!(cli.command.is_none(), "no subcommand: serve");
        let config = cli.server_config();
        assert!(config.hub.allow_anonymous);
        let dm = &config.hub.namespaces.named["dm"];
        assert!(dm.allow_user_limited_channels);
        assert_eq!(
            dm.publication_data_format,
            hubbub_core::DataFormat::JsonObject
        );
        assert!(cli.keys().tokens().expect("keys").enabled());
        // Flags win over the file; the subcommand takes the secret after it.
        let matches = Cli::command().get_matches_from([
            "hubbub",
            "--config",
            file,
            "token",
            "--user",
            "alice",
            "--token-hmac-secret",
            "flag",
        ]);
        let cli = Cli::from_arg_matches(&matches)
            .expect("parses")
            .with_file(&matches)
            .expect("valid file");
        assert_eq!(cli.token_hmac_secret.as_deref(), Some("flag"));
        assert!(matches!(cli.command, Some(Subcommand::Token { ref user, .. }) if user == "alice"));
        // No key: no verifier; an unreadable key file stops the server.
        assert!(!Cli::parse_from(["hubbub"])
            .keys()
            .tokens()
            .expect("none")
            .enabled());
        let bad = Cli::parse_from(["hubbub", "--token-rsa-public-key", "/nonexistent.pem"]);
        let err = bad.keys().tokens().expect_err("unreadable");
        assert!(err.contains("--token-rsa-public-key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_config_file_fills_what_flags_and_env_leave_unset() {
        let dir = std::env::temp_dir().join(format!("hubbub-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("hubbub.toml");
        std::fs::write(
            &path,
            "ping_interval = \"20s\"\nsend_queue = 7\nmax_connections = 9\n[[namespace]]\nname = \"chat\"\npresence = false\n",
        )
        .expect("write");
        let args = [
            "hubbub",
            "--config",
            path.to_str().expect("utf8"),
            "--send-queue",
            "3",
        ];
        let matches = Cli::command().get_matches_from(args);
        let cli = Cli::from_arg_matches(&matches)
            .expect("parses")
            .with_file(&matches)
            .expect("valid file");
        assert_eq!(cli.ping_interval, Duration::from_secs(20), "from the file");
        assert_eq!(cli.send_queue, 3, "the flag wins");
        assert_eq!(cli.max_connections, Some(9));
        let config = cli.server_config();
        assert!(!config.hub.namespaces.named["chat"].presence);
        std::fs::write(&path, "send_qeue = 7\n").expect("write");
        let matches =
            Cli::command().get_matches_from(["hubbub", "--config", path.to_str().expect("utf8")]);
        let err = Cli::from_arg_matches(&matches)
            .expect("parses")
            .with_file(&matches)
            .expect_err("unknown key");
        assert!(
            err.contains("send_qeue") && err.contains("hubbub.toml"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("54s"), Ok(Duration::from_secs(54)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn bad_durations_say_why() {
        for (input, why) in [
            ("", "expected a whole number"),
            ("s", "expected a whole number"),
            ("10", "missing unit"),
            ("10x", "unknown unit"),
            ("1.5s", "unknown unit"),
            ("-1s", "expected a whole number"),
            ("0s", "greater than zero"),
            ("0ms", "greater than zero"),
            ("99999999999999999999s", "too large"),
            ("18446744073709551615h", "too large"),
            ("10 s", "unknown unit"),
        ] {
            let err = parse_duration(input).expect_err(input);
            assert!(err.contains(why), "{input:?}: {err}");
        }
    }

    #[test]
    fn defaults_match_the_issue() {
        let cli = Cli::try_parse_from(["hubbub"]).expect("defaults parse");
        assert_eq!(cli.listen, "0.0.0.0:8080");
        let mut config = cli.server_config();
        assert_ne!(config.hub.entropy, 0, "a random start");
        config.hub.entropy = 0;
        assert_eq!(config.shards, default_shards());
        config.shards = 1;
        assert_eq!(
            config.store,
            StoreConfig::Sqlite {
                dir: "./hubbub-data".into(),
                sync: crate::store::HistorySync::Normal,
            },
            "durable by default"
        );
        config.store = StoreConfig::Memory;
        let typing = config.hub.namespaces.named.remove("typing");
        assert_eq!(typing, Some(typing_namespace()), "typing:ROOM is built in");
        assert!(!typing_namespace().history());
        // Connections: what the open-files limit allows.
        let budget = crate::limits::SocketBudget::derive(crate::limits::open_files_limit(), None);
        assert_eq!(config.hub.max_connections, budget.max_connections);
        assert_eq!(config.max_sockets, budget.max_sockets);
        assert!(config.hub.max_connections < config.max_sockets);
        config.hub.max_connections = Config::default().max_connections;
        config.max_sockets = ServerConfig::default().max_sockets;
        assert_eq!(config, ServerConfig::default());
        assert_eq!(config.hub, Config::default());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn flags_override_and_validate() {
        let cli = Cli::try_parse_from([
            "hubbub",
            "--listen",
            "127.0.0.1:0",
            "--ping-interval",
            "100ms",
            "--pong-timeout",
            "300ms",
            "--write-timeout",
            "1s",
            "--max-message-bytes",
            "64",
            "--send-queue",
            "4",
            "--max-connections",
            "3",
        ])
        .expect("parses");
        let config = cli.server_config();
        assert_eq!(config.hub.ping_interval, Duration::from_millis(100));
        assert_eq!(config.hub.send_queue, 4);
        assert!(config.validate().is_ok());

        let bad = Cli::try_parse_from(["hubbub", "--ping-interval", "1m", "--pong-timeout", "30s"])
            .expect("parses");
        assert!(bad.server_config().validate().is_err());
        assert!(Cli::try_parse_from(["hubbub", "--write-timeout", "0s"]).is_err());
        assert!(Cli::try_parse_from(["hubbub", "--send-queue", "-1"]).is_err());
    }
}
