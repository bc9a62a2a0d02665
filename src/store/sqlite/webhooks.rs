//! Webhook endpoints and their delivery queue in SQLite (the records: `store::webhooks`).
//!
//! A delivery row is created by the writer in the **same transaction** that stores the event
//! ([`WebhookMatchers::create_deliveries`]). Claims are leases in the rows themselves
//! (`lease_owner`, `lease_until_ms`), taken and recorded through the writer.

use std::collections::HashMap;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::filter::TypePattern;
use crate::store::webhooks::{
    AttemptOutcome, AttemptRecord, ClaimRequest, DeliveryFormat, DeliveryRecord, DeliveryStatus,
    DueDelivery, Lease, NextStep, WebhookPatch, WebhookRecord,
};
use crate::store::{StoreError, StoredEvent};
use crate::trace_context::TraceContext;

/// The enabled endpoints' filters, per organization: what the writer matches each new event
/// against.
#[derive(Default)]
pub struct WebhookMatchers {
    by_organization: HashMap<String, Vec<Matcher>>,
}

struct Matcher {
    id: Uuid,
    types: Vec<TypePattern>,
    resource_type: Option<String>,
}

impl WebhookMatchers {
    pub fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut by_organization: HashMap<String, Vec<Matcher>> = HashMap::new();
        let mut statement = conn.prepare_cached(
            "SELECT id, organization_id, types, resource_type FROM webhooks WHERE enabled = 1",
        )?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        for row in rows {
            let (id, organization, types, resource_type) = row?;
            let types: Vec<String> = serde_json::from_str(&types).unwrap_or_default();
            by_organization
                .entry(organization)
                .or_default()
                .push(Matcher {
                    id: Uuid::from_slice(&id)
                        .map_err(|e| anyhow::anyhow!("corrupt webhook id: {e}"))?,
                    types: types
                        .iter()
                        .filter_map(|t| TypePattern::parse(t).ok())
                        .collect(),
                    resource_type,
                });
        }
        Ok(Self { by_organization })
    }

    /// Queues one delivery per matching endpoint; answers how many.
    pub fn create_deliveries(
        &self,
        conn: &Connection,
        event: &StoredEvent,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let Some(matchers) = self.by_organization.get(&event.organization_id) else {
            return Ok(0);
        };
        let mut created = 0;
        for matcher in matchers {
            let type_matches = matcher.types.iter().any(|p| p.matches(&event.event_type));
            let resource_matches = matcher
                .resource_type
                .as_deref()
                .is_none_or(|r| r == event.resource_type);
            if type_matches && resource_matches {
                conn.prepare_cached(
                    "INSERT INTO deliveries (id, webhook_id, event_pos, event_id, event_type, status, attempts, next_attempt_ms, created_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)",
                )?
                .execute(params![
                    Uuid::now_v7().as_bytes(),
                    matcher.id.as_bytes(),
                    event.position,
                    event.id.as_bytes(),
                    event.event_type,
                    now_ms
                ])?;
                created += 1;
            }
        }
        Ok(created)
    }
}

const WEBHOOK_COLUMNS: &str = "id, organization_id, url, types, resource_type, description, enabled, secret, \
     previous_secret, previous_secret_expires_ms, created_ms, last_success_ms, disabled_reason, delivery_format";

fn uuid_at(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(index)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn webhook_from_row(row: &rusqlite::Row<'_>, offset: usize) -> rusqlite::Result<WebhookRecord> {
    let types: String = row.get(offset + 3)?;
    Ok(WebhookRecord {
        id: uuid_at(row, offset)?,
        organization_id: row.get(offset + 1)?,
        url: row.get(offset + 2)?,
        types: serde_json::from_str(&types).unwrap_or_default(),
        resource_type: row.get(offset + 4)?,
        description: row.get(offset + 5)?,
        enabled: row.get(offset + 6)?,
        secret: row.get(offset + 7)?,
        previous_secret: row.get(offset + 8)?,
        previous_secret_expires_ms: row.get(offset + 9)?,
        created_ms: row.get(offset + 10)?,
        last_success_ms: row.get(offset + 11)?,
        disabled_reason: row.get(offset + 12)?,
        format: DeliveryFormat::from_stored(&row.get::<_, String>(offset + 13)?),
    })
}

pub fn insert_webhook(conn: &Connection, webhook: &WebhookRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
        params![
            webhook.id.as_bytes(),
            webhook.organization_id,
            webhook.url,
            serde_json::to_string(&webhook.types).expect("strings serialize"),
            webhook.resource_type,
            webhook.description,
            webhook.enabled,
            webhook.secret,
            webhook.previous_secret,
            webhook.previous_secret_expires_ms,
            webhook.created_ms,
            webhook.last_success_ms,
            webhook.disabled_reason,
            webhook.format.as_str(),
        ],
    )?;
    Ok(())
}

pub fn count_webhooks(conn: &Connection, organization_id: &str) -> Result<usize, StoreError> {
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM webhooks WHERE organization_id = ?1")?
        .query_row([organization_id], |r| r.get(0))?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
}

pub fn get_webhook(conn: &Connection, id: Uuid) -> Result<Option<WebhookRecord>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"
        ))?
        .query_row([id.as_bytes()], |r| webhook_from_row(r, 0))
        .optional()?)
}

/// Endpoints of one organization, or of all with `None`, oldest first.
pub fn list_webhooks(
    conn: &Connection,
    organization: Option<&str>,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE (?1 IS NULL OR organization_id = ?1) ORDER BY created_ms, id"
    ))?;
    let rows = statement.query_map([organization], |r| webhook_from_row(r, 0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

pub fn update_webhook(
    conn: &Connection,
    id: Uuid,
    patch: &WebhookPatch,
) -> Result<WebhookRecord, StoreError> {
    let mut webhook = get_webhook(conn, id)?.ok_or(StoreError::NotFound)?;
    if let Some(url) = &patch.url {
        webhook.url = url.clone();
    }
    if let Some(types) = &patch.types {
        webhook.types = types.clone();
    }
    if let Some(resource_type) = &patch.resource_type {
        webhook.resource_type = resource_type.clone();
    }
    if let Some(description) = &patch.description {
        webhook.description = description.clone();
    }
    if let Some(enabled) = patch.enabled {
        webhook.enabled = enabled;
        if enabled {
            webhook.disabled_reason = None;
        }
    }
    if let Some(format) = patch.format {
        webhook.format = format;
    }
    conn.execute(
        "UPDATE webhooks SET url = ?2, types = ?3, resource_type = ?4, description = ?5, enabled = ?6, \
         disabled_reason = ?7, delivery_format = ?8 WHERE id = ?1",
        params![
            id.as_bytes(),
            webhook.url,
            serde_json::to_string(&webhook.types).expect("strings serialize"),
            webhook.resource_type,
            webhook.description,
            webhook.enabled,
            webhook.disabled_reason,
            webhook.format.as_str(),
        ],
    )?;
    Ok(webhook)
}

/// Deletes an endpoint with its deliveries and their attempts.
pub fn delete_webhook(conn: &Connection, id: Uuid) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM delivery_attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE webhook_id = ?1)",
        [id.as_bytes()],
    )?;
    conn.execute(
        "DELETE FROM deliveries WHERE webhook_id = ?1",
        [id.as_bytes()],
    )?;
    let deleted = conn.execute("DELETE FROM webhooks WHERE id = ?1", [id.as_bytes()])?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Makes `secret` current; the old one keeps signing until `previous_expires_ms`.
pub fn rotate_secret(
    conn: &Connection,
    id: Uuid,
    secret: &str,
    previous_expires_ms: i64,
) -> Result<WebhookRecord, StoreError> {
    let changed = conn.execute(
        "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_ms = ?3, secret = ?2 WHERE id = ?1",
        params![id.as_bytes(), secret, previous_expires_ms],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    get_webhook(conn, id)?.ok_or(StoreError::NotFound)
}

/// Records an attempt and moves the delivery (and maybe its endpoint) on, ending its lease.
/// Answers `false`, and records nothing, when the attempt's maker no longer holds the lease (it
/// ran out and another node took the delivery over) or the delivery is no longer at the attempt
/// before this one: attempts are numbered without gaps or repeats.
pub fn record_attempt(conn: &Connection, outcome: &AttemptOutcome) -> Result<bool, StoreError> {
    let attempt = &outcome.attempt;
    let (status, next_attempt_ms) = match outcome.next {
        NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
        NextStep::Succeeded => (DeliveryStatus::Succeeded, None),
        NextStep::Failed => (DeliveryStatus::Failed, None),
    };
    let moved = conn
        .prepare_cached(
            "UPDATE deliveries SET status = ?2, attempts = ?3, next_attempt_ms = ?4, \
             lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = ?1 AND attempts = ?3 - 1 AND lease_owner = ?5",
        )?
        .execute(params![
            outcome.delivery_id.as_bytes(),
            status.as_str(),
            attempt.attempt,
            next_attempt_ms,
            outcome.lease_owner.as_bytes()
        ])?;
    if moved == 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, response_status, error, duration_ms, attempted_ms, response_body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        outcome.delivery_id.as_bytes(),
        attempt.attempt,
        attempt.response_status,
        attempt.error,
        attempt.duration_ms,
        attempt.attempted_ms,
        attempt.response_body,
    ])?;
    if outcome.next == NextStep::Succeeded {
        conn.prepare_cached("UPDATE webhooks SET last_success_ms = ?2 WHERE id = ?1")?
            .execute(params![outcome.webhook_id.as_bytes(), attempt.attempted_ms])?;
    }
    if let Some(disable) = &outcome.disable {
        conn.prepare_cached(
            "UPDATE webhooks SET enabled = 0, disabled_reason = ?2 WHERE id = ?1 \
             AND (?3 IS NULL OR coalesce(last_success_ms, created_ms) < ?3)",
        )?
        .execute(params![
            outcome.webhook_id.as_bytes(),
            disable.reason,
            disable.unless_success_since
        ])?;
    }
    Ok(true)
}

/// Makes a delivery due now for one more attempt.
pub fn retry_delivery(
    conn: &Connection,
    webhook_id: Uuid,
    delivery_id: Uuid,
    now_ms: i64,
) -> Result<(), StoreError> {
    let changed = conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_ms = ?3 WHERE id = ?1 AND webhook_id = ?2",
        params![delivery_id.as_bytes(), webhook_id.as_bytes(), now_ms],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Claims pending deliveries due at `now_ms` on enabled endpoints that nobody holds a live
/// lease on, oldest due first, leaving out the endpoints in `busy`; answers them with their
/// lease and all an attempt needs. Runs in the writer's transaction, so two claims never take
/// the same delivery.
pub fn claim_deliveries(
    conn: &Connection,
    request: &ClaimRequest,
) -> Result<Vec<DueDelivery>, StoreError> {
    let columns: String = WEBHOOK_COLUMNS
        .split(", ")
        .map(|c| format!("w.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let exclusion = if request.busy.is_empty() {
        String::new()
    } else {
        format!(
            " AND d.webhook_id NOT IN ({})",
            vec!["?"; request.busy.len()].join(", ")
        )
    };
    let mut statement = conn.prepare_cached(&format!(
        "SELECT d.id, d.attempts, d.event_id, d.event_type, e.json, e.traceparent, e.tracestate, {columns} \
         FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id LEFT JOIN events e ON e.pos = d.event_pos \
         WHERE d.status = 'pending' AND d.next_attempt_ms <= ? AND w.enabled = 1 \
         AND (d.lease_until_ms IS NULL OR d.lease_until_ms <= ?){exclusion} \
         ORDER BY d.next_attempt_ms LIMIT ?"
    ))?;
    let lease = Lease {
        owner: request.owner,
        until_ms: request.now_ms + request.lease_ms,
    };
    let mut args: Vec<rusqlite::types::Value> = vec![request.now_ms.into(), request.now_ms.into()];
    args.extend(
        request
            .busy
            .iter()
            .map(|id| rusqlite::types::Value::Blob(id.as_bytes().to_vec())),
    );
    args.push((request.limit as i64).into());
    let rows = statement.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(DueDelivery {
            id: uuid_at(r, 0)?,
            lease,
            attempts: r.get(1)?,
            event_id: uuid_at(r, 2)?,
            event_type: r.get(3)?,
            body: r.get::<_, Option<String>>(4)?.map(Bytes::from),
            trace: TraceContext::from_stored(
                r.get::<_, Option<String>>(5)?.as_deref(),
                r.get::<_, Option<String>>(6)?.as_deref(),
            ),
            webhook: webhook_from_row(r, 7)?,
        })
    })?;
    let due = rows.collect::<Result<Vec<_>, _>>()?;
    let mut take = conn.prepare_cached(
        "UPDATE deliveries SET lease_owner = ?2, lease_until_ms = ?3 WHERE id = ?1",
    )?;
    for delivery in &due {
        take.execute(params![
            delivery.id.as_bytes(),
            lease.owner.as_bytes(),
            lease.until_ms
        ])?;
    }
    Ok(due)
}

/// Ends `owner`'s leases on these deliveries, unattempted.
pub fn release_leases(conn: &Connection, owner: Uuid, ids: &[Uuid]) -> Result<(), StoreError> {
    let mut release = conn.prepare_cached(
        "UPDATE deliveries SET lease_owner = NULL, lease_until_ms = NULL \
         WHERE id = ?1 AND lease_owner = ?2",
    )?;
    for id in ids {
        release.execute(params![id.as_bytes(), owner.as_bytes()])?;
    }
    Ok(())
}

/// Ends every lease (at start-up: one process per SQLite database, so they are a dead one's).
pub fn release_all_leases(conn: &Connection) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE deliveries SET lease_owner = NULL, lease_until_ms = NULL WHERE lease_owner IS NOT NULL",
        [],
    )?;
    Ok(())
}

/// Pending deliveries and the age of the oldest (for metrics).
pub fn queue_state(conn: &Connection, now_ms: i64) -> Result<(i64, Option<i64>), StoreError> {
    Ok(conn.query_row(
        "SELECT count(*), min(created_ms) FROM deliveries WHERE status = 'pending'",
        [],
        |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(|c| now_ms - c))),
    )?)
}

/// One page of an endpoint's deliveries, newest first, before `before` (a delivery id).
pub fn deliveries_page(
    conn: &Connection,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    before: Option<Uuid>,
    limit: usize,
) -> Result<(Vec<DeliveryRecord>, bool), StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, webhook_id, event_id, event_type, status, attempts, next_attempt_ms, created_ms FROM deliveries \
         WHERE webhook_id = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
    )?;
    let rows = statement.query_map(
        params![
            webhook_id.as_bytes(),
            status.map(DeliveryStatus::as_str),
            before.as_ref().map(|b| b.as_bytes().to_vec()),
            (limit + 1) as i64
        ],
        |r| {
            let status: String = r.get(4)?;
            Ok(DeliveryRecord {
                id: uuid_at(r, 0)?,
                webhook_id: uuid_at(r, 1)?,
                event_id: uuid_at(r, 2)?,
                event_type: r.get(3)?,
                status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
                attempts: r.get(5)?,
                next_attempt_ms: r.get(6)?,
                created_ms: r.get(7)?,
                attempt_log: Vec::new(),
            })
        },
    )?;
    let mut deliveries = rows.collect::<Result<Vec<_>, _>>()?;
    let has_more = deliveries.len() > limit;
    deliveries.truncate(limit);
    let mut attempts = conn.prepare_cached(
        "SELECT attempt, response_status, error, duration_ms, attempted_ms, response_body FROM delivery_attempts \
         WHERE delivery_id = ?1 ORDER BY attempt",
    )?;
    for delivery in &mut deliveries {
        delivery.attempt_log = attempts
            .query_map([delivery.id.as_bytes()], |r| {
                Ok(AttemptRecord {
                    attempt: r.get(0)?,
                    response_status: r.get(1)?,
                    error: r.get(2)?,
                    duration_ms: r.get(3)?,
                    attempted_ms: r.get(4)?,
                    response_body: r.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
    }
    Ok((deliveries, has_more))
}
