//! MQTT clients written by others, pointed at the test server: rumqttc (v5
//! and v3.1.1) over TLS, and Debian's mosquitto_pub / mosquitto_sub with a
//! device certificate.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;

use super::device::{client_config, moat_pki_provider, openssl_csr};
use super::{Api, Server};

/// TLS trusting the server's CA, without a client certificate (device key
/// authentication).
pub fn tls_without_cert(server: &Server) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read_to_string(server.ca_path()).unwrap();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(moat_pki_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn host_port(addr: &str) -> (String, u16) {
    let (h, p) = addr.rsplit_once(':').unwrap();
    (h.to_owned(), p.parse().unwrap())
}

/// MQTT 5 options for a device that authenticates with its id and key.
pub fn v5_with_key(
    server: &Server,
    client_id: &str,
    device: &str,
    key: &str,
) -> rumqttc::v5::MqttOptions {
    let (host, port) = host_port(&server.mqtt);
    let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
    o.set_credentials(device, key);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::from(
        tls_without_cert(server),
    )));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// MQTT 3.1.1 options for a device that authenticates with its id and key.
pub fn v3_with_key(
    server: &Server,
    client_id: &str,
    device: &str,
    key: &str,
) -> rumqttc::MqttOptions {
    let (host, port) = host_port(&server.mqtt);
    let mut o = rumqttc::MqttOptions::new(client_id, host, port);
    o.set_credentials(device, key);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::from(
        tls_without_cert(server),
    )));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// MQTT 5 options for a device presenting its certificate.
pub fn v5_with_cert(
    server: &Server,
    client_id: &str,
    chain: &str,
    key: &str,
) -> rumqttc::v5::MqttOptions {
    let (host, port) = host_port(&server.mqtt);
    let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
    o.set_transport(Transport::tls_with_config(TlsConfiguration::from(
        client_config(server, chain, key),
    )));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// The next packet the v5 client receives, within `secs` seconds.
pub async fn next_v5(
    events: &mut rumqttc::v5::EventLoop,
    secs: u64,
) -> Result<rumqttc::v5::mqttbytes::v5::Packet, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => return Err("timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(rumqttc::v5::Event::Incoming(p))) => return Ok(p),
            Ok(Ok(rumqttc::v5::Event::Outgoing(_))) => {}
        }
    }
}

/// The next packet the v3.1.1 client receives, within `secs` seconds.
pub async fn next_v3(
    events: &mut rumqttc::EventLoop,
    secs: u64,
) -> Result<rumqttc::Packet, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Err(_) => return Err("timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(rumqttc::Event::Incoming(p))) => return Ok(p),
            Ok(Ok(rumqttc::Event::Outgoing(_))) => {}
        }
    }
}

/// A device with a certificate issued by the platform for an openssl
/// key; writes `{name}.key` and `{name}.pem` into `dir` and returns the
/// device id, the chain and the key.
pub async fn device_with_cert(admin: &Api, dir: &Path, name: &str) -> (String, String, String) {
    let device = admin.create("/devices", json!({ "name": name })).await;
    let (key, csr) = openssl_csr(dir, name);
    let issued = admin
        .post(
            &format!("/devices/{device}/certificates"),
            json!({ "csr": csr }),
        )
        .await;
    assert_eq!(issued.status, 201, "{issued:?}");
    let chain = issued.body["chain_pem"].as_str().unwrap().to_owned();
    std::fs::write(dir.join(format!("{name}.pem")), &chain).unwrap();
    (device, chain, key)
}

/// `mosquitto_pub`/`mosquitto_sub` arguments for mutual TLS with the
/// certificate `{name}.pem` and key `{name}.key` in `dir`.
pub fn mosquitto_tls(server: &Server, dir: &Path, name: &str) -> Vec<String> {
    let (host, port) = host_port(&server.mqtt);
    vec![
        "-h".into(),
        host,
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        server.ca_path().display().to_string(),
        "--cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
    ]
}

/// Runs a mosquitto client to completion.
pub fn mosquitto(program: &str, args: &[String]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (scripts/install-test-deps): {e}"))
}

/// A shared handle, so a test can poll one client while another runs.
pub type Shared<T> = Arc<tokio::sync::Mutex<T>>;
