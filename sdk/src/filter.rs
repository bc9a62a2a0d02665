//! Which events a reader wants: organization, type patterns and exact fields.
//!
//! The type-glob language (contract §1: `*` matches any run of characters, dots included; every
//! other character matches itself) and the matching of types and exact fields are the wire
//! crate's, which the broker's own filters use too, so a pattern means the same thing in a local
//! [`dispatch`](crate::Events::dispatch) as on the broker's streams and webhooks.

use cpod_proto::filter::{Criteria, EventKey};

use crate::model::Event;

pub use cpod_proto::filter::glob_matches;

/// A stream or subscription filter: organization, type patterns and exact fields. Empty fields
/// match everything.
///
/// ```
/// let filter = cpod_sdk::Filter::new().types(["pod.*", "*.failed"]).resource_type("pod");
/// assert_eq!(filter.types, ["pod.*", "*.failed"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Admin keys must name one (or `*`); other keys see their own organization only, and
    /// naming another is refused.
    pub organization_id: Option<String>,
    /// Type patterns; empty means every type.
    pub types: Vec<String>,
    /// Exact resource type.
    pub resource_type: Option<String>,
    /// Exact resource id.
    pub resource_id: Option<String>,
    /// Exact workspace.
    pub workspace_id: Option<String>,
}

impl Filter {
    /// Everything.
    ///
    /// ```
    /// assert_eq!(cpod_sdk::Filter::new(), cpod_sdk::Filter::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Type patterns, any of which may match.
    ///
    /// ```
    /// let filter = cpod_sdk::Filter::new().types(["pod.failed", "job.failed"]);
    /// ```
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// One organization (`*`: every one, admin keys only).
    ///
    /// ```
    /// let filter = cpod_sdk::Filter::new().organization_id("org-1");
    /// ```
    pub fn organization_id(mut self, value: impl Into<String>) -> Self {
        self.organization_id = Some(value.into());
        self
    }

    /// Exact resource type.
    ///
    /// ```
    /// let filter = cpod_sdk::Filter::new().resource_type("pod");
    /// ```
    pub fn resource_type(mut self, value: impl Into<String>) -> Self {
        self.resource_type = Some(value.into());
        self
    }

    /// Exact resource id.
    ///
    /// ```
    /// let filter = cpod_sdk::Filter::new().resource_id("pod-7f9c");
    /// ```
    pub fn resource_id(mut self, value: impl Into<String>) -> Self {
        self.resource_id = Some(value.into());
        self
    }

    /// Exact workspace.
    ///
    /// ```
    /// let filter = cpod_sdk::Filter::new().workspace_id("ws-42");
    /// ```
    pub fn workspace_id(mut self, value: impl Into<String>) -> Self {
        self.workspace_id = Some(value.into());
        self
    }

    /// Whether `event` passes, by the broker's rules.
    ///
    /// ```
    /// # let event: cpod_sdk::Event = serde_json::from_str(r#"{"id": "x", "type": "pod.failed",
    /// #   "resourceId": "p1", "resourceType": "pod", "organizationId": "org-1",
    /// #   "workspaceId": null, "payload": {}, "timestamp": "2026-05-01T12:00:00.000Z"}"#).unwrap();
    /// assert!(cpod_sdk::Filter::new().types(["*.failed"]).matches(&event));
    /// assert!(!cpod_sdk::Filter::new().workspace_id("ws-42").matches(&event));
    /// ```
    pub fn matches(&self, event: &Event) -> bool {
        self.organization_id
            .as_deref()
            .is_none_or(|o| o == "*" || o == event.organization_id)
            && Criteria {
                types: &self.types,
                resource_type: self.resource_type.as_deref(),
                resource_id: self.resource_id.as_deref(),
                workspace_id: self.workspace_id.as_deref(),
            }
            .matches(&EventKey::from(event))
    }

    /// The query-string pairs of a stream request.
    pub(crate) fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(v) = &self.organization_id {
            pairs.push(("organizationId", v.clone()));
        }
        if !self.types.is_empty() {
            pairs.push(("types", self.types.join(",")));
        }
        if let Some(v) = &self.resource_type {
            pairs.push(("resourceType", v.clone()));
        }
        if let Some(v) = &self.resource_id {
            pairs.push(("resourceId", v.clone()));
        }
        if let Some(v) = &self.workspace_id {
            pairs.push(("workspaceId", v.clone()));
        }
        pairs
    }

    /// The `filter` object of a WebSocket `subscribe` frame.
    pub(crate) fn to_ws_json(&self) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (name, value) in self.to_pairs() {
            let value = if name == "types" {
                serde_json::Value::from(self.types.clone())
            } else {
                serde_json::Value::from(value)
            };
            object.insert(name.to_owned(), value);
        }
        serde_json::Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(org: &str, event_type: &str, workspace: Option<&str>) -> Event {
        Event {
            id: "id".into(),
            event_type: event_type.into(),
            resource_id: "p1".into(),
            resource_type: "pod".into(),
            organization_id: org.into(),
            workspace_id: workspace.map(Into::into),
            payload: Default::default(),
            timestamp: "2026-05-01T12:00:00.000Z".into(),
            traceparent: None,
            tracestate: None,
        }
    }

    #[test]
    fn a_filter_checks_every_field() {
        let e = event("org-1", "pod.failed", Some("ws"));
        assert!(Filter::new().matches(&e));
        assert!(Filter::new().types(["job.*", "*.failed"]).matches(&e));
        assert!(!Filter::new().types(["job.*"]).matches(&e));
        assert!(Filter::new().organization_id("org-1").matches(&e));
        assert!(Filter::new().organization_id("*").matches(&e));
        assert!(!Filter::new().organization_id("org-2").matches(&e));
        assert!(
            Filter::new()
                .resource_type("pod")
                .resource_id("p1")
                .matches(&e)
        );
        assert!(!Filter::new().resource_id("p2").matches(&e));
        assert!(Filter::new().workspace_id("ws").matches(&e));
        assert!(
            !Filter::new()
                .workspace_id("ws")
                .matches(&event("org-1", "pod.failed", None))
        );
    }

    #[test]
    fn a_websocket_filter_carries_types_as_a_list() {
        let json = Filter::new()
            .types(["pod.*", "job.failed"])
            .resource_type("pod")
            .to_ws_json();
        assert_eq!(
            json,
            serde_json::json!({"types": ["pod.*", "job.failed"], "resourceType": "pod"})
        );
    }
}
