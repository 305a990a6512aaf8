//! `hubbub-sim`: deterministic soak simulations of the hub. (The WebSocket
//! load generator against a running server is `hubbub-load`, crate
//! `hubbub-loadgen`.)
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "hubbub-sim", version, about)]
struct Cli {
    #[command(flatten)]
    soak: hubbub_sim::soak::SoakArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    hubbub_sim::soak::main(&cli.soak)
}
