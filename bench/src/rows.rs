//! The messages the ceiling writes: copies of what the ingest load stored,
//! one template per publisher, so that raw SQL inserts the same rows
//! (names, units, values, publisher, payload) the server did.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use moat_core::authz::Subject;
use moat_core::message::{ContentType, Message, MessageQuery, MessageStore, Protocol};
use moat_core::senml::{self, Record};
use moat_core::{ChannelId, DeviceId, MessageId, TenantId};
use moat_store::SqliteMessageStore;

/// Messages of each channel read to find the publishers' templates.
const TEMPLATE_SCAN: u32 = 4096;

/// One publisher's message, as every copy of it repeats.
pub(crate) struct Template {
    pub(crate) tenant: TenantId,
    pub(crate) channel: ChannelId,
    pub(crate) subtopic: String,
    pub(crate) publisher: Subject,
    pub(crate) payload: Vec<u8>,
    /// Its SenML records, resolved at time zero; a copy takes its receive
    /// time, as records without `t` do.
    pub(crate) records: Vec<Record>,
}

impl Template {
    fn new(
        tenant: TenantId,
        channel: ChannelId,
        subtopic: String,
        publisher: Subject,
        payload: Vec<u8>,
    ) -> anyhow::Result<Self> {
        let records = senml::records_from_json(&payload, 0.0).context("a stored SenML payload")?;
        Ok(Self {
            tenant,
            channel,
            subtopic,
            publisher,
            payload,
            records,
        })
    }

    /// A copy received at `received_at` (µs), with a fresh id.
    pub(crate) fn message(&self, received_at: i64) -> Message {
        let seconds = received_at as f64 / 1e6;
        Message {
            id: MessageId::new(),
            tenant_id: self.tenant,
            channel_id: self.channel,
            subtopic: self.subtopic.clone(),
            publisher: self.publisher,
            protocol: Protocol::Http,
            content_type: ContentType::SenmlJson,
            payload: self.payload.clone(),
            received_at,
            records: self
                .records
                .iter()
                .map(|r| Record {
                    time: r.time + seconds,
                    ..r.clone()
                })
                .collect(),
        }
    }
}

/// The body device `i` publishes: `bench/senml.lua` builds the same.
pub(crate) fn ingest_body(i: usize) -> String {
    format!(
        r#"[{{"bn":"dev{i}/","n":"temp","u":"Cel","v":21.5}},{{"n":"hum","u":"%RH","v":40}},{{"n":"pres","u":"hPa","v":1013}}]"#
    )
}

/// One template per publisher among the first messages of the file's
/// channels, read through the store; empty when it holds none.
pub(crate) async fn from_store(store: &SqliteMessageStore) -> anyhow::Result<Vec<Template>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for channel in store.stored_channels().await? {
        let q = MessageQuery {
            channel,
            limit: TEMPLATE_SCAN,
            ..MessageQuery::default()
        };
        for s in store.messages(&q).await? {
            let m = s.message;
            if !seen.insert(m.publisher.to_string()) {
                continue;
            }
            out.push(Template::new(
                m.tenant_id,
                m.channel_id,
                m.subtopic,
                m.publisher,
                m.payload,
            )?);
        }
    }
    // Device order, as the load cycled through them.
    out.sort_by(|a, b| a.payload.cmp(&b.payload));
    Ok(out)
}

/// `publishers` made-up devices of one made-up channel, for a file the
/// ingest load did not write.
pub(crate) fn synthetic(publishers: usize) -> anyhow::Result<Vec<Template>> {
    let (tenant, channel) = (TenantId::new(), ChannelId::new());
    (0..publishers)
        .map(|i| {
            Template::new(
                tenant,
                channel,
                String::new(),
                Subject::Device(DeviceId::new()),
                ingest_body(i).into_bytes(),
            )
        })
        .collect()
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
