//! The evaluation's findings, pinned: every probe's score on every layer, the
//! server-role checks, the round trips, and a bounded fuzz run with no panic.
//! A new release of either crate that changes any of them fails here, and
//! ADR 005's tables must be regenerated (`cargo run --release`).

use std::time::Duration;

use mqtt_codecs::layers::{Layer, Verdict};
use mqtt_codecs::probes::{self, Score};
use mqtt_codecs::speed::{self, Budget};
use mqtt_codecs::{fuzz, server_role};

use Score::{Correct, NotApplicable, Panicked, Recorded, Wrong};

/// Per probe: mqtt-protocol-core parser, mqtt-protocol-core server
/// Connection, rmqtt-codec — as measured for ADR 005.
const PINNED: &[(&str, [Score; 3])] = &[
    ("len-5-bytes", [Correct, Correct, Correct]),
    ("len-non-minimal", [Wrong, Wrong, Wrong]),
    ("pingreq-trailing", [Correct, Correct, Wrong]),
    ("type-0", [Correct, Correct, Correct]),
    ("auth-on-v311", [Correct, Correct, Correct]),
    ("truncated-packet-id", [Correct, Correct, Correct]),
    ("topic-len-overrun", [Correct, Correct, Correct]),
    ("topic-plus", [Wrong, Wrong, Wrong]),
    ("topic-hash", [Wrong, Wrong, Wrong]),
    ("topic-empty-v311", [Wrong, Wrong, Correct]),
    ("topic-empty-no-alias", [Wrong, Correct, Wrong]),
    ("topic-bad-utf8", [Correct, Correct, Correct]),
    ("topic-surrogate", [Correct, Correct, Correct]),
    ("topic-nul", [Wrong, Wrong, Wrong]),
    ("qos-3", [Correct, Correct, Correct]),
    ("qos0-dup", [Wrong, Wrong, Wrong]),
    ("packet-id-0", [Wrong, Wrong, Correct]),
    ("subscribe-flags-0000", [Wrong, Wrong, Correct]),
    ("subscribe-flags-0011", [Wrong, Wrong, Correct]),
    ("subscribe-empty", [Correct, Correct, Correct]),
    ("subscribe-qos-reserved", [Correct, Correct, Wrong]),
    ("subopts-reserved", [Correct, Correct, Correct]),
    ("subopts-retain-handling-3", [Correct, Correct, Correct]),
    ("filter-bad-hash", [Wrong, Wrong, Wrong]),
    ("sub-id-0", [Correct, Correct, Correct]),
    ("connect-mqisdp", [Recorded, Recorded, Recorded]),
    ("connect-level-3", [Correct, Correct, Wrong]),
    ("connect-reserved-flag", [Wrong, Wrong, Correct]),
    ("connect-will-qos-no-will", [Wrong, Wrong, Correct]),
    ("connect-password-no-user", [Correct, Correct, Wrong]),
    ("connect-will-qos-3", [Wrong, Wrong, Correct]),
    // A valid CONNECT that panics the server connection: found by the long
    // fuzz run (TopicAliasSend::new(0) asserts 1 <= 0).
    ("connect-topic-alias-max-0", [Correct, Panicked, Correct]),
    ("connect-receive-max-0", [Correct, Correct, Correct]),
    ("connect-max-packet-size-0", [Correct, Correct, Correct]),
    ("connect-twice", [NotApplicable, Correct, NotApplicable]),
    ("publish-before-connect", [NotApplicable, Correct, Correct]),
    ("prop-duplicate", [Correct, Correct, Correct]),
    ("prop-not-allowed-publish", [Correct, Correct, Correct]),
    ("prop-not-allowed-connect", [Correct, Correct, Correct]),
    ("prop-unknown-id", [Correct, Correct, Correct]),
    ("pfi-value-2", [Correct, Correct, Correct]),
    ("pfi-utf8-bad-payload", [Recorded, Recorded, Recorded]),
    ("sub-id-from-client", [NotApplicable, Wrong, NotApplicable]),
    ("user-props", [Correct, Correct, Correct]),
    ("max-size-over", [Correct, Correct, Correct]),
    ("max-size-boundary", [Correct, Correct, Wrong]),
    ("receive-maximum", [NotApplicable, Correct, NotApplicable]),
    ("alias-use", [NotApplicable, Correct, NotApplicable]),
    ("alias-0", [Correct, Correct, Correct]),
    ("alias-over-max", [NotApplicable, Correct, NotApplicable]),
    ("alias-unknown", [NotApplicable, Correct, NotApplicable]),
];

/// The one panic site known in mqtt-protocol-core 0.7.9: a server
/// connection receiving a v5 CONNECT with Topic Alias Maximum 0.
const KNOWN_PANIC_SITE: &str = "assertion failed: lowest <= highest at mqtt-protocol-core-0.7.9/src/mqtt/common/value_allocator.rs:91";

#[test]
fn only_the_known_probe_panics() {
    for probe in probes::all() {
        for layer in Layer::ALL {
            let verdict = probes::run(&probe, layer);
            let known = probe.id == "connect-topic-alias-max-0" && layer == Layer::MpcServer;
            assert_eq!(
                matches!(verdict, Verdict::Panicked(_)),
                known,
                "{} on {}: {verdict:?}",
                layer.label(),
                probe.id
            );
        }
    }
}

#[test]
fn probe_scores_are_the_ones_adr_005_records() {
    let rows = probes::run_all();
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        PINNED.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        "probe list changed: update PINNED and ADR 005"
    );
    let mut changed = Vec::new();
    for (row, (_, pinned)) in rows.iter().zip(PINNED) {
        for ((layer, verdict, score), want) in row.results.iter().zip(pinned) {
            if score != want {
                changed.push(format!(
                    "{} on {}: pinned {want:?}, now {score:?} ({verdict:?})",
                    row.id,
                    layer.label()
                ));
            }
        }
    }
    assert!(
        changed.is_empty(),
        "probe scores changed:\n{}",
        changed.join("\n")
    );
}

#[test]
fn server_role_checks() {
    for check in server_role::checks() {
        // The one gap found: the version-undetermined connection cannot send
        // CONNACK 0x01; the broker writes that packet itself.
        let expected = !check.capability.starts_with("Unsupported protocol level");
        assert_eq!(
            check.passed, expected,
            "{}: {}",
            check.capability, check.observed
        );
    }
}

#[test]
fn round_trips() {
    for r in speed::round_trips() {
        assert!(
            r.mpc_bytes && r.mpc_packet,
            "mqtt-protocol-core: {}",
            r.name
        );
        // rmqtt-codec writes v5 properties in its own order: the bytes may
        // differ, the packet may not.
        assert!(r.rmqtt_packet, "rmqtt-codec: {}", r.name);
    }
}

#[test]
fn bounded_fuzz_finds_only_the_known_panic() {
    for layer in Layer::ALL {
        let tally = fuzz::run(layer, 0x6d6f_6174, 5_000, Duration::from_secs(30));
        assert!(tally.cases > 0);
        let sites: Vec<&String> = tally.panic_sites.keys().collect();
        match layer {
            Layer::MpcServer => assert!(
                sites.iter().all(|s| s.as_str() == KNOWN_PANIC_SITE),
                "new panic site: {sites:?}"
            ),
            _ => assert!(sites.is_empty(), "{}: {sites:?}", layer.label()),
        }
    }
}

#[test]
fn speed_paths_run() {
    let budget = Budget::SMOKE;
    for case in speed::decode_cases() {
        assert!(speed::decode_mpc(&case, budget).packets_per_sec > 0.0);
        assert!(speed::decode_rmqtt(&case, budget).packets_per_sec > 0.0);
    }
    for version in [
        mqtt_codecs::layers::Version::V311,
        mqtt_codecs::layers::Version::V5,
    ] {
        assert!(speed::publish_through_mpc_server(version, budget).packets_per_sec > 0.0);
        assert!(speed::encode_mpc(version, budget).packets_per_sec > 0.0);
        assert!(speed::encode_mpc_no_clone(version, budget).packets_per_sec > 0.0);
        assert!(speed::encode_rmqtt(version, budget).packets_per_sec > 0.0);
    }
}
