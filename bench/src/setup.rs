//! Before and after the ingest load: the publishers wrk plays (a channel, N
//! devices with a key and a connection each), and the check that what was
//! acknowledged can be read back through the API.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

use crate::BENCH_PASSWORD;
use crate::api::Api;

/// Most devices `setup` creates: each is a few identity-database writes.
const MAX_DEVICES: usize = 10_000;

#[derive(clap::Args)]
pub(crate) struct SetupArgs {
    /// The server, such as https://127.0.0.1:8443.
    #[arg(long)]
    url: String,
    /// The server's CA certificate (`<data-dir>/ca.pem`).
    #[arg(long)]
    cacert: PathBuf,
    /// The bootstrap admin's password.
    #[arg(long, env = "MOAT_ADMIN_PASSWORD", hide_env_values = true, default_value = BENCH_PASSWORD)]
    password: String,
    /// Devices (publishers) to create.
    #[arg(long, default_value_t = 32)]
    devices: usize,
    /// Where to write the device keys, one a line, in device order.
    #[arg(long)]
    keys: PathBuf,
    /// Also write each key's DTLS pre-shared key here, `identity key` a
    /// line, in device order (for `moat-bench coap`).
    #[arg(long)]
    psk: Option<PathBuf>,
    /// The channel's payload policy (senml, json, opaque…); without it, the
    /// server's default (SenML).
    #[arg(long)]
    payload_policy: Option<String>,
}

pub(crate) async fn setup(a: SetupArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_DEVICES).contains(&a.devices),
        "--devices must be between 1 and {MAX_DEVICES}"
    );
    let api = Api::login(&a.url, &a.cacert, &a.password).await?;
    let mut new_channel = json!({"name": "bench"});
    if let Some(policy) = &a.payload_policy {
        new_channel["payload_policy"] = json!(policy);
    }
    let channel = api.post("/channels", &new_channel).await?;
    let channel = channel["id"].as_str().context("a channel without id")?;
    let mut keys = String::new();
    let mut psks = String::new();
    for i in 0..a.devices {
        let device = api
            .post("/devices", &json!({"name": format!("bench-{i}")}))
            .await?;
        let device = device["id"].as_str().context("a device without id")?;
        let key = api
            .post(&format!("/devices/{device}/keys"), &json!({}))
            .await?;
        keys.push_str(
            key["token"]
                .as_str()
                .context("a device key without token")?,
        );
        keys.push('\n');
        if a.psk.is_some() {
            let psk = &key["dtls_psk"];
            match (psk["identity"].as_str(), psk["key"].as_str()) {
                (Some(identity), Some(k)) => psks.push_str(&format!("{identity} {k}\n")),
                _ => anyhow::bail!("a device key without dtls_psk"),
            }
        }
        api.put(
            &format!("/channels/{channel}/connections/{device}"),
            &json!({"publish": true, "subscribe": true}),
        )
        .await?;
    }
    std::fs::write(&a.keys, keys).with_context(|| format!("writing {}", a.keys.display()))?;
    if let Some(path) = &a.psk {
        std::fs::write(path, psks).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{channel}");
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    cacert: PathBuf,
    #[arg(long, env = "MOAT_ADMIN_PASSWORD", hide_env_values = true, default_value = BENCH_PASSWORD)]
    password: String,
    /// The channel the load published to.
    #[arg(long)]
    channel: String,
}

/// Reads a page of the channel's messages and counts its records with an
/// aggregate, both through the API; reads the writer's batch sizes from
/// `/metrics`.
pub(crate) async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let api = Api::login(&a.url, &a.cacert, &a.password).await?;
    let c = &a.channel;
    let page = api
        .get(&format!("/channels/{c}/messages?limit=100"))
        .await?;
    let page = page["messages"].as_array().map_or(0, Vec::len);
    // One bucket a day since the epoch: fewer than the API's bucket limit.
    let counted = api
        .get(&format!(
            "/channels/{c}/messages?aggregate=count&interval=1d&from=0"
        ))
        .await?;
    let records: u64 = counted["buckets"]
        .as_array()
        .context("an aggregate without buckets")?
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .sum();
    let metrics = api.get_text("/metrics").await?;
    let sum = metric(&metrics, "moat_message_batch_size_sum");
    let batches = metric(&metrics, "moat_message_batch_size_count");
    let mean = match (sum, batches) {
        (Some(s), Some(n)) if n > 0.0 => s / n,
        _ => 0.0,
    };
    println!(
        "read back through the API: a page of {page} messages; {records} records counted; \
         {} writer batches of {mean:.1} messages on average",
        batches.unwrap_or(0.0)
    );
    println!(
        "RESULT verify page={page} api_records={records} batches={} mean_batch={mean:.1}",
        batches.unwrap_or(0.0)
    );
    Ok(())
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}
