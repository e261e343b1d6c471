//! Topic names and topic filters: what MQTT 3.1.1 and 5.0 allow in each
//! (§4.7, §4.8.2), checked before anything is routed.

/// The longest topic name or filter, in bytes: MQTT strings carry a
/// two-byte length (§1.5.4).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name (the topic of a PUBLISH) is not acceptable (§4.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("topic name is {len} bytes long, the limit is 65535")]
    TooLong { len: usize },
    #[error("topic name contains the null character U+0000")]
    NullCharacter,
    #[error("topic name contains the wildcard '{0}'")]
    Wildcard(char),
}

/// Why a topic filter (of a SUBSCRIBE or UNSUBSCRIBE) is not acceptable
/// (§4.7.1, §4.7.3, §4.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("topic filter is empty")]
    Empty,
    #[error("topic filter is {len} bytes long, the limit is 65535")]
    TooLong { len: usize },
    #[error("topic filter contains the null character U+0000")]
    NullCharacter,
    #[error("'#' must be the whole of the last level of a topic filter")]
    MisplacedMultiLevelWildcard,
    #[error("'+' must be the whole of a topic filter level")]
    MisplacedSingleLevelWildcard,
    #[error("shared subscription has an empty share name")]
    EmptyShareName,
    #[error("share name contains a wildcard")]
    WildcardInShareName,
    #[error("shared subscription has no topic filter after its share name")]
    MissingSharedFilter,
}

/// A validated topic filter, split into its share name and the filter
/// proper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicFilter<'a> {
    /// The `{ShareName}` of `$share/{ShareName}/{filter}`, if shared.
    pub share_name: Option<&'a str>,
    /// The filter that topics are matched against, without the `$share`
    /// part.
    pub filter: &'a str,
}

/// Checks a topic name: non-empty, at most 65,535 bytes, no U+0000 and no
/// wildcard (§4.7.3, §1.5.4). Names starting with `$` are valid here;
/// whether a client may publish to them is the broker's decision.
pub fn check_topic_name(topic: &str) -> Result<(), TopicNameError> {
    if topic.is_empty() {
        return Err(TopicNameError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicNameError::TooLong { len: topic.len() });
    }
    match topic.bytes().find(|b| matches!(b, 0 | b'+' | b'#')) {
        None => Ok(()),
        Some(0) => Err(TopicNameError::NullCharacter),
        Some(b) => Err(TopicNameError::Wildcard(char::from(b))),
    }
}

/// Checks a topic filter and splits off its share name (§4.7.1, §4.7.3,
/// §4.8.2). A filter whose first level is `$share` is always read as a
/// shared subscription, for MQTT 3.1.1 clients too, as other brokers do.
pub fn check_filter(filter: &str) -> Result<TopicFilter<'_>, FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(FilterError::TooLong { len: filter.len() });
    }
    if filter.contains('\0') {
        return Err(FilterError::NullCharacter);
    }
    let parsed = split_share(filter);
    if let Some(name) = parsed.share_name {
        if name.is_empty() {
            return Err(FilterError::EmptyShareName);
        }
        // A '/' cannot be in the name: the first one after it ends it.
        if name.contains(['+', '#']) {
            return Err(FilterError::WildcardInShareName);
        }
        if parsed.filter.is_empty() {
            return Err(FilterError::MissingSharedFilter);
        }
    }
    let mut levels = parsed.filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" if levels.peek().is_none() => {}
            _ if level.contains('#') => return Err(FilterError::MisplacedMultiLevelWildcard),
            _ if level.contains('+') => return Err(FilterError::MisplacedSingleLevelWildcard),
            _ => {}
        }
    }
    Ok(parsed)
}

/// Splits `$share/{name}/{filter}` without validating it: a bare `$share`
/// or `$share/name` gives an empty filter, which [`check_filter`] rejects.
pub(crate) fn split_share(filter: &str) -> TopicFilter<'_> {
    let rest = match filter.strip_prefix("$share") {
        Some("") => "",
        Some(rest) if rest.starts_with('/') => &rest[1..],
        _ => {
            return TopicFilter {
                share_name: None,
                filter,
            };
        }
    };
    let (name, filter) = rest.split_once('/').unwrap_or((rest, ""));
    TopicFilter {
        share_name: Some(name),
        filter,
    }
}

/// Whether `filter` (a plain filter, without `$share/{group}/`) matches
/// the topic name `topic` (§4.7): `+` one level, `#` the rest including
/// the parent level, and wildcards at the first level never match a
/// topic starting with `$` (§4.7.2). The trie does the same for many
/// filters at once; this is for one filter against stored topics (retained
/// messages).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}
