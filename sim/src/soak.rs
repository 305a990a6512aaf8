//! Long soak runs of the simulation from the command line.
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Seed of the simulation (random when omitted).
    #[arg(long)]
    pub seed: Option<String>,
}

#[must_use]
pub fn main(_args: &SoakArgs) -> ExitCode {
    eprintln!("simulation not built yet");
    ExitCode::FAILURE
}
