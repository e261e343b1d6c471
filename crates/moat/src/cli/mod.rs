//! The command line client: admin tasks over the HTTPS API.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub(crate) enum Command {
    /// Prints who the saved credentials belong to.
    Whoami,
}

pub(crate) async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Whoami => Ok(ExitCode::SUCCESS),
    }
}
