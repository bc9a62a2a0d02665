//! The type-glob language (contract §1) and what a filter asks of an event.
//!
//! `*` matches any run of characters, dots included; every other character matches itself.
//! Patterns may only use the characters an event type can hold plus `*`, so the same pattern
//! means the same thing here, in a client's local dispatch and in SQLite's `GLOB` (which the
//! broker's store uses for history), where `?` and `[` would otherwise be special.

use crate::error::FieldError;
use crate::event::{Event, MAX_TYPE_LEN};

/// Whether `text` matches the glob `pattern` (`*` only). Iterative, linear in practice, no
/// recursion, no allocation.
///
/// ```
/// use cpod_proto::glob_matches;
/// assert!(glob_matches("pod.*", "pod.failed"));
/// assert!(glob_matches("*.failed", "job.failed"));
/// assert!(glob_matches("custom.*", "custom.report.generated"));
/// assert!(!glob_matches("pod.*", "pod"));
/// ```
#[inline]
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// One type pattern, e.g. `pod.*`, `*.failed`, `*`: valid by construction.
///
/// ```
/// let pattern = cpod_proto::TypePattern::parse("pod.*").unwrap();
/// assert!(pattern.matches("pod.failed"));
/// assert_eq!(cpod_proto::TypePattern::parse("pod.?").unwrap_err().field, "types");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    /// A pattern of `[a-z0-9_.-]` and `*`, 1 to [`MAX_TYPE_LEN`] characters; refused as the
    /// field `types`.
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new("types", "a type pattern must not be empty"));
        }
        if raw.len() > MAX_TYPE_LEN {
            return Err(FieldError::new(
                "types",
                format!("a type pattern is at most {MAX_TYPE_LEN} characters"),
            ));
        }
        let allowed = |c: char| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.' | '*')
        };
        if !raw.chars().all(allowed) {
            return Err(FieldError::new(
                "types",
                format!("type pattern `{raw}` may only contain [a-z0-9_.-] and `*`"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `event_type` matches this glob.
    pub fn matches(&self, event_type: &str) -> bool {
        glob_matches(&self.0, event_type)
    }
}

impl AsRef<str> for TypePattern {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The most type patterns one filter (a history query, a stream, a WebSocket subscription, a
/// webhook endpoint) may hold. Each is at most [`MAX_TYPE_LEN`] characters.
pub const MAX_TYPE_PATTERNS: usize = 100;

/// Parses a list of patterns given comma-separated and/or repeated (`types=a,b&types=c`): at
/// most [`MAX_TYPE_PATTERNS`], each checked by [`TypePattern::parse`].
///
/// ```
/// let list = cpod_proto::filter::parse_type_list(["pod.*,job.failed", "custom.*"]).unwrap();
/// assert_eq!(list.len(), 3);
/// ```
pub fn parse_type_list<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<TypePattern>, FieldError> {
    let raw: Vec<&str> = values.into_iter().flat_map(|v| v.split(',')).collect();
    check_type_count(raw.len())?;
    raw.into_iter()
        .map(|p| TypePattern::parse(p.trim()))
        .collect()
}

/// Refuses a list of more than [`MAX_TYPE_PATTERNS`] patterns (counted before any is parsed, so
/// a huge list costs nothing more).
///
/// ```
/// assert!(cpod_proto::filter::check_type_count(100).is_ok());
/// assert_eq!(cpod_proto::filter::check_type_count(101).unwrap_err().field, "types");
/// ```
pub fn check_type_count(count: usize) -> Result<(), FieldError> {
    if count > MAX_TYPE_PATTERNS {
        return Err(FieldError::new(
            "types",
            format!("types holds at most {MAX_TYPE_PATTERNS} patterns (got {count})"),
        ));
    }
    Ok(())
}

/// The fields of an event a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKey<'a> {
    /// The event's organization.
    pub organization_id: &'a str,
    /// The event's type, e.g. `pod.failed`.
    pub event_type: &'a str,
    /// The resource kind.
    pub resource_type: &'a str,
    /// The resource.
    pub resource_id: &'a str,
    /// The workspace, if any.
    pub workspace_id: Option<&'a str>,
}

impl<'a> From<&'a Event> for EventKey<'a> {
    fn from(event: &'a Event) -> Self {
        Self {
            organization_id: &event.organization_id,
            event_type: &event.event_type,
            resource_type: &event.resource_type,
            resource_id: &event.resource_id,
            workspace_id: event.workspace_id.as_deref(),
        }
    }
}

/// What a filter asks of an event besides its organization (whose scope each side words its
/// own way): one of its type patterns (none: any type) and each exact field it names.
///
/// ```
/// use cpod_proto::filter::{Criteria, EventKey};
/// let event = EventKey { organization_id: "org-1", event_type: "pod.failed",
///     resource_type: "pod", resource_id: "p1", workspace_id: None };
/// let criteria = Criteria { types: &["*.failed"], resource_type: Some("pod"), ..Criteria::ANY };
/// assert!(criteria.matches(&event));
/// assert!(!Criteria { workspace_id: Some("ws-42"), ..criteria }.matches(&event));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Criteria<'a, P> {
    /// Type patterns, any of which may match; empty means every type.
    pub types: &'a [P],
    /// Exact resource type.
    pub resource_type: Option<&'a str>,
    /// Exact resource id.
    pub resource_id: Option<&'a str>,
    /// Exact workspace.
    pub workspace_id: Option<&'a str>,
}

impl<P> Criteria<'_, P> {
    /// Asks nothing: every event matches.
    pub const ANY: Self = Self {
        types: &[],
        resource_type: None,
        resource_id: None,
        workspace_id: None,
    };
}

impl<P: AsRef<str>> Criteria<'_, P> {
    /// Whether `event` meets every criterion.
    pub fn matches(&self, event: &EventKey<'_>) -> bool {
        (self.types.is_empty()
            || self
                .types
                .iter()
                .any(|p| glob_matches(p.as_ref(), event.event_type)))
            && self.resource_type.is_none_or(|v| v == event.resource_type)
            && self.resource_id.is_none_or(|v| v == event.resource_id)
            && self
                .workspace_id
                .is_none_or(|v| Some(v) == event.workspace_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_the_contract_says() {
        let table = [
            ("pod.*", "pod.failed", true),
            ("pod.*", "pod", false),
            ("pod.*", "person.created", false),
            ("custom.*", "custom.report.generated", true),
            ("*.failed", "pod.failed", true),
            ("*.failed", "job.failed", true),
            ("*.failed", "job.completed", false),
            ("*", "anything.at.all", true),
            ("pod.failed", "pod.failed", true),
            ("pod.failed", "pod.failedx", false),
            ("p*d.*ed", "pod.failed", true),
            ("*o*.*", "pod.failed", true),
            ("custom.*.generated", "custom.report.generated", true),
            ("custom.*.generated", "custom.generated", false),
            ("**", "x.y", true),
            (
                "a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
        ];
        for (p, t, expected) in table {
            assert_eq!(glob_matches(p, t), expected, "{p} vs {t}");
            assert_eq!(TypePattern::parse(p).unwrap().matches(t), expected);
        }
    }

    #[test]
    fn patterns_with_other_characters_are_refused() {
        for p in ["", "Pod.*", "pod.?", "pod.[a]", "a b", "pod/*"] {
            assert_eq!(TypePattern::parse(p).unwrap_err().field, "types", "{p}");
        }
        let long = "a".repeat(MAX_TYPE_LEN + 1);
        assert!(TypePattern::parse(&long).is_err());
    }

    #[test]
    fn type_lists_split_on_commas_and_repeat() {
        let list = parse_type_list(["pod.*,job.failed", "custom.*"]).unwrap();
        let names: Vec<&str> = list.iter().map(TypePattern::as_str).collect();
        assert_eq!(names, ["pod.*", "job.failed", "custom.*"]);
        assert!(parse_type_list(["pod.*,"]).is_err());
    }

    #[test]
    fn a_type_list_holds_at_most_the_maximum_number_of_patterns() {
        let at_most: Vec<String> = (0..MAX_TYPE_PATTERNS).map(|i| format!("a.b{i}")).collect();
        assert_eq!(
            parse_type_list(at_most.iter().map(String::as_str))
                .unwrap()
                .len(),
            MAX_TYPE_PATTERNS
        );
        let joined = format!("{},a.more", at_most.join(","));
        let error = parse_type_list([joined.as_str()]).unwrap_err();
        assert_eq!(error.field, "types");
        assert!(error.message.contains("at most 100"), "{}", error.message);
        let repeated = at_most.iter().map(String::as_str).chain(["a.more"]);
        assert!(parse_type_list(repeated).is_err());
        let long = format!("a.{}", "b".repeat(MAX_TYPE_LEN));
        assert_eq!(parse_type_list([long.as_str()]).unwrap_err().field, "types");
    }

    #[test]
    fn criteria_check_every_field() {
        let event = EventKey {
            organization_id: "org-1",
            event_type: "pod.failed",
            resource_type: "pod",
            resource_id: "p1",
            workspace_id: Some("ws"),
        };
        let any = Criteria::<&str>::ANY;
        assert!(any.matches(&event));
        assert!(
            Criteria {
                types: &["job.*", "*.failed"],
                ..any
            }
            .matches(&event)
        );
        assert!(
            !Criteria {
                types: &["job.*"],
                ..any
            }
            .matches(&event)
        );
        let exact = Criteria {
            resource_type: Some("pod"),
            resource_id: Some("p1"),
            workspace_id: Some("ws"),
            ..any
        };
        assert!(exact.matches(&event));
        assert!(
            !Criteria {
                resource_id: Some("p2"),
                ..exact
            }
            .matches(&event)
        );
        let no_workspace = EventKey {
            workspace_id: None,
            ..event
        };
        assert!(!exact.matches(&no_workspace));
    }
}
