//! A bounded, seeded fuzz run: random and mutated byte strings through every
//! layer, counting panics. It is a smoke test for the evaluation, not a
//! substitute for the cargo-fuzz target the broker's packet path gets (ADR
//! 005): the count and the seed are fixed so the run is repeatable, and a
//! time cap stops it early on a slow machine (the report says how many cases
//! ran).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::fixtures;
use crate::layers::{self, Layer, Setup, Verdict, Version};
use crate::probes;

/// splitmix64: small, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// The seed inputs mutations start from: every fixture and every probe
/// stream.
fn corpus() -> Vec<(Version, Vec<u8>)> {
    let mut c = vec![
        (Version::V311, fixtures::publish_v311()),
        (Version::V5, fixtures::publish_v5()),
        (Version::V5, fixtures::connect_v5()),
        (Version::V311, fixtures::connect_v311_minimal()),
        (Version::V311, fixtures::subscribe_v311()),
        (Version::V5, fixtures::subscribe_v5()),
    ];
    c.extend(
        probes::all()
            .into_iter()
            .map(|p| (p.setup.version, p.stream)),
    );
    c
}

/// One fuzz input: a session set-up and a byte stream.
pub fn generate(rng: &mut Rng, corpus: &[(Version, Vec<u8>)]) -> (Setup, Vec<u8>) {
    let (version, mut bytes) = corpus[rng.below(corpus.len())].clone();
    match rng.below(8) {
        // Pure noise, with a plausible first byte half the time.
        0 => {
            let len = rng.below(48);
            bytes = (0..len).map(|_| rng.byte()).collect();
            if rng.below(2) == 0 && !bytes.is_empty() {
                bytes[0] = (rng.below(16) as u8) << 4 | (rng.byte() & 0x0f);
            }
        }
        // A stack of small mutations.
        _ => {
            for _ in 0..1 + rng.below(4) {
                mutate(rng, &mut bytes);
            }
        }
    }
    let mut setup = if rng.below(3) == 0 {
        Setup::connecting(version)
    } else {
        Setup::session(version)
    };
    // Moat always sets a maximum packet size; half the inputs run with one.
    if rng.below(2) == 0 {
        setup.max_packet_size = Some(1 << 20);
    }
    (setup, bytes)
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    if bytes.is_empty() {
        bytes.push(rng.byte());
        return;
    }
    let i = rng.below(bytes.len());
    match rng.below(7) {
        0 => bytes[i] ^= 1 << rng.below(8),
        1 => bytes[i] = rng.byte(),
        2 => bytes.insert(i, rng.byte()),
        3 => {
            bytes.remove(i);
        }
        4 => bytes.truncate(i),
        // Interesting values where lengths and flags live.
        5 => bytes[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x3f, 0xc0][rng.below(7)],
        _ => {
            // Duplicate a slice (repeats properties, filters, packets).
            let j = i + rng.below(bytes.len() - i);
            let slice = bytes[i..=j.min(bytes.len() - 1)].to_vec();
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, slice);
        }
    }
}

/// What one layer did over the whole run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub cases: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub incomplete: u64,
    pub panics: u64,
    /// Panics by site ("message at file:line"): how many, and the first
    /// input (version and hex) that reached it.
    pub panic_sites: BTreeMap<String, (u64, String)>,
    pub elapsed: Duration,
}

/// Runs up to `cases` inputs (seeded with `seed`) through `layer`, stopping
/// early after `time_cap`.
pub fn run(layer: Layer, seed: u64, cases: u64, time_cap: Duration) -> Tally {
    let corpus = corpus();
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let start = Instant::now();
    for _ in 0..cases {
        if start.elapsed() > time_cap {
            break;
        }
        let (setup, bytes) = generate(&mut rng, &corpus);
        tally.cases += 1;
        match layers::run(layer, &setup, &bytes) {
            Verdict::Accepted(_) => tally.accepted += 1,
            Verdict::Rejected(_) => tally.rejected += 1,
            Verdict::Incomplete => tally.incomplete += 1,
            Verdict::Panicked(msg) => {
                tally.panics += 1;
                let location = layers::last_panic_location().unwrap_or_default();
                // Registry paths differ between machines; keep the crate part.
                let location = location
                    .rsplit_once("/src/index.crates.io-")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map_or(location.clone(), |(_, path)| path.to_owned());
                let site = tally
                    .panic_sites
                    .entry(format!("{msg} at {location}"))
                    .or_insert_with(|| (0, format!("{:?} {}", setup.version, hex(&bytes))));
                site.0 += 1;
            }
        }
    }
    tally.elapsed = start.elapsed();
    tally
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
