//! Power cut: publishers ingest with acknowledged writes, the server is
//! killed with SIGKILL at a random moment, restarted on the same data, and
//! every message it acknowledged is there, exactly once. Twice over, so
//! that the second run also recovers a database a crash already left.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::messages::{all_messages, device};
use common::{Api, Options, Server};
use rand::Rng;
use serde_json::json;

const PUBLISHERS: usize = 8;
/// Per publisher and run: bounds the loop should the kill come late.
const MAX_PER_PUBLISHER: usize = 5_000;

/// Publishes from `PUBLISHERS` tasks until the server goes away; returns
/// the ids it acknowledged with 202.
async fn ingest_until_killed(
    server: Server,
    key: &str,
    channel: &str,
) -> (tempfile::TempDir, Vec<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let url = server.api(&format!("/channels/{channel}/messages"));
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let client = server.client();
        let url = url.clone();
        let auth = format!("Device {key}");
        let acked = Arc::clone(&acked);
        tasks.push(tokio::spawn(async move {
            for i in 0..MAX_PER_PUBLISHER {
                let pack = json!([{"n": "publisher", "v": p}, {"n": "i", "v": i}, {"n": "x", "vs": "crash"}]);
                let sent = client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/senml+json")
                    .body(pack.to_string())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(res) = sent else { return };
                if res.status() != 202 {
                    return;
                }
                // Acknowledged only once the body says so: a response cut
                // by the kill is not an acknowledgement.
                let Ok(body) = res.json::<serde_json::Value>().await else {
                    return;
                };
                acked
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_owned());
            }
        }));
    }
    // Let ingest get going, then cut the power at a random moment.
    let delay = rand::thread_rng().gen_range(300..1500);
    let start = Instant::now();
    while acked.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let dir = server.kill();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
    }
    let acked = acked.lock().unwrap().clone();
    (dir, acked)
}

#[tokio::test]
async fn every_acknowledged_message_survives_sigkill_exactly_once() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let channel = admin.create("/channels", json!({"name": "crash"})).await;
    let d = device(&admin, &channel, "crasher", true, false).await;

    let mut acked_total = Vec::new();
    let mut server = server;
    for round in 0..2 {
        let (dir, acked) = ingest_until_killed(server, &d.key, &channel).await;
        assert!(!acked.is_empty(), "round {round}: nothing was acknowledged");
        acked_total.extend(acked);
        server = Server::start_in(dir, Options::default());

        let admin = Api::bearer(&server, &server.admin_token().await);
        let stored = all_messages(&admin, &channel).await;
        let mut count: HashMap<&str, usize> = HashMap::new();
        for m in &stored {
            *count.entry(m["id"].as_str().unwrap()).or_default() += 1;
        }
        let missing: Vec<&String> = acked_total
            .iter()
            .filter(|id| !count.contains_key(id.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged messages lost, e.g. {:?}",
            missing.len(),
            acked_total.len(),
            missing.first()
        );
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "round {round}: stored twice: {twice:?}");
        // Whatever was stored but not acknowledged (in flight at the kill)
        // is whole: its records came with it.
        let recs = admin
            .get(&format!("/channels/{channel}/messages?name=x&format=csv"))
            .await;
        // CSV: a header, then a row per record.
        let lines = recs.body.as_str().unwrap().lines().count() - 1;
        assert_eq!(
            lines,
            stored.len(),
            "round {round}: one x record per message"
        );
        eprintln!(
            "round {round}: {} acknowledged in all, {} stored",
            acked_total.len(),
            stored.len()
        );
    }
}
