//! The data that travels: a stored [`Event`], a [`NewEvent`] to emit, a [`HistoryQuery`] and the
//! [`Page`] it answers. Field names on the wire are the contract's camelCase.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event as the broker stored it: the same JSON in history, streams and webhooks (the wire
/// crate's, which the broker serializes).
pub use cpod_proto::Event;
pub use cpod_proto::cloudevents::EventFormat;

/// An event to emit: type, resource, optional payload and workspace.
///
/// ```
/// use serde_json::json;
/// let event = cpod_sdk::NewEvent::new("custom.report.generated", "report", "r-9")
///     .payload(json!({"rows": 1240}))
///     .workspace_id("ws-42");
/// assert_eq!(
///     serde_json::to_value(&event)?,
///     json!({"type": "custom.report.generated", "resourceType": "report", "resourceId": "r-9",
///            "payload": {"rows": 1240}, "workspaceId": "ws-42"})
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    #[serde(rename = "type")]
    /// Dot-namespaced, e.g. `custom.report.generated`.
    pub event_type: String,
    /// The resource kind: `[a-z0-9_-]`, at most 64 characters.
    pub resource_type: String,
    /// The affected resource: at most 256 characters.
    pub resource_id: String,
    /// A JSON object; `None` means `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The workspace inside the organization.
    pub workspace_id: Option<String>,
    /// Only an admin key names the organization; other keys emit into their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` about the resource `resource_type`/`resource_id`.
    ///
    /// ```
    /// let event = cpod_sdk::NewEvent::new("pod.failed", "pod", "pod-7f9c");
    /// assert_eq!(event.resource_id, "pod-7f9c");
    /// ```
    pub fn new(
        event_type: impl Into<String>,
        resource_type: impl Into<String>,
        resource_id: impl Into<String>,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            resource_type: resource_type.into(),
            resource_id: resource_id.into(),
            payload: None,
            workspace_id: None,
            organization_id: None,
        }
    }

    /// The payload: a JSON object (the broker refuses anything else with `invalid_request`).
    ///
    /// ```
    /// let event = cpod_sdk::NewEvent::new("pod.failed", "pod", "p1")
    ///     .payload(serde_json::json!({"exitCode": 137}));
    /// ```
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = Some(payload);
        self
    }

    /// The workspace inside the organization.
    ///
    /// ```
    /// let event = cpod_sdk::NewEvent::new("pod.failed", "pod", "p1").workspace_id("ws-42");
    /// ```
    pub fn workspace_id(mut self, workspace_id: impl Into<String>) -> Self {
        self.workspace_id = Some(workspace_id.into());
        self
    }

    /// The organization (admin keys only).
    ///
    /// ```
    /// let event = cpod_sdk::NewEvent::new("pod.failed", "pod", "p1").organization_id("org-1");
    /// ```
    pub fn organization_id(mut self, organization_id: impl Into<String>) -> Self {
        self.organization_id = Some(organization_id.into());
        self
    }
}

/// The answer to an emit with an idempotency key.
///
/// ```
/// # fn show(emitted: cpod_sdk::Emitted) {
/// if emitted.replayed { println!("already stored as {}", emitted.event.id); }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The event as stored (the first one, when replayed).
    pub event: Event,
    /// The key was seen before with the same body: nothing new was stored and this is the
    /// first answer again (`Idempotent-Replayed: true`).
    pub replayed: bool,
}

/// The answer to a batch emit with an idempotency key.
///
/// ```
/// # fn show(emitted: cpod_sdk::EmittedBatch) {
/// println!("{} events, replayed: {}", emitted.events.len(), emitted.replayed);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EmittedBatch {
    /// The events as stored, in order.
    pub events: Vec<Event>,
    /// The key was seen before with the same body: nothing new was stored.
    pub replayed: bool,
}

/// History order.
///
/// ```
/// assert_eq!(cpod_sdk::Order::default(), cpod_sdk::Order::Desc);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest first (the broker's default).
    #[default]
    Desc,
    /// Oldest first, in store order.
    Asc,
}

impl Order {
    /// The query-string value.
    ///
    /// ```
    /// assert_eq!(cpod_sdk::Order::Asc.as_str(), "asc");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Order::Desc => "desc",
            Order::Asc => "asc",
        }
    }
}

/// A history query: filters, a time window, page size, order and cursor. Unset fields are left
/// to the broker's defaults (50 per page, newest first).
///
/// ```
/// let query = cpod_sdk::HistoryQuery::new()
///     .types(["pod.failed", "job.failed"])
///     .resource_type("pod")
///     .since("2026-05-01T00:00:00Z")
///     .limit(100);
/// assert!(query.to_pairs().contains(&("types", "pod.failed,job.failed".to_string())));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Admin keys: the organization, or `*` for every one.
    pub organization_id: Option<String>,
    /// Type patterns; any may match; empty means every type.
    pub types: Vec<String>,
    /// Exact resource type.
    pub resource_type: Option<String>,
    /// Exact resource id.
    pub resource_id: Option<String>,
    /// Exact workspace.
    pub workspace_id: Option<String>,
    /// ISO 8601: events at or after it.
    pub since: Option<String>,
    /// ISO 8601: events before it.
    pub until: Option<String>,
    /// 1 to 1000.
    pub limit: Option<u32>,
    /// Newest first (the default) or oldest first.
    pub order: Option<Order>,
    /// The `next_cursor` of the previous page (with the same filters).
    pub cursor: Option<String>,
    /// The broker's own JSON (the default) or CloudEvents; [`Events::get_history_cloudevents`]
    /// sets it.
    ///
    /// [`Events::get_history_cloudevents`]: crate::Events::get_history_cloudevents
    pub format: Option<EventFormat>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<String>) -> Self {
            self.$name = Some(value.into());
            self
        }
    )*};
}

impl HistoryQuery {
    /// Every event, newest first, 50 per page.
    ///
    /// ```
    /// assert_eq!(cpod_sdk::HistoryQuery::new(), cpod_sdk::HistoryQuery::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    setters!(
        /// Admin keys: the organization, or `*` for every one.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().organization_id("org-1");
        /// ```
        organization_id,
        /// Exact resource type.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().resource_type("pod");
        /// ```
        resource_type,
        /// Exact resource id.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().resource_id("pod-7f9c");
        /// ```
        resource_id,
        /// Exact workspace.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().workspace_id("ws-42");
        /// ```
        workspace_id,
        /// Events at or after this ISO 8601 time.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().since("2026-05-01T00:00:00Z");
        /// ```
        since,
        /// Events before this ISO 8601 time.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().until("2026-05-02T00:00:00Z");
        /// ```
        until,
        /// Continue after a page: its `next_cursor`.
        ///
        /// ```
        /// let query = cpod_sdk::HistoryQuery::new().cursor("opaque");
        /// ```
        cursor,
    );

    /// Type patterns (`pod.*`, `*.failed`); any of them matches.
    ///
    /// ```
    /// let query = cpod_sdk::HistoryQuery::new().types(["pod.*"]);
    /// ```
    pub fn types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Page size, 1 to 1000.
    ///
    /// ```
    /// let query = cpod_sdk::HistoryQuery::new().limit(1000);
    /// ```
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Newest or oldest first.
    ///
    /// ```
    /// let query = cpod_sdk::HistoryQuery::new().order(cpod_sdk::Order::Asc);
    /// ```
    pub fn order(mut self, order: Order) -> Self {
        self.order = Some(order);
        self
    }

    /// The query-string pairs, as the broker reads them.
    ///
    /// ```
    /// let pairs = cpod_sdk::HistoryQuery::new().limit(5).to_pairs();
    /// assert_eq!(pairs, vec![("limit", "5".to_string())]);
    /// ```
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let mut push = |name: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                pairs.push((name, v.clone()));
            }
        };
        push("organizationId", &self.organization_id);
        push("resourceType", &self.resource_type);
        push("resourceId", &self.resource_id);
        push("workspaceId", &self.workspace_id);
        push("since", &self.since);
        push("until", &self.until);
        push("cursor", &self.cursor);
        if !self.types.is_empty() {
            pairs.push(("types", self.types.join(",")));
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(order) = self.order {
            pairs.push(("order", order.as_str().to_owned()));
        }
        if let Some(format) = self.format {
            pairs.push(("format", format.as_str().to_owned()));
        }
        pairs
    }
}

/// One page of a list: the items, whether more follow, and the cursor that fetches them.
///
/// ```
/// let page: cpod_sdk::Page<cpod_sdk::Event> =
///     serde_json::from_str(r#"{"data": [], "hasMore": false, "nextCursor": null}"#)?;
/// assert!(page.data.is_empty() && !page.has_more && page.next_cursor.is_none());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    /// The items of this page.
    pub data: Vec<T>,
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass it as `cursor` (with the same filters) for the next page.
    pub next_cursor: Option<String>,
}
