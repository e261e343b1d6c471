//! How MQTT topics map onto the platform (ARCHITECTURE.md, "Protocol
//! conventions"): `channels/{channel_id}/messages[/{subtopic…}]` carries a
//! channel's data; `devices/{device_id}/…` are the maintenance topics,
//! reserved to the platform and the device itself. Anything else is open
//! only in the development mode (`--mqtt-open-topics`).

use moat_core::{ChannelId, DeviceId};
use uuid::Uuid;

/// What a PUBLISH topic name addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicTarget<'a> {
    /// A channel's messages; `subtopic` is empty for the channel itself.
    Channel {
        channel: ChannelId,
        subtopic: &'a str,
    },
    /// A device's maintenance topic; `rest` follows `devices/{id}/`.
    Device { device: DeviceId, rest: &'a str },
    /// Not a platform topic.
    Other,
}

/// Reads a topic name (already checked by
/// [`check_topic_name`](crate::check_topic_name)).
pub fn topic_target(topic: &str) -> TopicTarget<'_> {
    let mut parts = topic.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("channels"), Some(id), Some("messages")) => match Uuid::try_parse(id) {
            Ok(id) => TopicTarget::Channel {
                channel: ChannelId(id),
                subtopic: parts.next().unwrap_or(""),
            },
            Err(_) => TopicTarget::Other,
        },
        (Some("devices"), Some(id), Some(_)) => match Uuid::try_parse(id) {
            Ok(uuid) => TopicTarget::Device {
                device: DeviceId(uuid),
                rest: &topic["devices/".len() + id.len() + 1..],
            },
            Err(_) => TopicTarget::Other,
        },
        _ => TopicTarget::Other,
    }
}

/// What a subscription's topic filter (without its `$share/{group}/`
/// prefix) can reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterScope {
    /// One channel's messages, with the subtopic filter after
    /// `channels/{id}/messages/` (`None`: the channel topic only, no
    /// subtopics; `Some("#")`: every subtopic and, per MQTT's `#` rule, the
    /// channel topic too).
    Channel {
        channel: ChannelId,
        subtopic: Option<String>,
    },
    /// A wildcard where the channel id goes (`channels/+/…`, `#`, `+/…`):
    /// it reaches only the channels the subscriber may read.
    AnyChannel,
    /// One device's maintenance topics.
    Device { device: DeviceId, rest: String },
    /// A wildcard where the device id goes.
    AnyDevice,
    /// Nothing on the platform; only open topics.
    Other,
}

/// Reads a topic filter (already checked by
/// [`check_filter`](crate::check_filter)); a filter may reach several
/// kinds at once (`#`), in which case the widest answer is given.
pub fn filter_scope(filter: &str) -> FilterScope {
    let levels: Vec<&str> = filter.split('/').collect();
    match levels.as_slice() {
        ["#"] | ["+", ..] => FilterScope::AnyChannel,
        ["channels", "#"] | ["channels", "+", ..] => FilterScope::AnyChannel,
        ["channels", id, rest @ ..] => {
            let Ok(id) = Uuid::try_parse(id) else {
                return FilterScope::Other;
            };
            let channel = ChannelId(id);
            match rest {
                ["#"] | ["+"] | ["+", ..] => FilterScope::Channel {
                    channel,
                    subtopic: Some("#".into()),
                },
                ["messages"] => FilterScope::Channel {
                    channel,
                    subtopic: None,
                },
                ["messages", sub @ ..] => FilterScope::Channel {
                    channel,
                    subtopic: Some(sub.join("/")),
                },
                _ => FilterScope::Other,
            }
        }
        ["devices", "#"] | ["devices", "+", ..] => FilterScope::AnyDevice,
        ["devices", id, rest @ ..] if !rest.is_empty() => match Uuid::try_parse(id) {
            Ok(id) => FilterScope::Device {
                device: DeviceId(id),
                rest: rest.join("/"),
            },
            Err(_) => FilterScope::Other,
        },
        _ => FilterScope::Other,
    }
}

/// The topic name of a channel message.
pub fn channel_topic(channel: ChannelId, subtopic: &str) -> String {
    if subtopic.is_empty() {
        format!("channels/{channel}/messages")
    } else {
        format!("channels/{channel}/messages/{subtopic}")
    }
}

/// Whether `rest` (after `devices/{id}/`) is a topic the device itself
/// reports on: its reported configuration and the results of commands.
pub fn device_may_publish(rest: &str) -> bool {
    let levels: Vec<&str> = rest.split('/').collect();
    matches!(
        levels.as_slice(),
        ["config", "reported"] | ["commands", _, "result"]
    )
}

/// Whether a device may subscribe to `rest` of its own maintenance topics:
/// the commands and the desired configuration the platform sends it.
pub fn device_may_subscribe(rest: &str) -> bool {
    let levels: Vec<&str> = rest.split('/').collect();
    matches!(
        levels.as_slice(),
        ["#"] | ["commands"] | ["commands", "#"] | ["commands", "+"] | ["config"] | ["+"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_channels_and_devices() {
        let c = Uuid::now_v7();
        assert_eq!(
            topic_target(&format!("channels/{c}/messages")),
            TopicTarget::Channel {
                channel: ChannelId(c),
                subtopic: ""
            }
        );
        assert_eq!(
            topic_target(&format!("channels/{c}/messages/a/b")),
            TopicTarget::Channel {
                channel: ChannelId(c),
                subtopic: "a/b"
            }
        );
        assert_eq!(
            topic_target(&format!("devices/{c}/config/reported")),
            TopicTarget::Device {
                device: DeviceId(c),
                rest: "config/reported"
            }
        );
        assert_eq!(
            topic_target(&format!("devices/{c}/config")),
            TopicTarget::Device {
                device: DeviceId(c),
                rest: "config"
            }
        );
        for other in [
            "channels/x/messages",
            "channels",
            &format!("channels/{c}"),
            &format!("channels/{c}/other"),
            "a/b",
            &format!("devices/{c}"),
        ] {
            assert_eq!(topic_target(other), TopicTarget::Other, "{other}");
        }
    }

    #[test]
    fn filters_say_what_they_reach() {
        let c = Uuid::now_v7();
        let ch = ChannelId(c);
        let check = |f: String, want: FilterScope| assert_eq!(filter_scope(&f), want, "{f}");
        check(
            format!("channels/{c}/messages"),
            FilterScope::Channel {
                channel: ch,
                subtopic: None,
            },
        );
        check(
            format!("channels/{c}/messages/#"),
            FilterScope::Channel {
                channel: ch,
                subtopic: Some("#".into()),
            },
        );
        check(
            format!("channels/{c}/messages/+/t"),
            FilterScope::Channel {
                channel: ch,
                subtopic: Some("+/t".into()),
            },
        );
        check(
            format!("channels/{c}/#"),
            FilterScope::Channel {
                channel: ch,
                subtopic: Some("#".into()),
            },
        );
        check("#".into(), FilterScope::AnyChannel);
        check("+/+/messages".into(), FilterScope::AnyChannel);
        check("channels/+/messages/#".into(), FilterScope::AnyChannel);
        check(
            format!("devices/{c}/commands/#"),
            FilterScope::Device {
                device: DeviceId(c),
                rest: "commands/#".into(),
            },
        );
        check("devices/+/config".into(), FilterScope::AnyDevice);
        check("a/b".into(), FilterScope::Other);
        check(format!("channels/{c}/other"), FilterScope::Other);
    }

    #[test]
    fn devices_report_and_listen_only_where_the_platform_expects() {
        assert!(device_may_publish("config/reported"));
        assert!(device_may_publish("commands/123/result"));
        assert!(!device_may_publish("config"));
        assert!(!device_may_publish("commands"));
        assert!(!device_may_publish("commands/1"));
        assert!(device_may_subscribe("commands/#"));
        assert!(device_may_subscribe("config"));
        assert!(!device_may_subscribe("config/reported"));
    }
}
