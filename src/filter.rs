//! Which events a reader wants: an organization scope, type globs and exact fields.
//!
//! The glob language (contract §1): `*` matches any run of characters, dots included; every
//! other character matches itself. Patterns may only use the characters an event type can hold
//! plus `*`, so the same pattern means the same thing here and in SQLite's `GLOB` (which the
//! store uses for history), where `?` and `[` would otherwise be special. The matching itself is
//! the SDK's [`cpod_sdk::filter::glob_matches`], so that a client's local dispatch and the
//! broker can never disagree on what a pattern means.

use crate::event::{
    FieldError, MAX_TYPE_LEN, OrganizationId, ResourceId, ResourceType, WorkspaceId,
};

/// The most type patterns one filter (a history query, a stream, a WebSocket subscription, a
/// webhook endpoint) may hold. Each is at most [`MAX_TYPE_LEN`] characters.
pub const MAX_TYPE_PATTERNS: usize = 100;

/// One type pattern, e.g. `pod.*`, `*.failed`, `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `event_type` matches this glob.
    pub fn matches(&self, event_type: &str) -> bool {
        cpod_sdk::filter::glob_matches(&self.0, event_type)
    }
}

/// The organizations a reader sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgScope {
    One(OrganizationId),
    /// `organizationId=*`, admin only.
    All,
}

impl OrgScope {
    pub fn includes(&self, organization_id: &str) -> bool {
        match self {
            OrgScope::One(org) => org.as_str() == organization_id,
            OrgScope::All => true,
        }
    }
}

/// A reader's filter: what history returns and what a stream delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub organization: OrgScope,
    /// Empty means every type.
    pub types: Vec<TypePattern>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub workspace_id: Option<String>,
}

/// The fields of an event a filter looks at.
pub struct EventKey<'a> {
    pub organization_id: &'a str,
    pub event_type: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub workspace_id: Option<&'a str>,
}

impl Filter {
    pub fn for_scope(organization: OrgScope) -> Self {
        Self {
            organization,
            types: Vec::new(),
            resource_type: None,
            resource_id: None,
            workspace_id: None,
        }
    }

    /// A filter from raw values (a query string, a WebSocket frame), each exact-match value
    /// checked as the event field it must equal, so that a value no event can have is refused.
    pub fn new(
        organization: OrgScope,
        types: Vec<TypePattern>,
        resource_type: Option<&str>,
        resource_id: Option<&str>,
        workspace_id: Option<&str>,
    ) -> Result<Self, FieldError> {
        Ok(Self {
            organization,
            types,
            resource_type: resource_type
                .map(|v| ResourceType::parse(v).map(|t| t.as_str().to_owned()))
                .transpose()?,
            resource_id: resource_id
                .map(|v| ResourceId::parse(v).map(|t| t.as_str().to_owned()))
                .transpose()?,
            workspace_id: workspace_id
                .map(|v| WorkspaceId::parse(v).map(|t| t.as_str().to_owned()))
                .transpose()?,
        })
    }

    pub fn matches(&self, event: &EventKey<'_>) -> bool {
        self.organization.includes(event.organization_id)
            && (self.types.is_empty() || self.types.iter().any(|p| p.matches(event.event_type)))
            && self
                .resource_type
                .as_deref()
                .is_none_or(|v| v == event.resource_type)
            && self
                .resource_id
                .as_deref()
                .is_none_or(|v| v == event.resource_id)
            && self
                .workspace_id
                .as_deref()
                .is_none_or(|v| Some(v) == event.workspace_id)
    }
}

/// Parses a list of patterns given comma-separated and/or repeated (`types=a,b&types=c`): at
/// most [`MAX_TYPE_PATTERNS`], each checked by [`TypePattern::parse`].
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
pub fn check_type_count(count: usize) -> Result<(), FieldError> {
    if count > MAX_TYPE_PATTERNS {
        return Err(FieldError::new(
            "types",
            format!("types holds at most {MAX_TYPE_PATTERNS} patterns (got {count})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> TypePattern {
        TypePattern::parse(p).unwrap()
    }

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
            assert_eq!(pattern(p).matches(t), expected, "{p} vs {t}");
        }
    }

    #[test]
    fn patterns_with_other_characters_are_refused() {
        for p in ["", "Pod.*", "pod.?", "pod.[a]", "a b", "pod/*"] {
            assert!(TypePattern::parse(p).is_err(), "{p}");
        }
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
    fn a_filter_checks_every_field() {
        let org = OrganizationId::parse("org-1").unwrap();
        let event = EventKey {
            organization_id: "org-1",
            event_type: "pod.failed",
            resource_type: "pod",
            resource_id: "p1",
            workspace_id: Some("ws"),
        };
        let mut filter = Filter::for_scope(OrgScope::One(org.clone()));
        assert!(filter.matches(&event));
        filter.types = vec![pattern("job.*"), pattern("*.failed")];
        assert!(filter.matches(&event));
        filter.resource_type = Some("pod".into());
        filter.resource_id = Some("p1".into());
        filter.workspace_id = Some("ws".into());
        assert!(filter.matches(&event));
        filter.workspace_id = Some("other".into());
        assert!(!filter.matches(&event));
        filter.workspace_id = None;
        filter.types = vec![pattern("job.*")];
        assert!(!filter.matches(&event));
        let other_org = Filter::for_scope(OrgScope::One(OrganizationId::parse("org-2").unwrap()));
        assert!(!other_org.matches(&event));
        assert!(Filter::for_scope(OrgScope::All).matches(&event));
    }
}
