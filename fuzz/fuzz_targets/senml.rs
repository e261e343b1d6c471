//! Arbitrary bytes into every SenML decoder: none may panic, and whatever
//! they accept must hold the invariants the pipeline relies on.

#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_core::senml::{self, MAX_NAME_LEN, MAX_RECORDS, Record, Value};

const NOW: f64 = 1_700_000_000.0;

fn check(records: &[Record]) {
    assert!(!records.is_empty() && records.len() <= MAX_RECORDS);
    for r in records {
        assert!(!r.name.is_empty() && r.name.len() <= MAX_NAME_LEN);
        assert!(r.name.as_bytes()[0].is_ascii_alphanumeric());
        assert!(r.time.is_finite());
        assert!(r.value.is_some() || r.sum.is_some());
        if let Some(Value::Number(v)) = r.value {
            assert!(v.is_finite());
        }
        assert!(r.sum.is_none_or(f64::is_finite));
        assert!(r.update_time.is_none_or(f64::is_finite));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = senml::records_from_json(data, NOW) {
        check(&records);
    }
    if let Ok(records) = senml::records_from_cbor(data, NOW) {
        check(&records);
    }
    if let Ok(records) = senml::records_from_json_object(data, NOW) {
        check(&records);
    }
});
