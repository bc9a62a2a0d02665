//! Which events a reader wants: an organization scope, type globs and exact fields.
//!
//! The glob language (contract §1) and the matching of types and exact fields are the wire
//! crate's ([`cpod_proto::filter`]), so that a client's local dispatch and the broker can never
//! disagree on what a pattern means; what is the broker's own is the organization scope (which a
//! key's role decides) and the checking of exact values as the event fields they must equal.

use crate::event::{FieldError, OrganizationId, ResourceId, ResourceType, WorkspaceId};
use cpod_proto::filter::Criteria;

pub use cpod_proto::filter::{
    EventKey, MAX_TYPE_PATTERNS, TypePattern, check_type_count, parse_type_list,
};

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
            && Criteria {
                types: &self.types,
                resource_type: self.resource_type.as_deref(),
                resource_id: self.resource_id.as_deref(),
                workspace_id: self.workspace_id.as_deref(),
            }
            .matches(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> TypePattern {
        TypePattern::parse(p).unwrap()
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
