//! README's curl quickstart, run as written against a real server: the docs
//! a newcomer follows must work.

mod common;

use common::{ADMIN_PASSWORD, Server};

/// The first ```sh block after the "### 3. With curl" heading.
fn curl_quickstart() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("### 3. With curl")
        .nth(1)
        .expect("README has a curl quickstart");
    let block = section.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_owned()
}

#[tokio::test]
async fn the_curl_quickstart_works_as_written() {
    let server = Server::start();
    let port = server.url.rsplit(':').next().unwrap();
    let script = curl_quickstart()
        .replace("localhost:8443", &format!("localhost:{port}"))
        .replace("moat-data/ca.pem", server.ca_path().to_str().unwrap())
        .replace("<the bootstrap password>", ADMIN_PASSWORD);
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // curl prints each body without a newline: read them as a stream of
    // JSON documents; the last is the device list.
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every output is JSON");
    let devices = docs
        .last()
        .expect("the last command prints the device list");
    assert_eq!(devices["items"][0]["name"], "boiler-1");
    assert_eq!(devices["items"][0]["tags"][0], "site:lyon");
}
