//! README's curl quickstart, device-certificate, messages, MQTT and CoAP sections, run as written
//! against a real server: the docs a newcomer follows must work.

mod common;

use common::{ADMIN_PASSWORD, Server};

/// The first ```sh block after `heading`.
fn sh_block(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("README has {heading}"));
    let block = section.split("```sh\n").nth(1).unwrap();
    block.split("```").next().unwrap().to_owned()
}

/// The curl quickstart and the device certificate section, which continues
/// its shell session.
fn curl_quickstart() -> String {
    sh_block("### 3. With curl")
        + &sh_block("### 4. A device with its own certificate")
        + &sh_block("### 5. Messages")
        + &sh_block("### 6. MQTT")
        + &sh_block("### 7. CoAP over DTLS")
}

#[tokio::test]
async fn the_curl_quickstart_works_as_written() {
    let server = Server::start();
    let port = server.url.rsplit(':').next().unwrap();
    let mqtt_port = server.mqtt.rsplit(':').next().unwrap();
    let coap = &server.coap;
    let script = curl_quickstart()
        .replace("localhost:8443", &format!("localhost:{port}"))
        .replace("-p 8883", &format!("-p {mqtt_port}"))
        .replace("127.0.0.1:5684", coap)
        .replace("moat-data/ca.pem", server.ca_path().to_str().unwrap())
        .replace("<the bootstrap password>", ADMIN_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("bash")
        .current_dir(dir.path())
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
    // JSON documents; the device list, then who the certificate is.
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every output is JSON");
    let [
        ..,
        devices,
        me,
        ack,
        temps,
        hourly,
        heard,
        over_mqtt,
        over_coap,
    ] = docs.as_slice()
    else {
        panic!("too few outputs: {docs:?}");
    };
    // Section 6: mosquitto_sub heard the mosquitto_pub, and it was stored.
    assert_eq!(heard[0]["v"], 72, "{heard}");
    assert_eq!(over_mqtt["messages"][0]["protocol"], "mqtt", "{over_mqtt}");
    assert_eq!(
        over_mqtt["messages"][0]["subtopic"], "floor/2",
        "{over_mqtt}"
    );
    // Section 7: the CoAP POST was stored.
    assert_eq!(over_coap["messages"][0]["protocol"], "coap", "{over_coap}");
    assert_eq!(
        over_coap["messages"][0]["payload"][0]["v"], 73,
        "{over_coap}"
    );
    assert_eq!(ack["records"], 2, "{ack}");
    assert_eq!(temps["records"][0]["v"], 71.5, "{temps}");
    assert_eq!(temps["records"][0]["u"], "Cel");
    assert_eq!(
        temps["records"][0]["publisher"],
        format!("device:{}", devices["items"][0]["id"].as_str().unwrap())
    );
    assert_eq!(hourly["buckets"][0]["value"], 71.5, "{hourly}");
    assert_eq!(devices["items"][0]["name"], "boiler-1");
    assert_eq!(devices["items"][0]["tags"][0], "site:lyon");
    assert_eq!(me["subject"]["kind"], "device", "{me}");
    assert_eq!(me["subject"]["id"], devices["items"][0]["id"]);
}
