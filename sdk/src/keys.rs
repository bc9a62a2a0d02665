//! `client.keys()`: create, list and revoke API keys (`/v1/keys`; admin and service keys).

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::api::{Api, path_segment};
use crate::error::Result;

/// API keys of one broker. Get it with [`CpodClient::keys`](crate::CpodClient::keys).
///
/// ```
/// # let client = cpod_sdk::CpodClient::new("http://127.0.0.1:8080", "cpk_x")?;
/// let keys: cpod_sdk::Keys = client.keys();
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Keys {
    pub(crate) api: Api,
}

/// A key as listed: never its secret.
///
/// ```
/// let key: cpod_sdk::keys::KeyInfo = serde_json::from_str(r#"{"id": "k1", "organizationId": "org-1",
///     "role": "reader", "name": "dashboard", "createdAt": "2026-05-01T12:00:00.000Z"}"#)?;
/// assert_eq!(key.role, "reader");
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    /// The key's id (a UUID).
    pub id: String,
    /// `None` for the admin key.
    pub organization_id: Option<String>,
    /// `admin`, `service`, `app` or `reader`.
    pub role: String,
    /// A name for people.
    pub name: String,
    /// ISO 8601 UTC.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Set on the answer to a revocation.
    pub revoked_at: Option<String>,
}

/// A new key: its description and its secret, shown this once.
///
/// ```
/// # fn show(created: cpod_sdk::keys::CreatedKey) {
/// println!("{} ({}): {}", created.info.name, created.info.role, created.key);
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    /// Everything but the secret.
    pub info: KeyInfo,
    /// The secret (`cpk_…`).
    pub key: String,
}

/// What [`Keys::create`] asks for.
///
/// ```
/// let new = cpod_sdk::keys::NewKey::new("reader", "dashboard").organization_id("org-1");
/// assert_eq!(serde_json::to_value(&new)?, serde_json::json!(
///     {"role": "reader", "name": "dashboard", "organizationId": "org-1"}));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewKey {
    /// `service`, `app` or `reader`.
    pub role: String,
    /// A name for people, 1 to 200 characters.
    pub name: String,
    /// Admin keys must name it; service keys create keys of their own organization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
}

impl NewKey {
    /// A key of `role` called `name`.
    ///
    /// ```
    /// let new = cpod_sdk::keys::NewKey::new("app", "billing");
    /// ```
    pub fn new(role: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            name: name.into(),
            organization_id: None,
        }
    }

    /// The organization (admin keys only).
    ///
    /// ```
    /// let new = cpod_sdk::keys::NewKey::new("app", "billing").organization_id("org-1");
    /// ```
    pub fn organization_id(mut self, organization_id: impl Into<String>) -> Self {
        self.organization_id = Some(organization_id.into());
        self
    }
}

#[derive(Deserialize)]
struct List {
    data: Vec<KeyInfo>,
}

impl Keys {
    /// Creates a key; the broker emits `credential.created`.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let created = client.keys().create(&cpod_sdk::keys::NewKey::new("reader", "dashboard")).await?;
    /// println!("give this to the dashboard: {}", created.key);
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, new: &NewKey) -> Result<CreatedKey> {
        let request = self.api.request(Method::POST, "/v1/keys").json(new);
        self.api.send(request).await
    }

    /// Active keys (admin: of every organization, or of `organization_id`).
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// for key in client.keys().list(None).await? {
    ///     println!("{} {} {}", key.id, key.role, key.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, organization_id: Option<&str>) -> Result<Vec<KeyInfo>> {
        let mut request = self.api.request(Method::GET, "/v1/keys");
        if let Some(org) = organization_id {
            request = request.query(&[("organizationId", org)]);
        }
        Ok(self.api.send::<List>(request).await?.data)
    }

    /// Revokes a key: it gets `unauthorized` from then on and its streams close.
    ///
    /// ```no_run
    /// # async fn run(client: cpod_sdk::CpodClient) -> cpod_sdk::Result<()> {
    /// let revoked = client.keys().revoke("0193…").await?;
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self, id: &str) -> Result<KeyInfo> {
        let request = self
            .api
            .request(Method::DELETE, &format!("/v1/keys/{}", path_segment(id)));
        self.api.send(request).await
    }
}
