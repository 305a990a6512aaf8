//! `hubbub-sim`: deterministic soak simulations of the hub (default) and a
//! WebSocket load generator against a running server (`hubbub-sim load …`).
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "hubbub-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    soak: hubbub_sim::soak::SoakArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a running server (hubbub or a seed peer) with real WebSocket clients over loopback.
    Load(hubbub_sim::load::LoadArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Load(args)) => hubbub_sim::load::main(args),
        None => hubbub_sim::soak::main(&cli.soak),
    }
}
