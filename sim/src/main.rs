//! `hubbub-sim`: deterministic soak simulations of the hub. (The WebSocket
//! load generator against a running server is `hubbub-load`, crate
//! `hubbub-loadgen`.)
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "hubbub-sim",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: hubbub_sim::soak::SoakArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Seed after seed of a preset until a number of hub inputs (resumable by seed).
    Soak(hubbub_sim::soak::LongArgs),
    /// Feed a `hubbub --record-inputs` recording to a fresh hub, checking every step.
    Replay(hubbub_sim::replay::ReplayArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Soak(args)) => hubbub_sim::soak::long_main(args),
        Some(Command::Replay(args)) => hubbub_sim::replay::main(args),
        None => hubbub_sim::soak::main(&cli.run),
    }
}
