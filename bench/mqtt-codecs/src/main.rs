//! Prints every table of ADR 005 as Markdown: decode and encode throughput,
//! round trips, conformance probes, the server-role checks and the fuzz run.
//!
//! ```sh
//! cd bench/mqtt-codecs
//! CARGO_TARGET_DIR=/tmp/mqtt-codecs-target cargo run --release
//! ```
//!
//! `--quick` runs every section with tiny budgets (a smoke test, not a
//! measurement); `--fuzz-cases N` changes the fuzz run's input count (each
//! layer still stops after 120 s).

use std::time::Duration;

use mqtt_codecs::layers::{Layer, Verdict, Version};
use mqtt_codecs::probes::{self, Score};
use mqtt_codecs::speed::{self, Budget, Measure};
use mqtt_codecs::{fuzz, server_role};

const FUZZ_SEED: u64 = 0x6d6f_6174; // "moat"

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (budget, mut fuzz_cases) = if quick {
        (Budget::SMOKE, 2_000)
    } else {
        (Budget::DEFAULT, 200_000)
    };
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--fuzz-cases") {
        fuzz_cases = args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--fuzz-cases takes a number");
    }

    println!("# MQTT protocol crates: mqtt-protocol-core 0.7.9 vs rmqtt-codec 0.3.1\n");
    println!(
        "{} packets per round, median of {} rounds, {} logical CPUs{}.\n",
        budget.packets,
        budget.rounds,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick {
            " (--quick: not a measurement)"
        } else {
            ""
        }
    );

    decode_table(budget);
    server_path_table(budget);
    encode_table(budget);
    round_trip_table();
    probe_table();
    server_role_table();
    fuzz_table(fuzz_cases);
}

fn rate(m: &Measure) -> String {
    format!(
        "{:.2} M/s, {:.0} MB/s",
        m.packets_per_sec / 1e6,
        m.mb_per_sec
    )
}

fn decode_table(budget: Budget) {
    println!("## Decode throughput\n");
    println!("| packet | bytes | mqtt-protocol-core | rmqtt-codec | rmqtt ÷ mpc |");
    println!("|---|---:|---:|---:|---:|");
    for case in speed::decode_cases() {
        let mpc = speed::decode_mpc(&case, budget);
        let rmqtt = speed::decode_rmqtt(&case, budget);
        println!(
            "| {} | {} | {} ({:.0} ns) | {} ({:.0} ns) | {:.2} |",
            case.name,
            case.bytes.len(),
            rate(&mpc),
            mpc.ns_per_packet,
            rate(&rmqtt),
            rmqtt.ns_per_packet,
            rmqtt.packets_per_sec / mpc.packets_per_sec
        );
    }
    println!();
}

fn server_path_table(budget: Budget) {
    println!("## mqtt-protocol-core server Connection: PUBLISH in, PUBACK out\n");
    println!("| packet | per second | ns per packet |");
    println!("|---|---:|---:|");
    for (name, version) in [
        ("PUBLISH QoS 1, v3.1.1", Version::V311),
        ("PUBLISH QoS 1, v5 + 2 props", Version::V5),
    ] {
        let m = speed::publish_through_mpc_server(version, budget);
        println!(
            "| {name} | {:.2} M | {:.0} |",
            m.packets_per_sec / 1e6,
            m.ns_per_packet
        );
    }
    println!();
}

fn encode_table(budget: Budget) {
    println!("## Encode throughput (clone a decoded PUBLISH, serialize into a reused buffer)\n");
    println!(
        "| packet | mqtt-protocol-core | rmqtt-codec | rmqtt ÷ mpc | mqtt-protocol-core without the clone |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, version) in [
        ("PUBLISH QoS 1, v3.1.1", Version::V311),
        ("PUBLISH QoS 1, v5 + 2 props", Version::V5),
    ] {
        let mpc = speed::encode_mpc(version, budget);
        let rmqtt = speed::encode_rmqtt(version, budget);
        let by_ref = speed::encode_mpc_no_clone(version, budget);
        println!(
            "| {name} | {} ({:.0} ns) | {} ({:.0} ns) | {:.2} | {} ({:.0} ns) |",
            rate(&mpc),
            mpc.ns_per_packet,
            rate(&rmqtt),
            rmqtt.ns_per_packet,
            rmqtt.packets_per_sec / mpc.packets_per_sec,
            rate(&by_ref),
            by_ref.ns_per_packet
        );
    }
    println!();
}

fn round_trip_table() {
    println!("## encode∘decode: same bytes back / same packet back\n");
    println!("| fixture | mqtt-protocol-core | rmqtt-codec |");
    println!("|---|---|---|");
    let yes = |b: bool| if b { "yes" } else { "no" };
    for r in speed::round_trips() {
        println!(
            "| {} | {} / {} | {} / {} |",
            r.name,
            yes(r.mpc_bytes),
            yes(r.mpc_packet),
            yes(r.rmqtt_bytes),
            yes(r.rmqtt_packet)
        );
    }
    println!();
}

fn cell(verdict: &Verdict, score: Score) -> String {
    let what = match verdict {
        Verdict::Accepted(_) => "accepts".to_owned(),
        Verdict::Rejected(e) => format!("rejects: {e}"),
        Verdict::Incomplete => "waits for more bytes".to_owned(),
        Verdict::Panicked(m) => format!("panics: {m}"),
    };
    format!("{} {what}", score.mark())
}

fn probe_table() {
    println!("## Conformance probes\n");
    println!(
        "ok = as the specification requires; WRONG = not; n/a = a session rule left to the broker by a layer without session state; — = either is allowed.\n"
    );
    println!(
        "| probe | rule | expected | {} | {} | {} |",
        Layer::MpcParse.label(),
        Layer::MpcServer.label(),
        Layer::Rmqtt.label()
    );
    println!("|---|---|---|---|---|---|");
    let rows = probes::run_all();
    let mut totals = [[0usize; 5]; 3];
    for row in &rows {
        let cells: Vec<String> = row
            .results
            .iter()
            .enumerate()
            .map(|(i, (_, v, s))| {
                let k = match s {
                    Score::Correct => 0,
                    Score::Wrong => 1,
                    Score::NotApplicable => 2,
                    Score::Recorded => 3,
                    Score::Panicked => 4,
                };
                totals[i][k] += 1;
                cell(v, *s)
            })
            .collect();
        println!(
            "| {} | {} | {:?} | {} |",
            row.title,
            row.rule,
            row.expect,
            cells.join(" | ")
        );
    }
    println!();
    println!("| layer | ok | WRONG | n/a | recorded | panics |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, layer) in Layer::ALL.iter().enumerate() {
        let t = totals[i];
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            layer.label(),
            t[0],
            t[1],
            t[2],
            t[3],
            t[4]
        );
    }
    println!();
}

fn server_role_table() {
    println!("## mqtt-protocol-core server role, driven through its API\n");
    println!("| capability | result | what the connection did |");
    println!("|---|---|---|");
    for c in server_role::checks() {
        println!(
            "| {} | {} | {} |",
            c.capability,
            if c.passed { "yes" } else { "NO" },
            c.observed.replace('|', "\\|")
        );
    }
    println!();
}

fn fuzz_table(cases: u64) {
    println!("## Bounded fuzz run (seed {FUZZ_SEED:#x}, {cases} inputs per layer, 120 s cap)\n");
    println!("| layer | inputs | accepted | rejected | incomplete | panics | time |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut panics = Vec::new();
    for layer in Layer::ALL {
        let t = fuzz::run(layer, FUZZ_SEED, cases, Duration::from_secs(120));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} s |",
            layer.label(),
            t.cases,
            t.accepted,
            t.rejected,
            t.incomplete,
            t.panics,
            t.elapsed.as_secs_f64()
        );
        panics.extend(t.panic_sites.into_iter().map(|(site, (n, input))| {
            format!("{}: {n} × `{site}`; first input: `{input}`", layer.label())
        }));
    }
    println!();
    if !panics.is_empty() {
        println!("Panic sites:\n");
    }
    for p in panics {
        println!("- {p}");
    }
}
