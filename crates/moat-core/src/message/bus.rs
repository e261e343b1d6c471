//! The bus port: publishing resolves once messages are durable, then they
//! fan out to live subscribers (ADR 004). Embedded: `moat-bus`; scale-out:
//! NATS JetStream behind the same trait.

use std::sync::Arc;

use async_trait::async_trait;

use super::{MAX_SUBTOPIC_LEN, Message, Rejection};
use crate::ids::ChannelId;
use crate::store::StoreError;

/// Which messages a subscriber receives: one channel, and optionally the
/// subtopics matching an MQTT-style filter (`+` one segment, `#` the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub channel: ChannelId,
    /// `None`: every subtopic, and the channel itself.
    pub subtopic: Option<String>,
}

impl Filter {
    pub fn matches(&self, m: &Message) -> bool {
        m.channel_id == self.channel
            && self
                .subtopic
                .as_deref()
                .is_none_or(|f| subtopic_matches(f, &m.subtopic))
    }
}

/// MQTT topic-filter matching over slash-separated segments.
pub fn subtopic_matches(filter: &str, subtopic: &str) -> bool {
    let mut topic = subtopic.split('/');
    for f in filter.split('/') {
        match (f, topic.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// Checks a subscription filter: segments as in a subtopic, except that `+`
/// may stand for one whole segment and `#`, last, for the rest. Empty
/// names the channel itself.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.len() > MAX_SUBTOPIC_LEN {
        return Err("longer than 256 bytes");
    }
    if filter.is_empty() {
        return Ok(());
    }
    let last = filter.split('/').count() - 1;
    for (i, segment) in filter.split('/').enumerate() {
        match segment {
            "+" => {}
            "#" if i == last => {}
            "#" => return Err("`#` may only be the last segment"),
            "" => return Err("an empty segment"),
            s if s.contains(['+', '#']) => return Err("`+` and `#` must be whole segments"),
            s => super::check_subtopic(s).map_err(|r| match r {
                Rejection::Subtopic(why) => why,
                _ => "not a subtopic",
            })?,
        }
    }
    Ok(())
}

/// A live subscription; dropping it unsubscribes.
#[async_trait]
pub trait Subscription: Send {
    /// The next message; `None` once the subscription ended (the bus shut
    /// down, or this subscriber fell behind and was cut off).
    async fn recv(&mut self) -> Option<Arc<Message>>;
    /// Whether it ended because it fell behind.
    fn cut_off(&self) -> bool;
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Stores `messages` durably, then delivers them to live subscribers;
    /// resolves (with their sequence numbers) once they are durable. Waits
    /// when the store is behind: that is the backpressure on publishers.
    async fn publish(&self, messages: Vec<Arc<Message>>) -> Result<Vec<i64>, StoreError>;
    /// Subscribes with a queue of `capacity` messages; a subscriber whose
    /// queue is full is cut off rather than slowing the others.
    fn subscribe(&self, filter: Filter, capacity: usize) -> Box<dyn Subscription>;
    /// Subscribes to every message of every channel, for an adapter that
    /// routes on its own (the MQTT broker's subscription trie), except those
    /// published over `skip` (the adapter's own, which it has routed
    /// already). Same queue and cut-off rules as
    /// [`subscribe`](Self::subscribe).
    fn subscribe_all(
        &self,
        capacity: usize,
        skip: Option<super::Protocol>,
    ) -> Box<dyn Subscription>;
}

#[cfg(test)]
mod tests {
    use super::check_filter;
    use super::subtopic_matches as m;

    #[test]
    fn filters_are_subtopics_with_whole_segment_wildcards() {
        for ok in ["", "a", "a/b", "+", "#", "a/+", "a/#", "+/b/#", "+/+"] {
            assert_eq!(check_filter(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "a//b",
            "/a",
            "a/",
            "#/a",
            "a/#/b",
            "a+",
            "a/b#",
            "a/\u{1}",
            &"x".repeat(257),
        ] {
            assert!(check_filter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(m("a/b", "a/b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(m("a/+", "a/b"));
        assert!(!m("a/+", "a"));
        assert!(m("a/#", "a/b/c"));
        assert!(m("a/#", "a"));
        assert!(m("#", "x"));
        assert!(m("+/+/c", "a/b/c"));
        assert!(!m("a", "b"));
    }
}
