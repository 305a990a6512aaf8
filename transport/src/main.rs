//! The `hubbub` binary: flags, logging, signals, then [`hubbub::serve`].
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use hubbub::cli::Cli;
use hubbub::shutdown::Signals;
use tokio::net::{TcpListener, TcpSocket};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Pending connections the kernel may hold before we accept them; a burst
/// of thousands of clients should not see refused connections.
const LISTEN_BACKLOG: u32 = 4096;

fn main() -> ExitCode {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("hubbub: {e}");
            return ExitCode::from(2);
        }
    };
    let stderr = std::io::stderr();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(stderr.is_terminal())
        .with_writer(std::io::stderr)
        .init();
    if let Some(hubbub::cli::Subcommand::Token { user, ttl, info }) = &cli.command {
        return print_token(&cli, user, *ttl, info.as_deref());
    }
    let mut config = cli.server_config();
    match cli.keys().tokens() {
        Ok(tokens) => config.hub.tokens = tokens,
        Err(e) => {
            eprintln!("hubbub: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = config.validate() {
        eprintln!("hubbub: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    if let Some(files) = &config.tls {
        if let Err(e) = hubbub::tls::load(files) {
            eprintln!("hubbub: {e}");
            return ExitCode::from(2);
        }
    }
    // This runtime only accepts connections and waits for signals: every
    // connection is handed to a shard's own thread and runtime.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hubbub: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let signals = match Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("hubbub: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match bind(&cli.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("hubbub: cannot listen on {}: {e}", cli.listen);
                return ExitCode::FAILURE;
            }
        };
        let beyond_loopback = listener
            .local_addr()
            .is_ok_and(|addr| !addr.ip().is_loopback());
        if beyond_loopback && !config.hub.tokens.enabled() {
            warn!(
                listen = %cli.listen,
                "listening beyond loopback with no authentication: anyone who can reach \
                 this port may connect and chat; set --token-hmac-secret (or an RSA/ECDSA \
                 public key) to require tokens"
            );
        }
        let shutdown = async {
            let name = signals.recv().await;
            info!(signal = name, "shutdown requested");
        };
        match hubbub::serve(listener, config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// `hubbub token`: prints an HS256 token for `user`.
fn print_token(cli: &Cli, user: &str, ttl: std::time::Duration, info: Option<&str>) -> ExitCode {
    let Some(secret) = cli.token_hmac_secret.as_deref() else {
        eprintln!(
            "hubbub token: no secret: pass --token-hmac-secret or set HUBBUB_TOKEN_HMAC_SECRET"
        );
        return ExitCode::from(2);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match hubbub::auth::make_token(secret, user, Some(ttl), info, now) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hubbub token: {e}");
            ExitCode::from(2)
        }
    }
}

/// Binds `listen` (host:port; the first address it resolves to).
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
