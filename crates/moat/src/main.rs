//! The `moat` binary: the server (`moat serve`) and the command line that
//! drives it over the API. Only this crate reads configuration.

mod audit_verify;
mod bootstrap;
mod client;
mod coap;
mod config;
mod mqtt;
mod retention;
mod serve;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// Moat: a secure IoT platform in one binary.
#[derive(Parser)]
#[command(name = "moat", version, about, propagate_version = true, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: client::Global,
}

/// `moat`'s top-level help, with the way in.
const AFTER_HELP: &str = "Start a server with `moat serve`; then `moat login --username admin` and `moat --help` for the rest.";

#[derive(Subcommand)]
enum Command {
    /// Runs the Moat server.
    Serve(config::ServeArgs),
    /// Works on the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Prints a shell completion script, e.g. `moat completions bash > /etc/bash_completion.d/moat`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(client::Command),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Checks the audit log's hash chain on this machine's data directory.
    Verify(audit_verify::VerifyArgs),
    /// Lists audit events over the API, newest first (for `auditor` and `admin`).
    List(client::AuditListArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let result = match cli.command {
        Command::Serve(args) => runtime
            .block_on(serve::run(args))
            .map(|()| ExitCode::SUCCESS),
        Command::Audit(AuditCommand::Verify(args)) => runtime.block_on(audit_verify::run(args)),
        Command::Audit(AuditCommand::List(args)) => {
            runtime.block_on(client::audit_list(args, &cli.global))
        }
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "moat", &mut script);
            write_stdout(&script)
        }
        Command::Client(c) => runtime.block_on(client::run(c, cli.global)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`moat completions bash | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
