//! API keys, roles and the [`Principal`] extractor (contract §2).
//!
//! A key is `cpk_` + 43 URL-safe random characters (32 bytes of entropy) and is stored only as
//! its SHA-256 (a fast hash is right for secrets with this much entropy). Authenticated keys are
//! cached for [`CACHE_TTL`]; revoking a key on this node evicts it at once. The per-key rate
//! limit is checked here too, so every authenticated endpoint is covered.

use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use futures_util::future::LocalBoxFuture;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::event::{EventType, Namespace, OrganizationId};
use crate::filter::OrgScope;
use crate::startup::AppState;
use crate::store::{KeyRecord, Store};
use crate::tickets::{TicketClaims, TicketSigner};

pub const KEY_PREFIX: &str = "cpk_";
/// How long an authenticated key is trusted without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Service,
    App,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Service => "service",
            Role::App => "app",
            Role::Reader => "reader",
        }
    }

    /// Whether this role may emit events of this type (contract §1's catalogue).
    pub fn may_emit(self, event_type: &EventType) -> bool {
        match event_type.namespace() {
            Namespace::Credential => false,
            Namespace::Custom => matches!(self, Role::Admin | Role::Service | Role::App),
            Namespace::Person | Namespace::Pod | Namespace::Job => {
                matches!(self, Role::Admin | Role::Service)
            }
        }
    }

    /// Whether this role may create and revoke keys of role `target`.
    pub fn may_manage(self, target: Role) -> bool {
        match self {
            Role::Admin => target != Role::Admin,
            Role::Service => matches!(target, Role::App | Role::Reader),
            Role::App | Role::Reader => false,
        }
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "admin" => Ok(Role::Admin),
            "service" => Ok(Role::Service),
            "app" => Ok(Role::App),
            "reader" => Ok(Role::Reader),
            _ => Err(()),
        }
    }
}

/// A freshly generated key: the secret (shown once) and what is stored.
pub struct GeneratedKey {
    pub secret: String,
    pub hash: [u8; 32],
}

pub fn generate_key() -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    GeneratedKey {
        hash: hash_secret(&secret),
        secret,
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether a configured key has the contract's shape: `cpk_` + at least 32 URL-safe characters.
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() >= 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Who is calling: the authenticated key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    pub role: Role,
    /// `None` for admin keys, which span every organization.
    pub organization_id: Option<OrganizationId>,
}

impl Principal {
    fn from_record(record: &KeyRecord) -> Self {
        Self {
            key_id: record.id,
            role: record.role,
            organization_id: record.organization_id.clone(),
        }
    }

    pub fn require(&self, allowed: &[Role]) -> Result<(), ApiError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "a {} key may not do this",
                self.role.as_str()
            )))
        }
    }

    /// The one organization a request acts on: an org-scoped key's own (naming another is
    /// 403); an admin key must name one (400 naming `param` otherwise).
    pub fn organization(
        &self,
        requested: Option<&OrganizationId>,
        param: &str,
    ) -> Result<OrganizationId, ApiError> {
        match (&self.organization_id, requested) {
            (Some(own), None) => Ok(own.clone()),
            (Some(own), Some(asked)) if own == asked => Ok(own.clone()),
            (Some(_), Some(_)) => Err(ApiError::Forbidden(
                "this key may not act on another organization".into(),
            )),
            (None, Some(asked)) => Ok(asked.clone()),
            (None, None) => Err(ApiError::invalid(
                param,
                format!("an admin key must name {param}"),
            )),
        }
    }

    /// The organizations a read covers, from an `organizationId` parameter (`*`: every one,
    /// admin only).
    pub fn read_scope(&self, requested: Option<&str>) -> Result<OrgScope, ApiError> {
        if requested == Some("*") {
            return match self.role {
                Role::Admin => Ok(OrgScope::All),
                _ => Err(ApiError::Forbidden(
                    "only an admin key may read every organization".into(),
                )),
            };
        }
        let requested = requested.map(OrganizationId::parse).transpose()?;
        self.organization(requested.as_ref(), "organizationId")
            .map(OrgScope::One)
    }

    /// The scope label idempotency keys live in.
    pub fn idempotency_scope(&self) -> String {
        match &self.organization_id {
            Some(org) => org.as_str().to_owned(),
            None => format!("*admin:{}", self.key_id),
        }
    }
}

/// Turns bearer keys into principals: a TTL cache in front of the store, plus the rate limit.
pub struct Authenticator {
    store: Store,
    /// Bumped by every eviction: a lookup that overlapped one does not fill the cache, so a key
    /// read as active just before its revocation is not trusted for another `CACHE_TTL`.
    evictions: std::sync::atomic::AtomicU64,
    tickets: TicketSigner,
    cache: DashMap<[u8; 32], (Principal, Instant)>,
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
}

impl Authenticator {
    pub fn new(store: Store, rate_limit_per_second: Option<NonZeroU32>) -> Self {
        Self {
            tickets: TicketSigner::new(store.ticket_secret()),
            evictions: std::sync::atomic::AtomicU64::new(0),
            store,
            cache: DashMap::new(),
            limiter: rate_limit_per_second.map(|n| RateLimiter::keyed(Quota::per_second(n))),
        }
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let unauthorized = |m: &str| ApiError::Unauthorized(m.to_owned());
        let header = authorization
            .ok_or_else(|| unauthorized("missing API key: send `Authorization: Bearer cpk_…`"))?;
        let secret = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
        let hash = hash_secret(secret);
        let cached = self
            .cache
            .get(&hash)
            .filter(|entry| entry.1.elapsed() < CACHE_TTL)
            .map(|entry| entry.0.clone());
        let principal = match cached {
            Some(p) => p,
            None => {
                let epoch = self.evictions.load(std::sync::atomic::Ordering::Acquire);
                let record = self.store.active_key_by_hash(hash).await?;
                let Some(record) = record else {
                    self.cache.remove(&hash);
                    return Err(unauthorized("unknown or revoked API key"));
                };
                let principal = Principal::from_record(&record);
                if self.evictions.load(std::sync::atomic::Ordering::Acquire) == epoch {
                    self.cache.insert(hash, (principal.clone(), Instant::now()));
                }
                principal
            }
        };
        self.check_rate(&principal)?;
        Ok(principal)
    }

    /// Authenticates a stream: by key when an `Authorization` header is present, else by
    /// ticket. Answers the principal and, for a ticket, when it expires.
    pub async fn authenticate_stream(
        &self,
        authorization: Option<&str>,
        ticket: Option<&str>,
    ) -> Result<(Principal, Option<i64>), ApiError> {
        if authorization.is_some() || ticket.is_none() {
            return Ok((self.authenticate(authorization).await?, None));
        }
        let ticket = ticket.unwrap_or_default();
        let invalid = || ApiError::Unauthorized("unknown, expired or revoked stream ticket".into());
        let claims = self
            .tickets
            .verify(ticket, crate::event::unix_now_ms())
            .ok_or_else(invalid)?;
        let record = self
            .store
            .active_key(claims.key_id)
            .await?
            .ok_or_else(invalid)?;
        let principal = Principal::from_record(&record);
        self.check_rate(&principal)?;
        Ok((principal, Some(claims.expires_ms)))
    }

    /// A ticket for this principal's key, valid for `ttl_secs`.
    pub fn issue_ticket(&self, principal: &Principal, expires_ms: i64) -> String {
        self.tickets.issue(TicketClaims {
            key_id: principal.key_id,
            expires_ms,
        })
    }

    fn check_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check_key(&principal.key_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Forgets a revoked key at once on this node.
    pub fn evict(&self, key_id: Uuid) {
        self.evictions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.retain(|_, (p, _)| p.key_id != key_id);
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let authorization = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let state: Arc<AppState> = state
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState is not registered")))?
                .into_inner();
            let authorization = authorization.transpose().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not ASCII".into())
            })?;
            state.auth.authenticate(authorization.as_deref()).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_contract_shape_and_differ() {
        let a = generate_key();
        let b = generate_key();
        assert!(is_well_formed(&a.secret), "{}", a.secret);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.hash, hash_secret(&a.secret));
        assert!(!is_well_formed("cpk_short"));
        assert!(!is_well_formed(&format!("xyz_{}", "a".repeat(40))));
    }

    #[test]
    fn roles_emit_what_the_catalogue_allows() {
        let t = |s: &str| EventType::parse(s).unwrap();
        assert!(Role::Service.may_emit(&t("pod.failed")));
        assert!(Role::Service.may_emit(&t("custom.x")));
        assert!(!Role::App.may_emit(&t("pod.failed")));
        assert!(Role::App.may_emit(&t("custom.x")));
        assert!(!Role::Reader.may_emit(&t("custom.x")));
        for role in [Role::Admin, Role::Service, Role::App, Role::Reader] {
            assert!(!role.may_emit(&t("credential.created")));
        }
    }

    #[test]
    fn services_manage_only_apps_and_readers() {
        assert!(Role::Service.may_manage(Role::App));
        assert!(Role::Service.may_manage(Role::Reader));
        assert!(!Role::Service.may_manage(Role::Service));
        assert!(Role::Admin.may_manage(Role::Service));
        assert!(!Role::App.may_manage(Role::Reader));
    }

    #[test]
    fn organization_scoping_follows_the_contract() {
        let org = OrganizationId::parse("org-1").unwrap();
        let other = OrganizationId::parse("org-2").unwrap();
        let app = Principal {
            key_id: Uuid::nil(),
            role: Role::App,
            organization_id: Some(org.clone()),
        };
        assert_eq!(app.organization(None, "organizationId").unwrap(), org);
        assert_eq!(app.organization(Some(&org), "organizationId").unwrap(), org);
        assert!(matches!(
            app.organization(Some(&other), "organizationId"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            app.read_scope(Some("*")),
            Err(ApiError::Forbidden(_))
        ));
        let admin = Principal {
            key_id: Uuid::nil(),
            role: Role::Admin,
            organization_id: None,
        };
        assert!(matches!(
            admin.organization(None, "organizationId"),
            Err(ApiError::InvalidRequest { .. })
        ));
        assert_eq!(admin.read_scope(Some("*")).unwrap(), OrgScope::All);
        assert_eq!(
            admin.read_scope(Some("org-2")).unwrap(),
            OrgScope::One(other)
        );
    }
}
