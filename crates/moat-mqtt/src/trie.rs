//! The subscription trie: routes a PUBLISH topic name to the subscriptions
//! whose topic filters match it (OASIS MQTT 5.0 §4.7), shared subscriptions
//! included (§4.8.2).
//!
//! Each node stands for one filter prefix, one level per edge: literal
//! levels in a hash map, `+` in a field of its own. A filter's subscriptions
//! sit on the node of its last level, or, for a filter ending in `#`, in a
//! separate set on the node of the level before the `#` (the root for `#`
//! alone), since `#` also matches that parent level. Matching walks the
//! topic's levels from the root, following the literal child and the `+`
//! child at each level: it visits only nodes whose prefix matches the
//! topic's, never the subscriptions that cannot match.
//!
//! Nodes live in one arena (`Vec`) and point at their parent by index, so
//! matching, insertion and pruning are loops over the levels, never
//! recursion: a filter may have 32,768 levels, which would overflow a task's
//! stack if walked recursively, and so would dropping a chain of boxed nodes.
//! A node left empty by an unsubscribe is freed at once and its slot reused,
//! so churn does not grow memory; a per-subscriber index of filters makes
//! removing a disconnected session cost its own subscriptions only.
//!
//! # Concurrency
//!
//! [`SubscriptionTrie`] is a plain struct (`Send + Sync` when its type
//! parameters are), not a concurrent map: the broker wraps it in a
//! `RwLock`, since publishes (reads) far outnumber subscription changes, or
//! shards it later if measurements ask for it. Matching takes `&self`; the
//! only state it changes is each shared group's round-robin cursor, an
//! atomic counter, so many tasks can match under one read lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::topic::{FilterError, check_filter, split_share};

/// Where a filter's subscriptions are kept.
struct Placement<'a> {
    /// The levels leading to the node, `None` for the root (zero levels,
    /// which is not the same as `Some("")`, one empty level).
    levels: Option<&'a str>,
    /// Whether the filter ends in `#`, so its subscriptions are in the
    /// node's `multi` set.
    multi: bool,
}

fn placement(filter: &str) -> Placement<'_> {
    if filter == "#" {
        Placement {
            levels: None,
            multi: true,
        }
    } else if let Some(levels) = filter.strip_suffix("/#") {
        Placement {
            levels: Some(levels),
            multi: true,
        }
    } else {
        Placement {
            levels: Some(filter),
            multi: false,
        }
    }
}

/// Whether [`SubscriptionTrie::subscribe`] added a subscription or
/// replaced one: MQTT 5 retain handling 1 sends retained messages only for
/// a new one (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    Added,
    /// The subscriber held this exact filter; its data was replaced.
    Replaced,
}

/// One result of [`SubscriptionTrie::matches_with_groups`].
#[derive(Debug)]
pub enum Match<'a, S, T> {
    /// A plain subscription: deliver to this subscriber.
    Subscriber(S, &'a T),
    /// A shared subscription group whose filter matched: deliver to one of
    /// its members.
    Group(&'a SharedGroup<S, T>),
}

/// The members of one shared subscription, `$share/{name}/{filter}`
/// (§4.8.2). Groups with the same name but different filters are different
/// groups, each getting its own copy of a message.
#[derive(Debug)]
pub struct SharedGroup<S, T> {
    name: Box<str>,
    /// Never empty: a group goes when its last member leaves. Kept in
    /// subscription order so that round robin takes turns fairly; groups
    /// are small, so removal's linear search is cheap.
    members: Vec<(S, T)>,
    /// Round-robin position, atomic so that matching needs only `&self`.
    /// Wrapping at `usize::MAX` only skips a turn.
    cursor: AtomicUsize,
}

impl<S: Copy + Eq, T> SharedGroup<S, T> {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            members: Vec::new(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The share name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member at `index`, in subscription order.
    pub fn member(&self, index: usize) -> Option<(S, &T)> {
        self.members.get(index).map(|(s, t)| (*s, t))
    }

    pub fn members(&self) -> impl ExactSizeIterator<Item = (S, &T)> {
        self.members.iter().map(|(s, t)| (*s, t))
    }

    /// Takes the next round-robin turn and returns its index. A broker that
    /// must skip a member (offline, queue full) tries `start + 1`,
    /// `start + 2`... modulo [`len`](Self::len) from there.
    pub fn next_index(&self) -> usize {
        // Relaxed: the turn order needs no ordering with other memory.
        self.cursor.fetch_add(1, Ordering::Relaxed) % self.members.len().max(1)
    }

    /// The member whose turn it is.
    pub fn pick(&self) -> Option<(S, &T)> {
        self.member(self.next_index())
    }
}

/// The subscriptions of one filter (one node and one of its two sets).
struct Subscriptions<S, T> {
    direct: HashMap<S, T>,
    /// Usually none or one; several share names on one filter are rare.
    groups: Vec<SharedGroup<S, T>>,
}

impl<S: Copy + Eq + Hash, T> Subscriptions<S, T> {
    fn new() -> Self {
        Self {
            direct: HashMap::new(),
            groups: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }

    /// Returns whether it replaced an existing subscription.
    fn insert(&mut self, subscriber: S, share: Option<&str>, data: T) -> bool {
        let Some(name) = share else {
            return self.direct.insert(subscriber, data).is_some();
        };
        let index = match self.groups.iter().position(|g| *g.name == *name) {
            Some(i) => i,
            None => {
                self.groups.push(SharedGroup::new(name));
                self.groups.len() - 1
            }
        };
        let members = &mut self.groups[index].members;
        match members.iter_mut().find(|(s, _)| *s == subscriber) {
            Some(member) => {
                member.1 = data;
                true
            }
            None => {
                members.push((subscriber, data));
                false
            }
        }
    }

    fn get(&self, subscriber: S, share: Option<&str>) -> Option<&T> {
        let Some(name) = share else {
            return self.direct.get(&subscriber);
        };
        let g = self.groups.iter().find(|g| *g.name == *name)?;
        g.members
            .iter()
            .find(|(s, _)| *s == subscriber)
            .map(|(_, t)| t)
    }

    fn remove(&mut self, subscriber: S, share: Option<&str>) -> bool {
        let Some(name) = share else {
            let removed = self.direct.remove(&subscriber).is_some();
            shrink_if_sparse(&mut self.direct);
            return removed;
        };
        let Some(g) = self.groups.iter().position(|g| *g.name == *name) else {
            return false;
        };
        let members = &mut self.groups[g].members;
        let Some(m) = members.iter().position(|(s, _)| *s == subscriber) else {
            return false;
        };
        members.remove(m);
        if members.is_empty() {
            self.groups.swap_remove(g);
        }
        true
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(Match<'a, S, T>)) {
        for (s, t) in &self.direct {
            f(Match::Subscriber(*s, t));
        }
        for g in &self.groups {
            f(Match::Group(g));
        }
    }
}

/// A hash map emptied by churn keeps its peak capacity; give it back once
/// three quarters of it are unused (amortised: it must refill to shrink
/// again).
fn shrink_if_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 16 && map.len() * 4 < map.capacity() {
        map.shrink_to_fit();
    }
}

type NodeId = usize;
const ROOT: NodeId = 0;

struct Node<S, T> {
    /// For pruning upwards without walking down again; the root's is
    /// itself and never read.
    parent: NodeId,
    children: HashMap<Box<str>, NodeId>,
    /// The `+` child, apart from the literal ones so that a topic level is
    /// never confused with it and matching needs no second lookup.
    plus: Option<NodeId>,
    /// Filters that end at this node. Boxed: most nodes hold none.
    exact: Option<Box<Subscriptions<S, T>>>,
    /// Filters that end with `#` right after this node.
    multi: Option<Box<Subscriptions<S, T>>>,
}

impl<S, T> Node<S, T> {
    fn new(parent: NodeId) -> Self {
        Self {
            parent,
            children: HashMap::new(),
            plus: None,
            exact: None,
            multi: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_none()
            && self.multi.is_none()
    }

    fn set(&mut self, multi: bool) -> &mut Option<Box<Subscriptions<S, T>>> {
        if multi {
            &mut self.multi
        } else {
            &mut self.exact
        }
    }
}

/// Routes topic names to subscriptions. `S` identifies a subscriber (a
/// session), `T` is what the broker keeps per subscription.
///
/// A subscriber holds any number of filters; the same subscriber and the
/// same filter string (share name included) is one subscription, replaced
/// by a new subscribe.
pub struct SubscriptionTrie<S, T> {
    /// The arena; `nodes[ROOT]` always exists.
    nodes: Vec<Node<S, T>>,
    /// Slots of pruned nodes, reused before the arena grows.
    free: Vec<NodeId>,
    /// Each subscriber's filters and the node that holds each: what
    /// `remove_subscriber` and `unsubscribe` need without searching.
    by_subscriber: HashMap<S, HashMap<Box<str>, NodeId>>,
    len: usize,
}

impl<S: Copy + Eq + Hash, T> Default for SubscriptionTrie<S, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, T> std::fmt::Debug for SubscriptionTrie<S, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTrie")
            .field("subscriptions", &self.len)
            .field("subscribers", &self.by_subscriber.len())
            .field("nodes", &(self.nodes.len() - self.free.len()))
            .finish()
    }
}

impl<S: Copy + Eq + Hash, T> SubscriptionTrie<S, T> {
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::new(ROOT)],
            free: Vec::new(),
            by_subscriber: HashMap::new(),
            len: 0,
        }
    }

    /// Subscriptions held, counting each (subscriber, filter) pair once.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live trie nodes, the root included: a measure of memory that returns
    /// to 1 when every subscription is gone.
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Adds `subscriber`'s subscription to `filter`, or replaces its data
    /// if the subscriber already holds this exact filter.
    pub fn subscribe(
        &mut self,
        subscriber: S,
        filter: &str,
        data: T,
    ) -> Result<Subscribed, FilterError> {
        let parsed = check_filter(filter)?;
        let place = placement(parsed.filter);
        let node = self.node_for(place.levels);
        let replaced = self.nodes[node]
            .set(place.multi)
            .get_or_insert_with(|| Box::new(Subscriptions::new()))
            .insert(subscriber, parsed.share_name, data);
        if replaced {
            return Ok(Subscribed::Replaced);
        }
        self.by_subscriber
            .entry(subscriber)
            .or_default()
            .insert(filter.into(), node);
        self.len += 1;
        Ok(Subscribed::Added)
    }

    /// Removes `subscriber`'s subscription to exactly `filter`; false if it
    /// held none.
    pub fn unsubscribe(&mut self, subscriber: S, filter: &str) -> bool {
        let Some(filters) = self.by_subscriber.get_mut(&subscriber) else {
            return false;
        };
        let Some(node) = filters.remove(filter) else {
            return false;
        };
        if filters.is_empty() {
            self.by_subscriber.remove(&subscriber);
            shrink_if_sparse(&mut self.by_subscriber);
        } else {
            shrink_if_sparse(filters);
        }
        self.detach(subscriber, filter, node);
        true
    }

    /// Removes every subscription of `subscriber` (a session that ended)
    /// and returns how many there were. Costs its own subscriptions only.
    pub fn remove_subscriber(&mut self, subscriber: S) -> usize {
        let Some(filters) = self.by_subscriber.remove(&subscriber) else {
            return 0;
        };
        shrink_if_sparse(&mut self.by_subscriber);
        let count = filters.len();
        for (filter, node) in filters {
            self.detach(subscriber, &filter, node);
        }
        count
    }

    /// The filters `subscriber` holds, in no particular order.
    pub fn filters_of(&self, subscriber: S) -> impl Iterator<Item = &str> {
        self.by_subscriber
            .get(&subscriber)
            .into_iter()
            .flat_map(|filters| filters.keys().map(|f| &**f))
    }

    /// Each filter `subscriber` holds with its data, in no particular order.
    pub fn subscriptions_of(&self, subscriber: S) -> impl Iterator<Item = (&str, &T)> {
        self.by_subscriber
            .get(&subscriber)
            .into_iter()
            .flat_map(move |filters| {
                filters.iter().filter_map(move |(filter, &node)| {
                    let parsed = split_share(filter);
                    let node = &self.nodes[node];
                    let set = if placement(parsed.filter).multi {
                        &node.multi
                    } else {
                        &node.exact
                    };
                    let data = set.as_ref()?.get(subscriber, parsed.share_name)?;
                    Some((&**filter, data))
                })
            })
    }

    /// Calls `f` once per subscription matching `topic`: every plain one,
    /// and one member, in round-robin turn, of each matching shared group.
    /// A subscriber matched by several filters is called once per filter
    /// ([`Deliveries`](crate::Deliveries) folds those). The order is unspecified.
    ///
    /// `topic` should have passed [`check_topic_name`](crate::check_topic_name); matching an invalid
    /// one is harmless but meaningless.
    pub fn matches(&self, topic: &str, mut f: impl FnMut(S, &T)) {
        self.matches_with_groups(topic, |m| match m {
            Match::Subscriber(s, t) => f(s, t),
            Match::Group(g) => {
                if let Some((s, t)) = g.pick() {
                    f(s, t);
                }
            }
        });
    }

    /// Like [`matches`](Self::matches), but hands over each matching shared
    /// group whole, for a broker that chooses the member itself.
    ///
    /// Allocates nothing unless the walk holds more than 16 pending nodes
    /// at once (a topic deeper than 16 levels where many filters branch).
    pub fn matches_with_groups<'a>(&'a self, topic: &str, mut f: impl FnMut(Match<'a, S, T>)) {
        if topic.is_empty() {
            return;
        }
        // §4.7.2: a filter starting with a wildcard does not match a topic
        // starting with '$'; only the root's wildcard entries start one.
        let dollar = topic.starts_with('$');
        let mut pending = Pending::new();
        pending.push(Frame {
            node: ROOT,
            next: 0,
        });
        // Bounded: each node is pushed at most once per walk, since a node
        // is reached only through the one topic prefix that its path
        // matches.
        while let Some(Frame { node, next }) = pending.pop() {
            let node_ref = &self.nodes[node];
            let wildcards = !(dollar && node == ROOT);
            if wildcards {
                if let Some(subs) = &node_ref.multi {
                    subs.visit(&mut f);
                }
            }
            if next == END {
                if let Some(subs) = &node_ref.exact {
                    subs.visit(&mut f);
                }
                continue;
            }
            let rest = &topic[next..];
            let (level, after) = match rest.find('/') {
                Some(i) => (&rest[..i], next + i + 1),
                None => (rest, END),
            };
            if let Some(&child) = node_ref.children.get(level) {
                pending.push(Frame {
                    node: child,
                    next: after,
                });
            }
            if let Some(child) = node_ref.plus.filter(|_| wildcards) {
                pending.push(Frame {
                    node: child,
                    next: after,
                });
            }
        }
    }

    /// The node for `levels`, created as needed.
    fn node_for(&mut self, levels: Option<&str>) -> NodeId {
        let mut node = ROOT;
        for level in levels.into_iter().flat_map(|l| l.split('/')) {
            let existing = if level == "+" {
                self.nodes[node].plus
            } else {
                self.nodes[node].children.get(level).copied()
            };
            node = match existing {
                Some(child) => child,
                None => {
                    let child = self.allocate(node);
                    let parent = &mut self.nodes[node];
                    if level == "+" {
                        parent.plus = Some(child);
                    } else {
                        parent.children.insert(level.into(), child);
                    }
                    child
                }
            };
        }
        node
    }

    /// Takes `subscriber`'s subscription to `filter` out of `node` and
    /// prunes the nodes it leaves empty. The filter was validated when it
    /// was subscribed.
    fn detach(&mut self, subscriber: S, filter: &str, node: NodeId) {
        let parsed = split_share(filter);
        let place = placement(parsed.filter);
        let set = self.nodes[node].set(place.multi);
        let Some(subs) = set else {
            return;
        };
        if !subs.remove(subscriber, parsed.share_name) {
            return;
        }
        if subs.is_empty() {
            *set = None;
        }
        self.len -= 1;
        self.prune(node, place.levels);
    }

    /// Frees `node` and its ancestors while they are empty, from the leaf
    /// up; `levels` are the node's path, read backwards for the keys.
    fn prune(&mut self, mut node: NodeId, levels: Option<&str>) {
        // Bounded by the number of levels; the root has none and stays.
        for level in levels.into_iter().flat_map(|l| l.rsplit('/')) {
            if !self.nodes[node].is_empty() {
                return;
            }
            let parent = self.nodes[node].parent;
            let parent_ref = &mut self.nodes[parent];
            if level == "+" {
                parent_ref.plus = None;
            } else {
                parent_ref.children.remove(level);
                shrink_if_sparse(&mut parent_ref.children);
            }
            self.nodes[node] = Node::new(ROOT);
            self.free.push(node);
            node = parent;
        }
    }

    fn allocate(&mut self, parent: NodeId) -> NodeId {
        match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Node::new(parent);
                id
            }
            None => {
                self.nodes.push(Node::new(parent));
                self.nodes.len() - 1
            }
        }
    }
}

/// A node still to visit, and where in the topic its next level starts.
#[derive(Clone, Copy)]
struct Frame {
    node: NodeId,
    /// Byte offset of the next topic level, or [`END`] once all are
    /// consumed.
    next: usize,
}

const END: usize = usize::MAX;
const INLINE_FRAMES: usize = 16;

/// The match walk's stack: on the call stack up to 16 frames, which covers
/// ordinary topics, spilling to the heap beyond.
struct Pending {
    inline: [Frame; INLINE_FRAMES],
    len: usize,
    /// Used only once `inline` is full, so popping it first keeps LIFO.
    spill: Vec<Frame>,
}

impl Pending {
    fn new() -> Self {
        Self {
            inline: [Frame {
                node: ROOT,
                next: 0,
            }; INLINE_FRAMES],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, frame: Frame) {
        if self.len < INLINE_FRAMES {
            self.inline[self.len] = frame;
            self.len += 1;
        } else {
            self.spill.push(frame);
        }
    }

    fn pop(&mut self) -> Option<Frame> {
        if let Some(frame) = self.spill.pop() {
            return Some(frame);
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }
}

#[cfg(test)]
mod tests;
