//! Moat's MQTT adapter; this far, topic routing and the packet guard.
//!
//! The broker of issue 5 grows here (listeners, sessions, retained
//! messages, the access checks that call into `moat-core`) on
//! mqtt-protocol-core's server connection (ADR 005), behind
//! [`protocol`]'s guard. Its first brick is [`SubscriptionTrie`]: given a PUBLISH topic name, it finds every
//! subscription whose topic filter matches, with the MQTT 3.1.1 and 5.0
//! rules for wildcards, `$` topics and shared subscriptions (OASIS MQTT 5.0
//! §4.7 and §4.8.2), generic over the subscriber id and the
//! per-subscription data (QoS, subscription identifier, no-local...).
//!
//! ```
//! use moat_mqtt::{Deliveries, SubscriptionOptions, SubscriptionTrie};
//!
//! #[derive(Clone)]
//! struct Options { qos: u8, id: Option<u32> }
//! impl SubscriptionOptions for Options {
//!     fn qos(&self) -> u8 { self.qos }
//!     fn subscription_identifier(&self) -> Option<u32> { self.id }
//! }
//!
//! let mut trie = SubscriptionTrie::new();
//! trie.subscribe(7_u64, "sensors/+/temp", Options { qos: 0, id: Some(1) })?;
//! trie.subscribe(7_u64, "sensors/#", Options { qos: 1, id: Some(2) })?;
//!
//! // One match per matching filter...
//! let mut per_filter = 0;
//! trie.matches("sensors/kitchen/temp", |_, _| per_filter += 1);
//! assert_eq!(per_filter, 2);
//!
//! // ...folded into one delivery per subscriber: the highest QoS and
//! // every subscription identifier (MQTT 5.0 §3.3.4).
//! let mut deliveries = Deliveries::new();
//! trie.matches("sensors/kitchen/temp", |s, o| deliveries.add(s, o));
//! let d = &deliveries.as_slice()[0];
//! assert_eq!((d.subscriber, d.qos), (7, 1));
//! assert_eq!(d.subscription_identifiers.len(), 2);
//! # Ok::<(), moat_mqtt::FilterError>(())
//! ```

mod broker;
mod connection;
mod deliveries;
pub mod platform_topics;
pub mod protocol;
pub mod server;
mod topic;
mod trie;

pub use broker::{Broker, BrokerConfig};
pub use connection::{Peer, serve};

pub use deliveries::{Deliveries, Delivery, SubscriptionOptions};
pub use topic::{
    FilterError, MAX_TOPIC_LEN, TopicFilter, TopicNameError, check_filter, check_topic_name,
    filter_matches,
};
pub use trie::{Match, SharedGroup, Subscribed, SubscriptionTrie};
