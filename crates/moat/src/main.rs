//! The `moat` binary: the server (`moat serve`) and the command line that
//! drives it over the API. Only this crate reads configuration.

mod audit_verify;
mod bootstrap;
mod cli;
mod config;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Moat: a secure IoT platform in one binary.
#[derive(Parser)]
#[command(name = "moat", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the Moat server.
    Serve(config::ServeArgs),
    /// Works on the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    #[command(flatten)]
    Client(cli::Command),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the audit log's hash chain on this machine's data directory.
    Verify(audit_verify::VerifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result = match cli.command {
        Command::Serve(args) => runtime
            .block_on(serve::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Audit(AuditCommand::Verify(args)) => runtime.block_on(audit_verify::run(args)),
        Command::Client(cmd) => runtime.block_on(cli::run(cmd)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
