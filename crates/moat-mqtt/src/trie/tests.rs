//! The trie's rules, each test naming the section of OASIS MQTT 5.0 it
//! checks, then a property test against a naive matcher and the memory
//! tests (pruning, churn, deep filters).

use std::sync::RwLock;
use std::sync::atomic::AtomicU64;

use proptest::prelude::*;

use super::*;
use crate::deliveries::{Deliveries, Delivery, SubscriptionOptions};
use crate::topic::{MAX_TOPIC_LEN, TopicFilter, TopicNameError, check_topic_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    qos: u8,
    id: Option<u32>,
}

impl SubscriptionOptions for Options {
    fn qos(&self) -> u8 {
        self.qos
    }
    fn subscription_identifier(&self) -> Option<u32> {
        self.id
    }
}

fn options(qos: u8, id: Option<u32>) -> Options {
    Options { qos, id }
}

/// Subscribes one subscriber per filter (the filter as its data) and checks
/// that `topic` matches exactly `expected`.
fn check(filters: &[&str], topic: &str, expected: &[&str]) {
    let mut trie = SubscriptionTrie::new();
    for (i, filter) in filters.iter().enumerate() {
        trie.subscribe(i, filter, filter.to_string()).unwrap();
    }
    let mut got = Vec::new();
    trie.matches(topic, |_, f| got.push(f.clone()));
    got.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "topic {topic:?} against {filters:?}");
}

fn matched(trie: &SubscriptionTrie<u64, Options>, topic: &str) -> Vec<(u64, Options)> {
    let mut got = Vec::new();
    trie.matches(topic, |s, o| got.push((s, *o)));
    got.sort_by_key(|(s, o)| (*s, o.qos, o.id));
    got
}

// --- Validation (§4.7.1, §4.7.3, §1.5.4, §4.8.2) ---

#[test]
fn topic_names_4_7_3() {
    for ok in ["a", "a/b", "/", "/a", "a/", "a//b", "$SYS/broker", "a b/ü"] {
        assert_eq!(check_topic_name(ok), Ok(()), "{ok:?}");
    }
    assert_eq!(check_topic_name(""), Err(TopicNameError::Empty));
    assert_eq!(
        check_topic_name("a/+/b"),
        Err(TopicNameError::Wildcard('+'))
    );
    assert_eq!(check_topic_name("a/#"), Err(TopicNameError::Wildcard('#')));
    assert_eq!(check_topic_name("a#b"), Err(TopicNameError::Wildcard('#')));
    assert_eq!(check_topic_name("a\0b"), Err(TopicNameError::NullCharacter));
}

#[test]
fn length_limit_is_65535_bytes_1_5_4() {
    let longest = "a".repeat(MAX_TOPIC_LEN);
    assert_eq!(check_topic_name(&longest), Ok(()));
    assert!(check_filter(&longest).is_ok());
    let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
    assert_eq!(
        check_topic_name(&too_long),
        Err(TopicNameError::TooLong { len: 65_536 })
    );
    assert_eq!(
        check_filter(&too_long),
        Err(FilterError::TooLong { len: 65_536 })
    );
    // Bytes, not characters: 'é' is two bytes.
    assert!(check_topic_name(&"é".repeat(32_768)).is_err());
}

#[test]
fn valid_filters_4_7_1() {
    for ok in [
        "#", "+", "a", "a/#", "+/#", "+/+", "/+", "/#", "a//b", "a/+/b", "/", "$SYS/#", "a/$b",
    ] {
        assert_eq!(
            check_filter(ok),
            Ok(TopicFilter {
                share_name: None,
                filter: ok
            }),
            "{ok:?}"
        );
    }
}

#[test]
fn invalid_filters_4_7_1() {
    use FilterError::*;
    for (filter, error) in [
        ("", Empty),
        ("a\0", NullCharacter),
        ("a#", MisplacedMultiLevelWildcard),
        ("#a", MisplacedMultiLevelWildcard),
        ("#/a", MisplacedMultiLevelWildcard),
        ("a/#/b", MisplacedMultiLevelWildcard),
        ("a/#/", MisplacedMultiLevelWildcard),
        ("##", MisplacedMultiLevelWildcard),
        ("a+", MisplacedSingleLevelWildcard),
        ("+a/b", MisplacedSingleLevelWildcard),
        ("a/b+/c", MisplacedSingleLevelWildcard),
        ("++", MisplacedSingleLevelWildcard),
    ] {
        assert_eq!(check_filter(filter), Err(error), "{filter:?}");
    }
}

#[test]
fn shared_filters_4_8_2() {
    assert_eq!(
        check_filter("$share/consumer1/sport/tennis/+"),
        Ok(TopicFilter {
            share_name: Some("consumer1"),
            filter: "sport/tennis/+"
        })
    );
    assert_eq!(
        check_filter("$share/g/#"),
        Ok(TopicFilter {
            share_name: Some("g"),
            filter: "#"
        })
    );
    assert_eq!(
        check_filter("$share/g//"),
        Ok(TopicFilter {
            share_name: Some("g"),
            filter: "/"
        })
    );
    // Only a first level of exactly "$share" makes a shared subscription.
    assert_eq!(check_filter("$shared/g/a").unwrap().share_name, None);
    assert_eq!(check_filter("a/$share/g").unwrap().share_name, None);

    use FilterError::*;
    for (filter, error) in [
        ("$share", EmptyShareName),
        ("$share/", EmptyShareName),
        ("$share//a", EmptyShareName),
        ("$share/g", MissingSharedFilter),
        ("$share/g/", MissingSharedFilter),
        ("$share/g+/a", WildcardInShareName),
        ("$share/+/a", WildcardInShareName),
        ("$share/g#/a", WildcardInShareName),
        ("$share/g/a#", MisplacedMultiLevelWildcard),
        ("$share/g/#/a", MisplacedMultiLevelWildcard),
    ] {
        assert_eq!(check_filter(filter), Err(error), "{filter:?}");
    }
}

#[test]
fn subscribe_rejects_invalid_filters() {
    let mut trie = SubscriptionTrie::<u64, Options>::new();
    assert_eq!(
        trie.subscribe(1, "a/#/b", options(0, None)),
        Err(FilterError::MisplacedMultiLevelWildcard)
    );
    assert_eq!(
        trie.subscribe(1, "$share/g", options(0, None)),
        Err(FilterError::MissingSharedFilter)
    );
    assert!(trie.is_empty());
    assert_eq!(trie.node_count(), 1);
}

// --- Matching (§4.7.1.2, §4.7.1.3, §4.7.2) ---

#[test]
fn literal_filters_match_exactly_4_7() {
    check(&["a/b", "a", "a/b/c", "b/a"], "a/b", &["a/b"]);
    // Case matters (§4.7.3).
    check(&["A/b"], "a/b", &[]);
}

#[test]
fn multi_level_wildcard_4_7_1_2() {
    let filters = ["sport/tennis/player1/#"];
    check(&filters, "sport/tennis/player1", &filters);
    check(&filters, "sport/tennis/player1/ranking", &filters);
    check(&filters, "sport/tennis/player1/score/wimbledon", &filters);
    check(&filters, "sport/tennis/player2", &[]);
    // "sport/#" also matches the parent level "sport".
    check(&["sport/#"], "sport", &["sport/#"]);
    check(&["sport/#"], "sports", &[]);
    check(&["#"], "sport/tennis", &["#"]);
    check(&["#"], "/", &["#"]);
    check(&["/#"], "/", &["/#"]);
    check(&["/#"], "a", &[]);
}

#[test]
fn single_level_wildcard_4_7_1_3() {
    let tennis = ["sport/tennis/+"];
    check(&tennis, "sport/tennis/player1", &tennis);
    check(&tennis, "sport/tennis/player2", &tennis);
    check(&tennis, "sport/tennis/player1/ranking", &[]);
    // "sport/+" does not match "sport" but does match "sport/".
    check(&["sport/+"], "sport", &[]);
    check(&["sport/+"], "sport/", &["sport/+"]);
    check(&["+", "+/+", "/+"], "/finance", &["+/+", "/+"]);
    check(&["+"], "finance", &["+"]);
    check(&["+/tennis/#"], "sport/tennis/a/b", &["+/tennis/#"]);
    // "+/#" matches a one-level topic: '+' takes it, '#' its parent level.
    check(&["+/#"], "a", &["+/#"]);
}

#[test]
fn empty_levels_are_levels_4_7_1() {
    // '+' matches an empty level.
    check(&["a/+/b", "a//b", "a/b"], "a//b", &["a/+/b", "a//b"]);
    check(&["+/a", "/a", "a"], "/a", &["+/a", "/a"]);
    check(&["a/+", "a/", "a"], "a/", &["a/+", "a/"]);
    check(&["/", "+/+", "+", "#"], "/", &["/", "+/+", "#"]);
    check(&["//"], "//", &["//"]);
    check(&["//"], "/", &[]);
}

#[test]
fn dollar_topics_skip_leading_wildcards_4_7_2() {
    let filters = [
        "#",
        "+/monitor/Clients",
        "$SYS/#",
        "$SYS/monitor/+",
        "+/#",
        "$share/g/#",
        "$share/g/+/monitor/Clients",
        "$share/h/$SYS/#",
    ];
    check(
        &filters,
        "$SYS/monitor/Clients",
        &["$SYS/#", "$SYS/monitor/+", "$share/h/$SYS/#"],
    );
    // The same filters still match an ordinary topic.
    check(
        &filters,
        "SYS/monitor/Clients",
        &[
            "#",
            "+/monitor/Clients",
            "+/#",
            "$share/g/#",
            "$share/g/+/monitor/Clients",
        ],
    );
    // The rule is about the first level only.
    check(&["a/+", "a/#"], "a/$b", &["a/+", "a/#"]);
    check(&["$"], "$", &["$"]);
    check(&["#", "+"], "$", &[]);
}

// --- Shared subscriptions (§4.8.2) ---

#[test]
fn shared_group_gets_one_copy_in_turn_4_8_2() {
    let mut trie = SubscriptionTrie::new();
    for s in 1..=3 {
        trie.subscribe(s, "$share/g/sensors/+", options(1, None))
            .unwrap();
    }
    let mut turns = Vec::new();
    for _ in 0..6 {
        let got = matched(&trie, "sensors/t");
        assert_eq!(got.len(), 1, "one member per group");
        turns.push(got[0].0);
    }
    assert_eq!(turns, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn shared_groups_are_name_and_filter_4_8_2() {
    let mut trie = SubscriptionTrie::new();
    // Different names, same filter: each group gets a copy.
    trie.subscribe(1, "$share/consumer1/sport/tennis/+", options(0, None))
        .unwrap();
    trie.subscribe(2, "$share/consumer2/sport/tennis/+", options(0, None))
        .unwrap();
    // Same name, another filter: a third group.
    trie.subscribe(3, "$share/consumer1/sport/#", options(0, None))
        .unwrap();
    // And a plain subscriber on the same filter gets its own copy.
    trie.subscribe(4, "sport/tennis/+", options(0, None))
        .unwrap();
    let got: Vec<u64> = matched(&trie, "sport/tennis/player1")
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(got, [1, 2, 3, 4]);
    assert_eq!(trie.len(), 4);
}

#[test]
fn shared_groups_are_handed_over_whole_4_8_2() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1, "$share/g/a", options(0, None)).unwrap();
    trie.subscribe(2, "$share/g/a", options(2, None)).unwrap();
    trie.subscribe(3, "a", options(1, None)).unwrap();
    let mut direct = Vec::new();
    let mut groups = Vec::new();
    trie.matches_with_groups("a", |m| match m {
        Match::Subscriber(s, _) => direct.push(s),
        Match::Group(g) => {
            let members: Vec<(u64, u8)> = g.members().map(|(s, o)| (s, o.qos)).collect();
            groups.push((g.name().to_owned(), members, g.len()));
        }
    });
    assert_eq!(direct, [3]);
    assert_eq!(groups, [("g".to_owned(), vec![(1, 0), (2, 2)], 2)]);

    // A broker skipping a busy member walks on from the turn it took.
    let mut group_seen = false;
    trie.matches_with_groups("a", |m| {
        if let Match::Group(g) = m {
            let start = g.next_index();
            let chosen = (0..g.len())
                .map(|k| g.member((start + k) % g.len()).unwrap().0)
                .find(|s| *s != 1);
            assert_eq!(chosen, Some(2));
            group_seen = true;
        }
    });
    assert!(group_seen);
}

#[test]
fn shared_member_leaves_and_group_goes_4_8_2() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1, "$share/g/a", options(0, None)).unwrap();
    trie.subscribe(2, "$share/g/a", options(0, None)).unwrap();
    assert!(trie.unsubscribe(1, "$share/g/a"));
    assert!(!trie.unsubscribe(1, "$share/g/a"));
    // Unsubscribing the plain filter does not touch the shared one.
    assert!(!trie.unsubscribe(2, "a"));
    for _ in 0..3 {
        assert_eq!(matched(&trie, "a"), [(2, options(0, None))]);
    }
    assert!(trie.unsubscribe(2, "$share/g/a"));
    assert!(matched(&trie, "a").is_empty());
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn shared_resubscribe_replaces_member_data_4_8_2() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1, "$share/g/a", options(0, None)).unwrap();
    assert_eq!(
        trie.subscribe(1, "$share/g/a", options(2, Some(9))),
        Ok(Subscribed::Replaced)
    );
    assert_eq!(trie.len(), 1);
    assert_eq!(matched(&trie, "a"), [(1, options(2, Some(9)))]);
}

// --- Subscribers, overlaps and folding (§3.3.4, §3.8.4) ---

#[test]
fn same_filter_replaces_3_8_4() {
    let mut trie = SubscriptionTrie::new();
    assert_eq!(
        trie.subscribe(1, "a/+", options(0, Some(1))),
        Ok(Subscribed::Added)
    );
    assert_eq!(
        trie.subscribe(1, "a/+", options(2, Some(2))),
        Ok(Subscribed::Replaced)
    );
    assert_eq!(
        trie.subscribe(2, "a/+", options(1, None)),
        Ok(Subscribed::Added)
    );
    assert_eq!(trie.len(), 2);
    assert_eq!(
        matched(&trie, "a/b"),
        [(1, options(2, Some(2))), (2, options(1, None))]
    );
}

#[test]
fn overlapping_filters_match_once_each_3_3_4() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1, "a/+", options(0, Some(1))).unwrap();
    trie.subscribe(1, "a/#", options(2, Some(2))).unwrap();
    trie.subscribe(1, "a/b", options(1, None)).unwrap();
    trie.subscribe(1, "#", options(1, Some(2))).unwrap();
    trie.subscribe(2, "a/b", options(0, None)).unwrap();
    assert_eq!(matched(&trie, "a/b").len(), 5);

    let mut deliveries = Deliveries::new();
    trie.matches("a/b", |s, o| deliveries.add(s, o));
    let mut folded = deliveries.as_slice().to_vec();
    folded.sort_by_key(|d| d.subscriber);
    for d in &mut folded {
        d.subscription_identifiers.sort();
    }
    assert_eq!(
        folded,
        [
            // Highest QoS; identifier 2 twice (two filters, one SUBSCRIBE)
            // is listed once.
            Delivery {
                subscriber: 1,
                qos: 2,
                subscription_identifiers: vec![1, 2],
                retain_as_published: false,
            },
            Delivery {
                subscriber: 2,
                qos: 0,
                subscription_identifiers: vec![],
                retain_as_published: false,
            },
        ]
    );
    deliveries.clear();
    assert!(deliveries.is_empty());
    trie.matches("x", |s, o| deliveries.add(s, o));
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries.as_slice()[0].qos, 1);
}

#[test]
fn unsubscribe_takes_exact_filter_only() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1, "a/+", options(0, None)).unwrap();
    trie.subscribe(1, "a/b", options(0, None)).unwrap();
    assert!(!trie.unsubscribe(1, "a/c"));
    assert!(!trie.unsubscribe(2, "a/+"));
    assert!(!trie.unsubscribe(1, "not a filter/#/x"));
    assert!(trie.unsubscribe(1, "a/+"));
    assert!(!trie.unsubscribe(1, "a/+"));
    assert_eq!(matched(&trie, "a/b"), [(1, options(0, None))]);
    assert!(matched(&trie, "a/c").is_empty());
    assert_eq!(trie.len(), 1);
}

#[test]
fn remove_subscriber_takes_all_its_filters() {
    let mut trie = SubscriptionTrie::new();
    let filters = ["a", "a/+", "#", "$share/g/a", "$SYS/#", "/"];
    for f in filters {
        trie.subscribe(1, f, options(0, None)).unwrap();
    }
    trie.subscribe(2, "a", options(1, None)).unwrap();
    trie.subscribe(2, "$share/g/a", options(1, None)).unwrap();
    let mut held: Vec<&str> = trie.filters_of(1).collect();
    held.sort();
    let mut want = filters.to_vec();
    want.sort();
    assert_eq!(held, want);

    assert_eq!(trie.remove_subscriber(1), filters.len());
    assert_eq!(trie.remove_subscriber(1), 0);
    assert_eq!(trie.filters_of(1).count(), 0);
    assert_eq!(trie.len(), 2);
    assert_eq!(
        matched(&trie, "a"),
        [(2, options(1, None)), (2, options(1, None))]
    );
    assert!(matched(&trie, "$SYS/x").is_empty());
    trie.remove_subscriber(2);
    assert_eq!(trie.node_count(), 1);
}

// --- Memory: pruning, churn, depth ---

#[test]
fn unsubscribe_prunes_nodes_back_to_start() {
    let mut trie = SubscriptionTrie::new();
    // A subscription that stays, sharing a prefix with the churned ones.
    trie.subscribe(0, "devices/keep", options(0, None)).unwrap();
    let start = trie.node_count();
    let filter = |i: u64| match i % 4 {
        0 => format!("devices/{i}/telemetry/+"),
        1 => format!("devices/{i}/#"),
        2 => format!("$share/g{}/devices/+/{i}//x", i % 7),
        _ => format!("{i}"),
    };
    for i in 0..10_000 {
        trie.subscribe(1 + i % 10, &filter(i), options(0, None))
            .unwrap();
    }
    assert!(trie.node_count() > start + 10_000);
    for i in 0..10_000 {
        assert!(trie.unsubscribe(1 + i % 10, &filter(i)));
    }
    assert_eq!(trie.node_count(), start);
    assert_eq!(trie.len(), 1);
    assert_eq!(matched(&trie, "devices/keep"), [(0, options(0, None))]);
}

#[test]
fn churn_does_not_grow_memory() {
    let mut trie = SubscriptionTrie::new();
    let mut peak_slots = 0;
    for round in 0..5 {
        for i in 0..2_000_u64 {
            trie.subscribe(i, &format!("r{round}/{i}/+/x"), options(0, None))
                .unwrap();
        }
        if round == 0 {
            peak_slots = trie.nodes.len();
        }
        for i in 0..2_000_u64 {
            trie.remove_subscriber(i);
        }
        assert_eq!(trie.node_count(), 1);
        // Freed slots are reused: the arena never passes its first peak.
        assert_eq!(trie.nodes.len(), peak_slots);
        assert!(trie.nodes[ROOT].children.capacity() <= 16 * 2);
        assert!(trie.by_subscriber.is_empty());
    }
}

#[test]
fn deep_filters_do_not_recurse() {
    let mut trie = SubscriptionTrie::new();
    // 30,001 levels: recursion this deep would overflow a thread's stack.
    let deep = format!("{}#", "a/".repeat(30_000));
    trie.subscribe(1, &deep, options(0, None)).unwrap();
    // Filters that branch at every level keep the walk's stack deep.
    let plus = format!("{}#", "+/".repeat(40));
    trie.subscribe(2, &plus, options(0, None)).unwrap();
    let mixed = (0..40)
        .map(|i| if i % 2 == 0 { "a" } else { "+" })
        .collect::<Vec<_>>()
        .join("/");
    trie.subscribe(3, &mixed, options(0, None)).unwrap();

    let topic = format!("{}a", "a/".repeat(32_000));
    assert_eq!(check_topic_name(&topic), Ok(()));
    let who: Vec<u64> = matched(&trie, &topic).iter().map(|m| m.0).collect();
    assert_eq!(who, [1, 2]);
    let forty = vec!["a"; 40].join("/");
    let who: Vec<u64> = matched(&trie, &forty).iter().map(|m| m.0).collect();
    assert_eq!(who, [2, 3]);

    assert_eq!(trie.remove_subscriber(1), 1);
    assert!(trie.unsubscribe(2, &plus));
    assert!(trie.unsubscribe(3, &mixed));
    assert_eq!(trie.node_count(), 1);
}

#[test]
fn pending_stack_spills_in_lifo_order() {
    let mut pending = Pending::new();
    for node in 0..40 {
        pending.push(Frame { node, next: 0 });
    }
    let popped: Vec<usize> = std::iter::from_fn(|| pending.pop().map(|f| f.node)).collect();
    assert_eq!(popped, (0..40).rev().collect::<Vec<_>>());
}

// --- Concurrency ---

#[test]
fn shared_under_a_read_lock_round_robin_stays_exact() {
    fn assert_send_sync<X: Send + Sync>() {}
    assert_send_sync::<SubscriptionTrie<u64, Options>>();

    let trie = RwLock::new(SubscriptionTrie::new());
    for s in 0..4_u64 {
        trie.write()
            .unwrap()
            .subscribe(s, "$share/g/t", options(0, None))
            .unwrap();
    }
    let counts: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..1_000 {
                    trie.read().unwrap().matches("t", |s, _| {
                        counts[s as usize].fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    // 4,000 consecutive turns over 4 members: exactly 1,000 each.
    for c in &counts {
        assert_eq!(c.load(Ordering::Relaxed), 1_000);
    }
}

// --- Property test against a naive matcher ---

/// §4.7: level by level, '+' takes one level, '#' the rest (and the parent),
/// and a leading wildcard never matches a '$' topic.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    for (i, level) in f.iter().enumerate() {
        if *level == "#" {
            return true;
        }
        if i >= t.len() || (*level != "+" && *level != t[i]) {
            return false;
        }
    }
    f.len() == t.len()
}

fn filter_strategy() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("a"),
        Just("b"),
        Just(""),
        Just("$s"),
        Just("+"),
        Just("#")
    ];
    let share = prop_oneof![Just(None), Just(Some("g1")), Just(Some("g2"))];
    (prop::collection::vec(level, 1..5), share).prop_map(|(levels, share)| {
        // Cut after the first '#' so that the filter is valid.
        let end = levels
            .iter()
            .position(|l| *l == "#")
            .map_or(levels.len(), |i| i + 1);
        let mut filter = levels[..end].join("/");
        if filter.is_empty() {
            filter.push('/');
        }
        match share {
            Some(name) => format!("$share/{name}/{filter}"),
            None => filter,
        }
    })
}

fn topic_strategy() -> impl Strategy<Value = String> {
    let level = prop_oneof![Just("a"), Just("b"), Just(""), Just("$s"), Just("$t")];
    prop::collection::vec(level, 1..6).prop_map(|levels| {
        let topic = levels.join("/");
        if topic.is_empty() {
            "a".to_owned()
        } else {
            topic
        }
    })
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe(u8, String),
    Unsubscribe(u8, String),
    RemoveSubscriber(u8),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4_u8, filter_strategy()).prop_map(|(s, f)| Op::Subscribe(s, f)),
        2 => (0..4_u8, filter_strategy()).prop_map(|(s, f)| Op::Unsubscribe(s, f)),
        1 => (0..4_u8).prop_map(Op::RemoveSubscriber),
    ]
}

type Model = std::collections::BTreeMap<(u8, String), u32>;

/// What a topic should reach: plain (subscriber, data) pairs, and each
/// shared group as its name and members.
type Expected = (Vec<(u8, u32)>, Vec<(String, Vec<(u8, u32)>)>);

fn expected(model: &Model, topic: &str) -> Expected {
    let mut direct = Vec::new();
    let mut groups: std::collections::BTreeMap<(&str, &str), Vec<(u8, u32)>> = Default::default();
    for ((s, filter), data) in model {
        let parsed = check_filter(filter).unwrap();
        if !reference_matches(parsed.filter, topic) {
            continue;
        }
        match parsed.share_name {
            None => direct.push((*s, *data)),
            Some(name) => groups
                .entry((name, parsed.filter))
                .or_default()
                .push((*s, *data)),
        }
    }
    direct.sort();
    let mut groups: Vec<(String, Vec<(u8, u32)>)> = groups
        .into_iter()
        .map(|((name, _), mut members)| {
            members.sort();
            (name.to_owned(), members)
        })
        .collect();
    groups.sort();
    (direct, groups)
}

fn actual(trie: &SubscriptionTrie<u8, u32>, topic: &str) -> Expected {
    let mut direct = Vec::new();
    let mut groups = Vec::new();
    trie.matches_with_groups(topic, |m| match m {
        Match::Subscriber(s, d) => direct.push((s, *d)),
        Match::Group(g) => {
            let mut members: Vec<(u8, u32)> = g.members().map(|(s, d)| (s, *d)).collect();
            members.sort();
            groups.push((g.name().to_owned(), members));
        }
    });
    direct.sort();
    groups.sort();
    (direct, groups)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn trie_agrees_with_naive_matcher(
        ops in prop::collection::vec(op_strategy(), 1..60),
        topics in prop::collection::vec(topic_strategy(), 1..12),
    ) {
        let mut trie = SubscriptionTrie::<u8, u32>::new();
        let mut model = Model::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Subscribe(s, f) => {
                    let was = model.insert((s, f.clone()), i as u32).is_some();
                    let want = if was { Subscribed::Replaced } else { Subscribed::Added };
                    prop_assert_eq!(trie.subscribe(s, &f, i as u32), Ok(want));
                }
                Op::Unsubscribe(s, f) => {
                    let was = model.remove(&(s, f.clone())).is_some();
                    prop_assert_eq!(trie.unsubscribe(s, &f), was);
                }
                Op::RemoveSubscriber(s) => {
                    let before = model.len();
                    model.retain(|(m, _), _| *m != s);
                    prop_assert_eq!(trie.remove_subscriber(s), before - model.len());
                }
            }
        }
        prop_assert_eq!(trie.len(), model.len());
        for topic in &topics {
            let want = expected(&model, topic);
            prop_assert_eq!(actual(&trie, topic), want.clone(), "topic {:?}", topic);
            // `matches` picks one member per group, and it is a member.
            let mut picked = Vec::new();
            trie.matches(topic, |s, d| picked.push((s, *d)));
            prop_assert_eq!(picked.len(), want.0.len() + want.1.len());
            for p in &picked {
                prop_assert!(
                    want.0.contains(p) || want.1.iter().any(|(_, m)| m.contains(p))
                );
            }
        }
        for s in 0..4 {
            trie.remove_subscriber(s);
        }
        prop_assert_eq!(trie.node_count(), 1);
        prop_assert!(trie.is_empty());
    }
}

#[test]
fn reference_matcher_follows_the_spec_examples() {
    // The naive matcher is itself checked on §4.7's examples.
    assert!(reference_matches("sport/#", "sport"));
    assert!(reference_matches("sport/+", "sport/"));
    assert!(!reference_matches("sport/+", "sport"));
    assert!(reference_matches("+/+", "/finance"));
    assert!(!reference_matches("+", "/finance"));
    assert!(!reference_matches("#", "$SYS/x"));
    assert!(reference_matches("$SYS/#", "$SYS/x"));
    assert!(!reference_matches("a/b/#", "a"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// The single-filter matcher (retained messages) agrees with the
    /// reference, hence with the trie.
    #[test]
    fn filter_matches_agrees_with_the_reference(filter in filter_strategy(), topic in topic_strategy()) {
        let plain = crate::check_filter(&filter).unwrap().filter;
        prop_assert_eq!(
            crate::topic::filter_matches(plain, &topic),
            reference_matches(plain, &topic),
            "filter {:?} topic {:?}", plain, topic
        );
    }
}

#[test]
fn a_subscribers_subscriptions_come_back_with_their_data() {
    let mut trie = SubscriptionTrie::new();
    trie.subscribe(1u64, "a/b", options(0, None)).unwrap();
    trie.subscribe(1, "a/#", options(1, Some(7))).unwrap();
    trie.subscribe(1, "$share/g/a/+", options(2, None)).unwrap();
    trie.subscribe(2, "a/b", options(1, None)).unwrap();
    trie.subscribe(2, "$share/g/a/+", options(0, None)).unwrap();
    // Replaced, not added.
    trie.subscribe(1, "a/b", options(2, Some(3))).unwrap();
    let mut got: Vec<(String, Options)> = trie
        .subscriptions_of(1)
        .map(|(f, o)| (f.to_owned(), *o))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("$share/g/a/+".to_owned(), options(2, None)),
            ("a/#".to_owned(), options(1, Some(7))),
            ("a/b".to_owned(), options(2, Some(3))),
        ]
    );
    trie.remove_subscriber(1);
    assert_eq!(trie.subscriptions_of(1).count(), 0);
    assert_eq!(trie.subscriptions_of(2).count(), 2);
}
