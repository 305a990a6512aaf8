//! `hubbub-load`: a WebSocket load generator against a running chat server
//! (hubbub or a seed peer) on this machine's loopback. See [`hubbub_loadgen`].
#![forbid(unsafe_code)]

use clap::Parser;

/// Drive a running server (hubbub or a seed peer) with real WebSocket clients over loopback.
///
/// Prints a table, then one line of JSON with all figures (latencies in µs).
/// Example: `hubbub-load --url ws://127.0.0.1:8080 --scenario fanout
/// --clients 1000 --senders 10 --rate 100 --duration 5 --server-pid $PID`.
#[derive(Parser, Debug)]
#[command(name = "hubbub-load", version)]
struct Cli {
    #[command(flatten)]
    load: hubbub_loadgen::LoadArgs,
}

fn main() -> std::process::ExitCode {
    hubbub_loadgen::main(Cli::parse().load)
}
