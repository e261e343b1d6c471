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
//! identifiers with rumqttc). A test that fails gets one more run (see
//! below why some of the suite's tests race on a loaded machine).

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
    let run = |tests: &[&str]| {
        let out = Command::new(&python)
            .current_dir(&suite)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-rA"])
            .args(tests)
            .args(["-k", "not ssl and not assigned_clientid"])
            // With TOKEN set the suite connects to a public broker instead.
            .env_remove("TOKEN")
            .env("HOST", host)
            .env("PORT", port)
            .env("USERNAME", "")
            .output()
            .expect("the suite's python runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let lines_with = |stdout: &str, prefix: &str| -> Vec<String> {
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split(' ').next().unwrap_or(rest).to_owned())
            .collect()
    };
    let (ok, stdout, stderr) = run(&["tests/test_mqtt5.py"]);
    let mut passed = lines_with(&stdout, "PASSED ").len();
    if !ok {
        // Some of the suite's tests publish right after a SUBSCRIBE they do
        // not wait the SUBACK of (test_shared_subscriptions, at QoS 0).
        // A broker that serves connections on several threads does not
        // promise to take one connection's packet before another's sent a
        // moment later, and on a loaded machine it now and then does not:
        // the subscriber misses the first messages. Each failed test gets
        // one more run (a test whose setup failed too); a second failure is
        // a failure.
        let mut failed = lines_with(&stdout, "FAILED ");
        failed.extend(lines_with(&stdout, "ERROR "));
        assert!(
            !failed.is_empty(),
            "gmqtt's suite did not run:\n{stdout}\n{stderr}"
        );
        eprintln!("gmqtt tests failed once, run again: {failed:?}\n{stdout}");
        let again: Vec<&str> = failed.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = run(&again);
        assert!(ok, "gmqtt's suite failed twice:\n{stdout}\n{stderr}");
        passed += lines_with(&stdout, "PASSED ").len();
    }
    assert_eq!(passed, EXPECTED_PASSES, "{stdout}");
}
