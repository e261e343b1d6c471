//! A chunk's body (ADR 008): the messages one commit wrote for one channel,
//! one after the other, each as
//!
//! ```text
//! seq − first_seq  u16
//! id               16 bytes
//! publisher        kind u8 (1 user, 2 API key, 3 device) + 16-byte id
//! protocol         u8 (columns.rs code)
//! content type     u8 (columns.rs code)
//! received_at      i64, µs
//! subtopic         u16 length + UTF-8
//! payload          u32 length + bytes
//! ```
//!
//! all little-endian. The tenant and the channel are the chunk's columns.
//! Bodies come only from this module's encoder, inside the encrypted and
//! authenticated database; the decoder still checks every length, and a
//! body it cannot read is an error, never a panic.

use moat_core::authz::Subject;
use moat_core::message::Message;
use moat_core::store::StoreError;
use moat_core::{ChannelId, TenantId};
use uuid::Uuid;

use super::columns;

/// Messages a chunk holds at most: a new message's seq is
/// `chunk << POSITION_BITS | position`.
pub(super) const POSITION_BITS: u32 = 13;
pub(super) const MAX_MESSAGES: usize = 1 << POSITION_BITS;
/// The longest stretch of `received_at` one chunk covers, µs: a time window
/// reads the chunks that start at most this long before it.
pub(super) const MAX_SPAN: i64 = 1_000_000;

/// On disk: add kinds, never renumber.
const USER: u8 = 1;
const API_KEY: u8 = 2;
const DEVICE: u8 = 3;

/// Appends `m`, whose seq is `first_seq + delta`, to `body`.
pub(super) fn encode(body: &mut Vec<u8>, delta: u16, m: &Message) {
    let (kind, id) = match m.publisher {
        Subject::User(u) => (USER, u.0),
        Subject::ApiKey(k) => (API_KEY, k.0),
        Subject::Device(d) => (DEVICE, d.0),
    };
    body.extend_from_slice(&delta.to_le_bytes());
    body.extend_from_slice(m.id.0.as_bytes());
    body.push(kind);
    body.extend_from_slice(id.as_bytes());
    body.push(code(columns::protocol_code(m.protocol)));
    body.push(code(columns::content_type_code(m.content_type)));
    body.extend_from_slice(&m.received_at.to_le_bytes());
    // A subtopic is at most 256 bytes and a payload at most 1 MiB
    // (moat_core::message), far inside these lengths.
    body.extend_from_slice(&(m.subtopic.len() as u16).to_le_bytes());
    body.extend_from_slice(m.subtopic.as_bytes());
    body.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
    body.extend_from_slice(&m.payload);
}

fn code(c: i64) -> u8 {
    u8::try_from(c).expect("column codes are small")
}

/// One message of a chunk, as read back.
pub(super) struct Entry {
    pub seq: i64,
    pub message: Message,
}

/// Reads every message of a chunk of `channel` (in `tenant`) whose first
/// seq is `first_seq`, in order.
pub(super) fn decode(
    body: &[u8],
    first_seq: i64,
    tenant: TenantId,
    channel: ChannelId,
) -> Result<Vec<Entry>, StoreError> {
    let mut r = Reader(body);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let delta = u16::from_le_bytes(r.array()?);
        let id = Uuid::from_bytes(r.array()?);
        let kind = r.array::<1>()?[0];
        let who = Uuid::from_bytes(r.array()?);
        let publisher = match kind {
            USER => Subject::User(who.into()),
            API_KEY => Subject::ApiKey(who.into()),
            DEVICE => Subject::Device(who.into()),
            k => return Err(corrupt(&format!("publisher kind {k}"))),
        };
        let protocol = columns::protocol(i64::from(r.array::<1>()?[0]))?;
        let content_type = columns::content_type(i64::from(r.array::<1>()?[0]))?;
        let received_at = i64::from_le_bytes(r.array()?);
        let len = usize::from(u16::from_le_bytes(r.array()?));
        let subtopic = std::str::from_utf8(r.take(len)?)
            .map_err(|_| corrupt("subtopic"))?
            .to_owned();
        let len = u32::from_le_bytes(r.array()?) as usize;
        let payload = r.take(len)?.to_vec();
        out.push(Entry {
            seq: first_seq + i64::from(delta),
            message: Message {
                id: id.into(),
                tenant_id: tenant,
                channel_id: channel,
                subtopic,
                publisher,
                protocol,
                content_type,
                payload,
                received_at,
                records: Vec::new(),
            },
        });
    }
    Ok(out)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Backend(format!("a stored message chunk is corrupt: {what}"))
}

#[cfg(test)]
mod tests {
    use moat_core::message::{ContentType, Protocol};
    use moat_core::{DeviceId, MessageId, UserId};
    use proptest::prelude::*;

    use super::*;

    fn message(i: u8, subtopic: String, payload: Vec<u8>, received_at: i64) -> Message {
        Message {
            id: MessageId::new(),
            tenant_id: TenantId(Uuid::from_bytes([1; 16])),
            channel_id: ChannelId(Uuid::from_bytes([2; 16])),
            subtopic,
            publisher: match i % 3 {
                0 => Subject::Device(DeviceId::new()),
                1 => Subject::User(UserId::new()),
                _ => Subject::ApiKey(Uuid::from_bytes([i; 16]).into()),
            },
            protocol: Protocol::ALL[usize::from(i) % Protocol::ALL.len()],
            content_type: ContentType::ALL[usize::from(i) % ContentType::ALL.len()],
            payload,
            received_at,
            records: Vec::new(),
        }
    }

    proptest! {
        /// decode ∘ encode is the identity, and a body cut short by a byte
        /// is an error rather than a panic or a shorter list.
        #[test]
        fn a_body_reads_back_as_written(
            parts in prop::collection::vec(
                (any::<u8>(), "[a-z/]{0,20}", prop::collection::vec(any::<u8>(), 0..64), any::<i64>()),
                1..8,
            ),
            first_seq in 0i64..1 << 40,
        ) {
            let sent: Vec<Message> = parts
                .into_iter()
                .map(|(i, s, p, t)| message(i, s, p, t))
                .collect();
            let mut body = Vec::new();
            for (i, m) in sent.iter().enumerate() {
                encode(&mut body, i as u16 * 3, m);
            }
            let tenant = sent[0].tenant_id;
            let channel = sent[0].channel_id;
            let read = decode(&body, first_seq, tenant, channel).unwrap();
            prop_assert_eq!(read.len(), sent.len());
            for (i, (e, m)) in read.iter().zip(&sent).enumerate() {
                prop_assert_eq!(e.seq, first_seq + i as i64 * 3);
                prop_assert_eq!(&e.message, m);
            }
            let last = body.len() - 1;
            prop_assert!(decode(&body[..last], first_seq, tenant, channel).is_err());
        }

        #[test]
        fn any_bytes_decode_to_messages_or_an_error(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&body, 0, TenantId::new(), ChannelId::new());
        }
    }
}
