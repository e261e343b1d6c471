//! What the clients count, merged for the report.

use super::*;

/// What a client counted.
#[derive(Default)]
pub(super) struct Tally {
    /// Answers (or notifications) by code; "4.04", "2.04"…; resets as "reset".
    pub(super) codes: BTreeMap<String, u64>,
    /// Of successful answers: from the first transmission to the answer.
    pub(super) latencies_us: Vec<u32>,
    pub(super) lost: u64,
    pub(super) retransmits: u64,
    /// Confirmable notifications acknowledged.
    pub(super) confirmable: u64,
}

impl Tally {
    pub(super) fn add(&mut self, outcome: &Outcome, sent: Instant) {
        match outcome {
            Outcome::Answer {
                packet,
                retransmits,
            } => {
                self.retransmits += u64::from(*retransmits);
                let code = if packet.header.get_type() == MessageType::Reset {
                    "reset".to_owned()
                } else {
                    packet.header.code.to_string()
                };
                if is_success(&packet.header.code) {
                    self.latencies_us.push(micros(sent.elapsed()));
                }
                *self.codes.entry(code).or_default() += 1;
            }
            Outcome::Lost { retransmits } => {
                self.retransmits += u64::from(*retransmits);
                self.lost += 1;
            }
            Outcome::Unfinished => {}
        }
    }

    pub(super) fn merge(&mut self, o: Tally) {
        for (code, n) in o.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.latencies_us.extend(o.latencies_us);
        self.lost += o.lost;
        self.retransmits += o.retransmits;
        self.confirmable += o.confirmable;
    }

    pub(super) fn ok(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| c.starts_with("2."))
            .map(|(_, n)| n)
            .sum()
    }

    pub(super) fn answered(&self) -> u64 {
        self.codes.values().sum()
    }

    pub(super) fn percentile(&mut self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[i]
    }

    /// `2.04:1234,4.03:2`, or `none`.
    pub(super) fn codes_text(&self) -> String {
        if self.codes.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self.codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
        parts.join(",")
    }
}
