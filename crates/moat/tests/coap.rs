//! CoAP over DTLS end to end against the real binary, with clients written
//! by others: libcoap's `coap-client-openssl` (Debian's libcoap3-bin) with a
//! pre-shared key and with a client certificate; OpenSSL in process for the
//! cookie exchange; aiocoap (PyPI, DTLS through tinydtls) with a pre-shared
//! key (tests/coap_aiocoap.py).
//!
//! What is checked: POST lands in the store (also in Block1 pieces) and
//! reaches MQTT subscribers, GET with Observe hears messages from HTTP (a
//! large one through Block2) and MQTT and ends with 4.03 when the device loses its
//! subscribe right; refusals carry 4.xx codes; a wrong key fails the
//! handshake; the server answers a ClientHello with a HelloVerifyRequest no
//! larger than it and keeps no state for it, and ignores datagrams without
//! a session; revoking or quarantining a device cuts its DTLS session;
//! malformed plain CoAP is counted.

mod common;

use std::net::UdpSocket;
use std::process::Stdio;
use std::time::Duration;

use common::messages::{Publisher, all_messages, connect, device};
use common::mqtt::{device_with_cert, next_v5, v5_with_key};
use common::{Api, Options, Server};
use serde_json::json;

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

/// The DTLS pre-shared key of a device's key, as the API gave it.
fn psk(p: &Publisher) -> &str {
    &p.psk
}

/// Runs `coap-client-openssl` with `args`; its stdout and stderr together,
/// and whether it exited 0. Bounded by `-B` (given here) and a kill after
/// `secs` + 10 s.
async fn coap_client(args: &[&str], secs: u64) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("coap-client-openssl");
    cmd.args(["-B", &secs.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .expect("coap-client-openssl (scripts/install-test-deps)");
    let out = tokio::time::timeout(Duration::from_secs(secs + 10), child.wait_with_output())
        .await
        .expect("coap-client finished in time")
        .expect("coap-client ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn url(server: &Server, path: &str) -> String {
    format!("coaps://{}/{path}", server.coap)
}

/// `coap-client-openssl` observing `channel`'s messages as `p` for `secs`
/// seconds, in the background; what it printed when it is done. Callers
/// give it a moment to register before publishing.
fn observe(
    server: &Server,
    p: &Publisher,
    channel: &str,
    secs: u64,
) -> tokio::task::JoinHandle<(bool, String)> {
    let observe_url = url(server, &format!("channels/{channel}/messages"));
    let (id, key) = (p.device.clone(), psk(p).to_owned());
    tokio::spawn(async move {
        let s = secs.to_string();
        coap_client(
            &["-m", "get", "-s", &s, "-u", &id, "-k", &key, &observe_url],
            secs + 2,
        )
        .await
    })
}

#[tokio::test]
async fn coap_client_publishes_and_observes_over_dtls_with_a_psk() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "meters", "payload_policy": "json"}),
        )
        .await;
    let meter = device(&admin, &channel, "meter", true, true).await;
    let key_id = &meter.key["moat_dk_".len().."moat_dk_".len() + 32];

    // POST with the device id as the identity, and with the key's id.
    let path = format!("channels/{channel}/messages/room1");
    for identity in [meter.device.as_str(), key_id] {
        let (ok, out) = coap_client(
            &[
                "-m",
                "post",
                "-u",
                identity,
                "-k",
                psk(&meter),
                "-t",
                "50",
                "-e",
                r#"{"temp":21.5}"#,
                &url(&server, &path),
            ],
            5,
        )
        .await;
        assert!(ok && !out.contains("4."), "{identity}: {out}");
    }
    // A body in Block1 pieces of 256 bytes.
    let dir = tempfile::tempdir().unwrap();
    let big = json!({ "blob": "x".repeat(3000) }).to_string();
    let file = dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let (ok, out) = coap_client(
        &[
            "-m",
            "post",
            "-u",
            &meter.device,
            "-k",
            psk(&meter),
            "-t",
            "50",
            "-b",
            "256",
            "-f",
            file.to_str().unwrap(),
            &url(&server, &format!("channels/{channel}/messages/big")),
        ],
        5,
    )
    .await;
    assert!(ok && !out.contains("4."), "{out}");
    let stored = all_messages(&admin, &channel).await;
    let coap: Vec<_> = stored.iter().filter(|m| m["protocol"] == "coap").collect();
    assert_eq!(coap.len(), 3, "{stored:?}");
    assert_eq!(coap[0]["subtopic"], "room1");
    assert_eq!(coap[0]["payload"], json!({"temp": 21.5}));
    assert_eq!(coap[2]["payload"].to_string(), big);

    // Observe for 6 s while HTTP publishes a small and a large message.
    let observer = observe(&server, &meter, &channel, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writer = Api::device(&server, &meter.key);
    for body in [json!({"n": 1}), json!({"large": "y".repeat(2500)})] {
        let r = writer
            .post(&format!("/channels/{channel}/messages/live"), body)
            .await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let (_, heard) = observer.await.unwrap();
    assert!(heard.contains(r#"{"n":1}"#), "{heard}");
    // The large one arrived whole: the first block in the notification, the
    // rest fetched with Block2.
    assert!(
        heard.contains(&format!(r#"{{"large":"{}"}}"#, "y".repeat(2500))),
        "{heard}"
    );

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("moat_coap_notifications_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"moat_coap_requests_total{method="POST",code="2.31"}"#));
}

#[tokio::test]
async fn coap_refusals_carry_4xx_codes_and_change_nothing() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "small", "payload_policy": "json", "max_payload": 64}),
        )
        .await;
    let other = admin.create("/channels", json!({"name": "other"})).await;
    let reader = device(&admin, &channel, "reader", false, true).await;
    let writer = device(&admin, &channel, "writer", true, false).await;
    let post = |who: &Publisher, path: String, cf: &'static str, body: String| {
        let (id, key) = (who.device.clone(), psk(who).to_owned());
        let u = url(&server, &path);
        async move {
            coap_client(
                &[
                    "-m", "post", "-u", &id, "-k", &key, "-t", cf, "-e", &body, &u,
                ],
                5,
            )
            .await
        }
    };
    let messages = format!("channels/{channel}/messages");
    let cases = [
        (
            post(&reader, messages.clone(), "50", "{}".into()).await,
            "4.03",
        ),
        (
            post(
                &writer,
                format!("channels/{other}/messages"),
                "50",
                "{}".into(),
            )
            .await,
            "4.03",
        ),
        (
            post(
                &writer,
                format!("channels/{}/messages", uuid_v4()),
                "50",
                "{}".into(),
            )
            .await,
            "4.04",
        ),
        (
            post(&writer, "nothing/here".into(), "50", "{}".into()).await,
            "4.04",
        ),
        (
            post(&writer, messages.clone(), "42", "{}".into()).await,
            "4.15",
        ),
        (
            post(&writer, messages.clone(), "50", "not json".into()).await,
            "4.00",
        ),
        (
            post(
                &writer,
                messages.clone(),
                "50",
                json!({"x": "z".repeat(100)}).to_string(),
            )
            .await,
            "4.13",
        ),
    ];
    for ((_, out), code) in &cases {
        assert!(out.contains(code), "want {code}: {out}");
    }
    let (_, out) = coap_client(
        &[
            "-m",
            "put",
            "-u",
            &writer.device,
            "-k",
            psk(&writer),
            "-e",
            "{}",
            &url(&server, &messages),
        ],
        5,
    )
    .await;
    assert!(out.contains("4.05"), "{out}");
    // A wrong key: no handshake, nothing stored.
    let (ok, out) = coap_client(
        &[
            "-m",
            "post",
            "-u",
            &writer.device,
            "-k",
            "0123456789abcdef0123456789abcdef",
            "-t",
            "50",
            "-e",
            "{}",
            &url(&server, &messages),
        ],
        3,
    )
    .await;
    assert!(!ok || !out.contains("2.04"), "{out}");
    assert!(all_messages(&admin, &channel).await.is_empty());
    assert!(all_messages(&admin, &other).await.is_empty());
    // /.well-known/core lists what the device may use, observable only
    // where it may read.
    let (_, core) = coap_client(
        &[
            "-m",
            "get",
            "-u",
            &reader.device,
            "-k",
            psk(&reader),
            &url(&server, ".well-known/core"),
        ],
        5,
    )
    .await;
    assert!(
        core.contains(&format!("</channels/{channel}/messages>")),
        "{core}"
    );
    assert!(core.contains(";obs") && !core.contains(&other), "{core}");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(r#"moat_coap_requests_total{method="POST",code="4.03"} 2"#),
        "{metrics}"
    );
}

fn uuid_v4() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0xfff,
        u16::from_be_bytes([b[8], b[9]]) & 0xfff,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

#[tokio::test]
async fn aiocoap_over_tinydtls_observes_publishes_and_is_refused_elsewhere() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create("/channels", json!({"name": "py", "payload_policy": "json"}))
        .await;
    let other = admin
        .create(
            "/channels",
            json!({"name": "other", "payload_policy": "json"}),
        )
        .await;
    let meter = device(&admin, &channel, "py-meter", true, true).await;
    // tinydtls takes identities up to 32 bytes: the key's id, not the
    // hyphenated device id.
    let key_id = &meter.key["moat_dk_".len().."moat_dk_".len() + 32];
    let (host, port) = server.coap.rsplit_once(':').unwrap();
    let run = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/coap_aiocoap.py"
        ))
        .args([host, port, key_id, psk(&meter), &channel, &other])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the aiocoap script finished in time")
        .expect("python3 runs (scripts/install-test-deps)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("done"), "{text}");
    let stored = all_messages(&admin, &channel).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["protocol"], "coap");
    assert_eq!(stored[0]["subtopic"], "py");
    assert_eq!(stored[0]["payload"], json!({"aiocoap": true}));
    assert!(all_messages(&admin, &other).await.is_empty());
}

#[tokio::test]
async fn coap_client_with_a_device_certificate() {
    let server = Server::start();
    let admin = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let channel = admin
        .create(
            "/channels",
            json!({"name": "certs", "payload_policy": "opaque"}),
        )
        .await;
    let (dev, _, _) = device_with_cert(&admin, dir.path(), "tag").await;
    connect(&admin, &channel, &dev, true, false).await;
    let cert = dir.path().join("tag.pem");
    let key = dir.path().join("tag.key");
    let (ok, out) = coap_client(
        &[
            "-m",
            "post",
            "-c",
            cert.to_str().unwrap(),
            "-j",
            key.to_str().unwrap(),
            "-C",
            server.ca_path().to_str().unwrap(),
            "-t",
            "42",
            "-e",
            "hello",
            &url(&server, &format!("channels/{channel}/messages")),
        ],
        5,
    )
    .await;
    assert!(ok && !out.contains("4."), "{out}");
    let stored = all_messages(&admin, &channel).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["publisher"], format!("device:{dev}"));
}

/// A ClientHello from OpenSSL in process.
fn client_hello() -> Vec<u8> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let mut b = SslConnector::builder(SslMethod::dtls_client()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_psk_client_callback(|_, _, id, key| {
        id[..5].copy_from_slice(b"test\0");
        key[..4].copy_from_slice(b"test");
        Ok(4)
    });
    let ssl = b
        .build()
        .configure()
        .unwrap()
        .into_ssl("localhost")
        .unwrap();
    let mut stream = openssl::ssl::SslStream::new(ssl, Capture::default()).unwrap();
    let _ = stream.connect();
    stream.get_mut().0.remove(0)
}

#[derive(Default)]
struct Capture(Vec<Vec<u8>>);

impl std::io::Read for Capture {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.push(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_cookie_exchange_never_amplifies_and_strangers_get_nothing() {
    let server = Server::start_with(Options {
        args: vec![
            "--insecure-dev".into(),
            "--plain-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..Options::default()
    });
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let hello = client_hello();
    assert_eq!(
        (hello[0], hello[13]),
        (22, 1),
        "a handshake record with a ClientHello"
    );
    socket.send_to(&hello, &server.coap).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = socket.recv_from(&mut buf).expect("a HelloVerifyRequest");
    assert_eq!(
        (buf[0], buf[13]),
        (22, 3),
        "HelloVerifyRequest: {:?}",
        &buf[..n]
    );
    assert!(
        n <= hello.len(),
        "answered {n} bytes to a {}-byte ClientHello",
        hello.len()
    );
    // Answered without state: no peer task for an address that has not
    // returned the cookie, however many hellos it sends.
    for _ in 0..50 {
        socket.send_to(&hello, &server.coap).unwrap();
    }
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = server.metrics().await;
        if metrics.contains(r#"moat_coap_handshakes_total{outcome="cookie_sent"} 51"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(r#"moat_coap_handshakes_total{outcome="cookie_sent"} 51"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"moat_coap_peers{transport="dtls"} 1"#),
        "{metrics}"
    );
    // Anything but a ClientHello from an address without a session: nothing.
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for junk in [&b"\x17\xfe\xfd\x00\x01junk"[..], b"\x40\x01\x00\x01", b""] {
        stranger.send_to(junk, &server.coap).unwrap();
    }
    assert!(
        stranger.recv_from(&mut buf).is_err(),
        "no answer to a stranger"
    );

    // Plain CoAP (development): malformed datagrams are dropped and
    // counted, and the endpoint still answers a valid request.
    let plain = server
        .coap_plain
        .clone()
        .expect("plain CoAP with --insecure-dev");
    for junk in [
        &b"\x80\x01\x00\x01"[..],
        b"\x4f\x01\x00\x01",
        b"\x60\x45\x00\x01",
    ] {
        stranger.send_to(junk, &plain).unwrap();
    }
    // A confirmable GET of /.well-known/core without credentials: 4.01.
    stranger
        .send_to(b"\x40\x01\x12\x34\xbb.well-known\x04core", &plain)
        .unwrap();
    let (n, _) = stranger.recv_from(&mut buf).expect("an answer");
    assert_eq!(
        (buf[0] >> 4, buf[1], &buf[2..4]),
        (0x6, 0x81, &[0x12, 0x34][..]),
        "{:?}",
        &buf[..n]
    );
    let metrics = server.metrics().await;
    for reason in [
        "version",
        "unparsable",
        "unexpected_code",
        "no_dtls_session",
    ] {
        assert!(
            metrics.contains(&format!(
                r#"moat_coap_malformed_total{{reason="{reason}"}}"#
            )),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn revoking_or_quarantining_a_device_cuts_its_dtls_session() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "rev"})).await;
    let mut devices = Vec::new();
    let mut observers = Vec::new();
    for (name, state) in [("doomed", "revoked"), ("suspect", "quarantined")] {
        let dev = device(&admin, &channel, name, true, true).await;
        observers.push(observe(&server, &dev, &channel, 8));
        devices.push((dev, state));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, (dev, state)) in devices.iter().enumerate() {
        let r = admin
            .patch(
                &format!("/devices/{}", dev.device),
                json!({ "state": state }),
            )
            .await;
        assert!(r.status < 300, "{r:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = server.metrics().await;
        assert!(
            metrics.contains(&format!("moat_coap_sessions_cut_total {}", n + 1)),
            "{state}: {metrics}"
        );
    }
    for o in observers {
        let _ = o.await;
    }
    // And the key no longer opens a session.
    for (dev, state) in &devices {
        let (_, out) = coap_client(
            &[
                "-m",
                "post",
                "-u",
                &dev.device,
                "-k",
                psk(dev),
                "-e",
                "{}",
                &url(&server, &format!("channels/{channel}/messages")),
            ],
            3,
        )
        .await;
        assert!(!out.contains("2.04"), "{state}: {out}");
    }
    assert!(all_messages(&admin, &channel).await.is_empty());
}

#[tokio::test]
async fn a_coap_publish_reaches_mqtt_subscribers() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "bridge", "payload_policy": "json"}),
        )
        .await;
    let meter = device(&admin, &channel, "coap-meter", true, false).await;
    let listener = device(&admin, &channel, "mqtt-listener", false, true).await;
    let (client, mut events) = rumqttc::v5::AsyncClient::new(
        v5_with_key(&server, "listener", &listener.device, &listener.key),
        16,
    );
    client
        .subscribe(
            format!("channels/{channel}/messages/#"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    loop {
        match next_v5(&mut events, 10).await.expect("suback") {
            rumqttc::v5::mqttbytes::v5::Packet::SubAck(a) => {
                assert_eq!(
                    a.return_codes,
                    vec![rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                    )]
                );
                break;
            }
            _ => continue,
        }
    }
    let (ok, out) = coap_client(
        &[
            "-m",
            "post",
            "-u",
            &meter.device,
            "-k",
            psk(&meter),
            "-t",
            "50",
            "-e",
            r#"{"kwh":7}"#,
            &url(&server, &format!("channels/{channel}/messages/floor2")),
        ],
        5,
    )
    .await;
    assert!(ok && !out.contains("4."), "{out}");
    loop {
        match next_v5(&mut events, 10).await.expect("the CoAP message") {
            rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => {
                assert_eq!(
                    &p.topic[..],
                    format!("channels/{channel}/messages/floor2").as_bytes()
                );
                assert_eq!(&p.payload[..], br#"{"kwh":7}"#);
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_coap_observer_hears_mqtt_publishes() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "from-mqtt", "payload_policy": "opaque"}),
        )
        .await;
    let watcher = device(&admin, &channel, "coap-watcher", false, true).await;
    let talker = device(&admin, &channel, "mqtt-talker", true, false).await;
    let observer = observe(&server, &watcher, &channel, 5);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (client, mut events) = rumqttc::v5::AsyncClient::new(
        v5_with_key(&server, "talker", &talker.device, &talker.key),
        16,
    );
    client
        .publish(
            format!("channels/{channel}/messages/mqtt"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "heard-over-mqtt",
        )
        .await
        .unwrap();
    loop {
        match next_v5(&mut events, 10).await.expect("puback") {
            rumqttc::v5::mqttbytes::v5::Packet::PubAck(a) => {
                assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
                break;
            }
            _ => continue,
        }
    }
    let (_, out) = observer.await.unwrap();
    assert!(out.contains("heard-over-mqtt"), "{out}");
}

#[tokio::test]
async fn losing_the_subscribe_right_ends_an_observation_with_4_03() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create(
            "/channels",
            json!({"name": "watch", "payload_policy": "opaque"}),
        )
        .await;
    let watcher = device(&admin, &channel, "watcher", true, true).await;
    let talker = device(&admin, &channel, "talker", true, false).await;
    let observer = observe(&server, &watcher, &channel, 6);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let auth = format!("Device {}", talker.key);
    let r = common::messages::publish(&server, &auth, &channel, "", "", "before").await;
    assert!(r.status < 300, "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Publish only, from now on.
    connect(&admin, &channel, &watcher.device, true, false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = common::messages::publish(&server, &auth, &channel, "", "", "after").await;
    assert!(r.status < 300, "{r:?}");
    let (_, out) = observer.await.unwrap();
    assert!(out.contains("before"), "{out}");
    assert!(out.contains("4.03"), "{out}");
    assert!(!out.contains("after"), "{out}");
}
