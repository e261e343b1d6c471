//! `moat audit verify`: opens the store on this machine's data directory
//! (with the master key, like the server) and walks the whole audit chain.
//! It reads alongside a running server; it never writes.

use std::process::ExitCode;

use crate::config::{Config, ServeArgs};
use crate::serve;

/// Checks the audit log's hash chain on this machine's data directory.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    server: ServeArgs,
}

pub(crate) async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.server)?;
    let master = serve::load_master_key(&config, false)?;
    let store = serve::open_store(&config, &master)?;
    let report = moat_core::store::Store::verify_audit(&store).await?;
    match report.broken {
        None => {
            println!("audit log intact: {} events", report.checked);
            println!("head: seq {} hash {}", report.head_seq, report.head_hash);
            println!(
                "(keep this head somewhere else: a later verify that ends before it means events were cut off)"
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            println!("audit log BROKEN at event {}: {b}", b.seq());
            println!(
                "{} events before it verify; the last good one is seq {} hash {}",
                report.checked, report.head_seq, report.head_hash
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
