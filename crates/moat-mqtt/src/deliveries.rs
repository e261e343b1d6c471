//! Folding the matches of one PUBLISH into one delivery per subscriber
//! (MQTT 5.0 §3.3.4: the highest QoS, every subscription identifier).

use std::collections::HashMap;
use std::hash::Hash;

/// What [`Deliveries`] needs to know of a subscription's data.
pub trait SubscriptionOptions {
    /// The subscription's maximum QoS: 0, 1 or 2.
    fn qos(&self) -> u8;
    /// The MQTT 5 subscription identifier, if the SUBSCRIBE carried one.
    fn subscription_identifier(&self) -> Option<u32>;
    /// MQTT 5 Retain As Published: forward the RETAIN flag as the
    /// publisher set it (§3.8.3.1).
    fn retain_as_published(&self) -> bool {
        false
    }
}

/// One subscriber's copy of a message, folded from all its matching
/// subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<S> {
    pub subscriber: S,
    /// The highest QoS among the matching subscriptions (the message's own
    /// QoS still caps it).
    pub qos: u8,
    /// Each distinct identifier of the matching subscriptions; their order
    /// is not significant (§3.3.4).
    pub subscription_identifiers: Vec<u32>,
    /// Whether any matching subscription asked for Retain As Published.
    pub retain_as_published: bool,
}

/// Folds per-filter matches into one delivery per subscriber, as MQTT 5
/// allows (§3.3.4): the highest QoS and all subscription identifiers.
/// Per-subscription rules such as no-local are the caller's to apply before
/// [`add`](Self::add). Reusable across publishes through
/// [`clear`](Self::clear).
#[derive(Debug)]
pub struct Deliveries<S> {
    position: HashMap<S, usize>,
    deliveries: Vec<Delivery<S>>,
}

impl<S: Copy + Eq + Hash> Default for Deliveries<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Copy + Eq + Hash> Deliveries<S> {
    pub fn new() -> Self {
        Self {
            position: HashMap::new(),
            deliveries: Vec::new(),
        }
    }

    pub fn add(&mut self, subscriber: S, options: &impl SubscriptionOptions) {
        let index = *self.position.entry(subscriber).or_insert_with(|| {
            self.deliveries.push(Delivery {
                subscriber,
                qos: 0,
                subscription_identifiers: Vec::new(),
                retain_as_published: false,
            });
            self.deliveries.len() - 1
        });
        let delivery = &mut self.deliveries[index];
        delivery.qos = delivery.qos.max(options.qos());
        delivery.retain_as_published |= options.retain_as_published();
        if let Some(id) = options.subscription_identifier() {
            if !delivery.subscription_identifiers.contains(&id) {
                delivery.subscription_identifiers.push(id);
            }
        }
    }

    /// The deliveries, in the order their subscribers were first added.
    pub fn as_slice(&self) -> &[Delivery<S>] {
        &self.deliveries
    }

    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    pub fn clear(&mut self) {
        self.position.clear();
        self.deliveries.clear();
    }
}
