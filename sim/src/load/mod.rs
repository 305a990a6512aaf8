//! The load generator: real WebSocket clients against a running server.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// Server base URL, e.g. ws://127.0.0.1:8080
    #[arg(long)]
    pub url: String,
}

#[must_use]
pub fn main(_args: LoadArgs) -> ExitCode {
    eprintln!("load generator not built yet");
    ExitCode::FAILURE
}
