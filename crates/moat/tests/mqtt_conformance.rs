//! A third-party MQTT test suite, unchanged, against the broker in its
//! development mode (`--insecure-dev --mqtt-open-topics`: anonymous
//! clients, arbitrary topics, plain TCP).
//!
//! The suite is gmqtt's `tests/test_mqtt5.py` (a port of Eclipse Paho's
//! interoperability tests: QoS 0/1/2, retained messages, wills, shared
//! subscriptions, no-local, retain handling, request/response, redelivery
//! on reconnect, overlapping subscriptions; one test over MQTT 3.1.1, the
//! rest over 5), which scripts/install-test-deps unpacks from gmqtt's
//! PyPI source archive into `.test-deps/`. Two of its tests are left out:
//! `basic_ssl` wants TLS on the fixed port 8883, and `assigned_clientid`
//! cannot pass against any broker (gmqtt replaces an empty client id with
//! a random one before connecting; tests/mqtt.rs checks assigned client
//! identifiers with rumqttc).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Options, Server};

/// The tests the suite has and this run expects to pass.
const EXPECTED_PASSES: usize = 14;

fn deps() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.test-deps"))
}

#[test]
fn gmqtt_mqtt5_suite_passes_against_the_open_topics_mode() {
    let suite = deps().join("gmqtt-0.8.0");
    let python = deps().join("venv/bin/python");
    assert!(
        suite.join("tests/test_mqtt5.py").is_file() && python.is_file(),
        "gmqtt's test suite is missing from {}: run scripts/install-test-deps",
        deps().display()
    );
    let server = Server::start_with(Options {
        args: vec![
            "--insecure-dev".into(),
            "--plain-listen".into(),
            "127.0.0.1:0".into(),
            "--mqtt-open-topics".into(),
        ],
        ..Options::default()
    });
    let plain = server.mqtt_plain.clone().expect("plain MQTT");
    let (host, port) = plain.rsplit_once(':').unwrap();
    let out = Command::new(python)
        .current_dir(&suite)
        .args([
            "-m",
            "pytest",
            "tests/test_mqtt5.py",
            "-p",
            "no:cacheprovider",
        ])
        .args(["-k", "not ssl and not assigned_clientid", "-rA"])
        // With TOKEN set the suite connects to a public broker instead.
        .env_remove("TOKEN")
        .env("HOST", host)
        .env("PORT", port)
        .env("USERNAME", "")
        .output()
        .expect("the suite's python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gmqtt's suite failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = stdout.lines().filter(|l| l.starts_with("PASSED ")).count();
    assert_eq!(passed, EXPECTED_PASSES, "{stdout}");
}
