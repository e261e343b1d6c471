//! `moat-bench`: the parts of Moat's message benchmarks that want Rust.
//!
//! `bench/messages.sh` drives the HTTP ingest benchmark: it starts `moat
//! serve`, lets [`setup`] create the publishers, loads the server with wrk
//! and `bench/senml.lua`, reads back through the API ([`setup`]'s `verify`),
//! stops the server, counts the stored rows ([`db`]) and measures the
//! storage ceiling on the same file ([`ceiling`]). The aggregation
//! benchmark is one command ([`agg`]). Every subcommand that reports prints
//! human-readable lines and one `RESULT <what> key=value…` line per figure,
//! which the script reads. The figures and commands are in
//! `docs/benchmarks.md`.

mod agg;
mod api;
mod ceiling;
mod coap;
mod db;
mod rows;
mod server;
mod setup;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The master key every benchmark uses unless told otherwise: fixed, so that
/// the script, the server and this tool agree without passing it around.
/// A benchmark key, never a real one.
pub(crate) const BENCH_MASTER_KEY: &str =
    "6d6f61742d62656e63682d6d61737465722d6b65792d6e6f742d736563726574";

/// The bootstrap admin's password on benchmark servers.
pub(crate) const BENCH_PASSWORD: &str = "moat-bench-admin-password";

#[derive(Parser)]
#[command(
    name = "moat-bench",
    about = "Moat's message benchmarks (see docs/benchmarks.md)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a channel and N devices, each with a key and a publish and
    /// subscribe connection; writes the keys one a line and prints the
    /// channel's id.
    Setup(setup::SetupArgs),
    /// Reads the channel back through the API (a page of messages, and a
    /// count of every record) and the writer's batch sizes from /metrics.
    Verify(setup::VerifyArgs),
    /// Counts the messages and records in a messages.db.
    Count(CountArgs),
    /// The storage ceiling: the same messages inserted by raw batched SQL,
    /// and through the store's own append, into the same file.
    Ceiling(ceiling::Args),
    /// Aggregation over (by default) 10 million stored records: over HTTP,
    /// through the store, and as raw SQL on the same file.
    Agg(agg::Args),
    /// CoAP over DTLS load: confirmable POSTs (`post`) or Observe fan-out
    /// (`observe`), each client its own DTLS session.
    Coap(coap::Args),
}

#[derive(clap::Args)]
struct CountArgs {
    /// The messages.db to count.
    #[arg(long)]
    db: PathBuf,
    /// The master key (64 hex digits or base64).
    #[arg(long, env = "MOAT_MASTER_KEY", hide_env_values = true, default_value = BENCH_MASTER_KEY)]
    master_key: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Setup(a) => rt.block_on(setup::setup(a)),
        Command::Verify(a) => rt.block_on(setup::verify(a)),
        Command::Count(a) => {
            let conn = db::open(&a.db, &db::messages_key(&a.master_key)?, false)?;
            let (messages, records) = db::counts(&conn)?;
            println!(
                "{messages} messages, {records} records in {}",
                a.db.display()
            );
            println!("RESULT count messages={messages} records={records}");
            Ok(())
        }
        Command::Ceiling(a) => rt.block_on(ceiling::run(a)),
        Command::Agg(a) => rt.block_on(agg::run(a)),
        // Blocking sockets on OS threads: no runtime.
        Command::Coap(a) => coap::run(a),
    }
}
