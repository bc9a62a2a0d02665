//! Authentication (contract §2): bearer keys and stream tickets become a [`Principal`], who may
//! then do what its role allows in its organization.
//!
//! Authenticated keys are cached for [`CACHE_TTL`]. A revocation evicts the key at once on the
//! node that took it, and on every node when the commit feed brings it ([`follow_revocations`]).
//! The per-key rate limit is checked here too, so every authenticated endpoint is covered: in
//! memory for one process, and on a store several nodes share ([`Store::is_shared`]) through one
//! token bucket per key in the database, so that the limit holds for the cluster as a whole
//! ([`SharedLimiter`]). The HTTP extractor that calls this lives in `http::state`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;
use crate::event::OrganizationId;
use crate::filter::OrgScope;
use crate::keys::{KeyRecord, Role, hash_secret};
use crate::store::{Change, FeedReader, Store, StoreError};
use crate::tickets::{TicketClaims, TicketSigner};

/// How long an authenticated key is trusted without asking the store again.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

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
    limiter: Option<Limiter>,
}

/// The per-key rate limit of one process, or of every node together.
enum Limiter {
    Local(DefaultKeyedRateLimiter<Uuid>),
    Shared(SharedLimiter),
}

/// A key's requests across every node: each node takes tokens from the key's bucket in the
/// database in chunks of [`SHARED_CHUNK`] of a second's worth, spends them locally, and drops
/// what it has not spent after [`SHARED_HOLD`]. Whatever the spread of requests over the nodes,
/// the cluster accepts at most the bucket's one second of burst plus the rate over any window
/// (10 % over the limit across 10 s), and wastes at most a chunk per node per hold.
struct SharedLimiter {
    per_second: u32,
    chunk: u32,
    held: DashMap<Uuid, Held>,
}

/// What one node holds of a key's bucket.
#[derive(Clone, Copy)]
struct Held {
    tokens: u32,
    /// When the tokens were taken (they are dropped after [`SHARED_HOLD`]).
    taken: Instant,
    /// The bucket was empty: refuse locally until then without asking again.
    refused_until: Option<Instant>,
}

/// The share of a second's worth of tokens a node takes at a time.
const SHARED_CHUNK: u32 = 20;
/// How long a node keeps tokens it took and has not spent.
const SHARED_HOLD: Duration = Duration::from_millis(500);

impl SharedLimiter {
    fn new(per_second: NonZeroU32) -> Self {
        let per_second = per_second.get();
        Self {
            per_second,
            chunk: (per_second / SHARED_CHUNK).max(1),
            held: DashMap::new(),
        }
    }

    /// Spends one token of `key`, taking more from the database when none is held.
    async fn check(&self, store: &Store, key: Uuid) -> Result<(), ApiError> {
        let now = Instant::now();
        if let Some(mut held) = self.held.get_mut(&key) {
            if let Some(until) = held.refused_until {
                if now < until {
                    return Err(rate_limited(until - now));
                }
                held.refused_until = None;
            }
            if held.tokens > 0 && now.duration_since(held.taken) < SHARED_HOLD {
                held.tokens -= 1;
                return Ok(());
            }
        }
        let grant = store
            .take_rate_tokens(key, self.per_second, self.chunk)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("a shared rate limit on an unshared store"))
            })?;
        let now = Instant::now();
        let mut held = self.held.entry(key).or_insert(Held {
            tokens: 0,
            taken: now,
            refused_until: None,
        });
        if grant.granted == 0 {
            held.refused_until = Some(now + grant.retry_after);
            return Err(rate_limited(grant.retry_after));
        }
        if now.duration_since(held.taken) >= SHARED_HOLD {
            held.tokens = 0;
        }
        held.tokens += grant.granted - 1;
        held.taken = now;
        Ok(())
    }

    /// Forgets keys whose tokens have run out of time (called now and then).
    fn sweep(&self) {
        let now = Instant::now();
        self.held.retain(|_, h| {
            now.duration_since(h.taken) < SHARED_HOLD || h.refused_until.is_some_and(|u| u > now)
        });
    }
}

fn rate_limited(wait: Duration) -> ApiError {
    ApiError::RateLimited {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

impl Authenticator {
    pub fn new(store: Store, rate_limit_per_second: Option<NonZeroU32>) -> Self {
        let limiter = rate_limit_per_second.map(|n| {
            if store.is_shared() {
                Limiter::Shared(SharedLimiter::new(n))
            } else {
                Limiter::Local(RateLimiter::keyed(Quota::per_second(n)))
            }
        });
        Self {
            tickets: TicketSigner::new(store.ticket_secret()),
            evictions: std::sync::atomic::AtomicU64::new(0),
            store,
            cache: DashMap::new(),
            limiter,
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
        self.check_rate(&principal).await?;
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
            .verify(ticket, self.store.clock().now_ms())
            .ok_or_else(invalid)?;
        let record = self
            .store
            .active_key(claims.key_id)
            .await?
            .ok_or_else(invalid)?;
        let principal = Principal::from_record(&record);
        self.check_rate(&principal).await?;
        Ok((principal, Some(claims.expires_ms)))
    }

    /// A ticket for this principal's key, valid for `ttl_secs`.
    pub fn issue_ticket(&self, principal: &Principal, expires_ms: i64) -> String {
        self.tickets.issue(TicketClaims {
            key_id: principal.key_id,
            expires_ms,
        })
    }

    async fn check_rate(&self, principal: &Principal) -> Result<(), ApiError> {
        match &self.limiter {
            None => Ok(()),
            Some(Limiter::Local(limiter)) => {
                limiter.check_key(&principal.key_id).map_err(|not_until| {
                    rate_limited(not_until.wait_time_from(governor::clock::Clock::now(
                        &governor::clock::DefaultClock::default(),
                    )))
                })
            }
            Some(Limiter::Shared(limiter)) => limiter.check(&self.store, principal.key_id).await,
        }
    }

    /// Forgets rate-limit state that no longer matters: keys idle long enough to have a full
    /// bucket again.
    pub fn sweep_rate_limits(&self) {
        match &self.limiter {
            Some(Limiter::Local(limiter)) => limiter.retain_recent(),
            Some(Limiter::Shared(limiter)) => limiter.sweep(),
            None => {}
        }
    }

    /// Forgets a revoked key at once on this node.
    pub fn evict(&self, key_id: Uuid) {
        self.evictions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.retain(|_, (p, _)| p.key_id != key_id);
    }

    /// Forgets every cached key: each is looked up again on its next use.
    pub fn evict_all(&self) {
        self.evictions
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.cache.clear();
    }
}

/// Follows the commit feed until it ends or `shutdown` is cancelled: evicts revoked keys from
/// the cache (and everything, when the feed may have lost changes).
pub async fn follow_revocations(
    authenticator: std::sync::Arc<Authenticator>,
    mut feed: FeedReader,
    shutdown: CancellationToken,
) {
    loop {
        let commit = tokio::select! {
            _ = shutdown.cancelled() => return,
            commit = feed.next() => commit,
        };
        match commit {
            Ok(commit) => {
                for change in &commit.changes {
                    match change {
                        Change::KeyRevoked(key) => authenticator.evict(*key),
                        Change::Resync => authenticator.evict_all(),
                        Change::WebhooksChanged | Change::DeliveriesQueued => {}
                    }
                }
            }
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "the authenticator cannot read the feed; retrying");
                authenticator.evict_all();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
