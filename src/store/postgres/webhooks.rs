//! Webhook endpoints and their delivery queue in PostgreSQL (the records: `store::webhooks`).
//!
//! Deliveries are created by the writer in the transaction that stores their event. Claims are
//! leases in the rows (`lease_owner`, `lease_until_ms`) taken with `FOR UPDATE SKIP LOCKED`, so
//! nodes claiming at once never wait on or take each other's deliveries; a dead node's leases
//! simply run out. Only the lease holder's attempt is recorded.

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::StoreError;
use crate::store::webhooks::{
    AttemptOutcome, AttemptRecord, ClaimRequest, DeliveryFormat, DeliveryRecord, DeliveryStatus,
    DueDelivery, Lease, NextStep, WebhookPatch, WebhookRecord,
};
use crate::trace_context::TraceContext;

const WEBHOOK_COLUMNS: &str = "id, organization_id, url, types, resource_type, description, \
     enabled, secret, previous_secret, previous_secret_expires_ms, created_ms, last_success_ms, \
     disabled_reason, delivery_format";

fn webhook_from_row(row: &Row, offset: usize) -> Result<WebhookRecord, StoreError> {
    Ok(WebhookRecord {
        id: row.try_get(offset)?,
        organization_id: row.try_get(offset + 1)?,
        url: row.try_get(offset + 2)?,
        types: row.try_get(offset + 3)?,
        resource_type: row.try_get(offset + 4)?,
        description: row.try_get(offset + 5)?,
        enabled: row.try_get(offset + 6)?,
        secret: row.try_get(offset + 7)?,
        previous_secret: row.try_get(offset + 8)?,
        previous_secret_expires_ms: row.try_get(offset + 9)?,
        created_ms: row.try_get(offset + 10)?,
        last_success_ms: row.try_get(offset + 11)?,
        disabled_reason: row.try_get(offset + 12)?,
        format: DeliveryFormat::from_stored(row.try_get(offset + 13)?),
    })
}

pub(super) async fn insert_webhook(
    client: &impl GenericClient,
    webhook: &WebhookRecord,
) -> Result<(), StoreError> {
    client
        .execute(
            &format!(
                "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
            ),
            &[
                &webhook.id,
                &webhook.organization_id,
                &webhook.url,
                &webhook.types,
                &webhook.resource_type,
                &webhook.description,
                &webhook.enabled,
                &webhook.secret,
                &webhook.previous_secret,
                &webhook.previous_secret_expires_ms,
                &webhook.created_ms,
                &webhook.last_success_ms,
                &webhook.disabled_reason,
                &webhook.format.as_str(),
            ],
        )
        .await?;
    Ok(())
}

/// An endpoint; `for_update` locks its row until the transaction ends.
pub(super) async fn get_webhook(
    client: &impl GenericClient,
    id: Uuid,
    for_update: bool,
) -> Result<Option<WebhookRecord>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1{lock}"
        ))
        .await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .map(|r| webhook_from_row(&r, 0))
        .transpose()
}

/// Endpoints of one organization, or of all with `None`, oldest first.
pub(super) async fn list_webhooks(
    client: &impl GenericClient,
    organization: Option<&str>,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks \
             WHERE ($1::text IS NULL OR organization_id = $1) ORDER BY created_ms, id"
        ))
        .await?;
    client
        .query(&statement, &[&organization])
        .await?
        .iter()
        .map(|r| webhook_from_row(r, 0))
        .collect()
}

pub(super) async fn update_webhook(
    client: &impl GenericClient,
    id: Uuid,
    patch: &WebhookPatch,
) -> Result<WebhookRecord, StoreError> {
    let mut webhook = get_webhook(client, id, true)
        .await?
        .ok_or(StoreError::NotFound)?;
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
    client
        .execute(
            "UPDATE webhooks SET url = $2, types = $3, resource_type = $4, description = $5, \
             enabled = $6, disabled_reason = $7, delivery_format = $8 WHERE id = $1",
            &[
                &id,
                &webhook.url,
                &webhook.types,
                &webhook.resource_type,
                &webhook.description,
                &webhook.enabled,
                &webhook.disabled_reason,
                &webhook.format.as_str(),
            ],
        )
        .await?;
    Ok(webhook)
}

/// Deletes an endpoint with its deliveries and their attempts.
pub(super) async fn delete_webhook(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<(), StoreError> {
    client
        .execute(
            "DELETE FROM delivery_attempts WHERE delivery_id IN \
             (SELECT id FROM deliveries WHERE webhook_id = $1)",
            &[&id],
        )
        .await?;
    client
        .execute("DELETE FROM deliveries WHERE webhook_id = $1", &[&id])
        .await?;
    let deleted = client
        .execute("DELETE FROM webhooks WHERE id = $1", &[&id])
        .await?;
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Makes `secret` current; the old one keeps signing until `previous_expires_ms`.
pub(super) async fn rotate_secret(
    client: &impl GenericClient,
    id: Uuid,
    secret: &str,
    previous_expires_ms: i64,
) -> Result<WebhookRecord, StoreError> {
    let row = client
        .query_opt(
            &format!(
                "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_ms = $3, \
                 secret = $2 WHERE id = $1 RETURNING {WEBHOOK_COLUMNS}"
            ),
            &[&id, &secret, &previous_expires_ms],
        )
        .await?
        .ok_or(StoreError::NotFound)?;
    webhook_from_row(&row, 0)
}

/// Records an attempt and moves the delivery (and maybe its endpoint) on, ending its lease.
/// Answers `false`, and records nothing, when the attempt's maker no longer holds the lease or
/// the delivery is no longer at the attempt before this one.
pub(super) async fn record_attempt(
    client: &impl GenericClient,
    outcome: &AttemptOutcome,
) -> Result<bool, StoreError> {
    let attempt = &outcome.attempt;
    let (status, next_attempt_ms) = match outcome.next {
        NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
        NextStep::Succeeded => (DeliveryStatus::Succeeded, None),
        NextStep::Failed => (DeliveryStatus::Failed, None),
    };
    let moved = client
        .execute(
            &client
                .prepare_cached(
                    "UPDATE deliveries SET status = $2, attempts = $3::bigint, \
                     next_attempt_ms = $4::bigint, lease_owner = NULL, lease_until_ms = NULL \
                     WHERE id = $1 AND attempts = $3::bigint - 1 AND lease_owner = $5",
                )
                .await?,
            &[
                &outcome.delivery_id,
                &status.as_str(),
                &attempt.attempt,
                &next_attempt_ms,
                &outcome.lease_owner,
            ],
        )
        .await?;
    if moved == 0 {
        return Ok(false);
    }
    client
        .execute(
            &client
                .prepare_cached(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, response_status, error, \
                     duration_ms, attempted_ms, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await?,
            &[
                &outcome.delivery_id,
                &attempt.attempt,
                &attempt.response_status.map(i32::from),
                &attempt.error,
                &attempt.duration_ms,
                &attempt.attempted_ms,
                &attempt.response_body,
            ],
        )
        .await?;
    if outcome.next == NextStep::Succeeded {
        client
            .execute(
                "UPDATE webhooks SET last_success_ms = greatest(last_success_ms, $2) WHERE id = $1",
                &[&outcome.webhook_id, &attempt.attempted_ms],
            )
            .await?;
    }
    if let Some(disable) = &outcome.disable {
        client
            .execute(
                "UPDATE webhooks SET enabled = false, disabled_reason = $2 WHERE id = $1 \
                 AND ($3::bigint IS NULL OR coalesce(last_success_ms, created_ms) < $3)",
                &[
                    &outcome.webhook_id,
                    &disable.reason,
                    &disable.unless_success_since,
                ],
            )
            .await?;
    }
    Ok(true)
}

/// Makes a delivery due now for one more attempt.
pub(super) async fn retry_delivery(
    client: &impl GenericClient,
    webhook_id: Uuid,
    delivery_id: Uuid,
    now_ms: i64,
) -> Result<(), StoreError> {
    let changed = client
        .execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_ms = $3 \
             WHERE id = $1 AND webhook_id = $2",
            &[&delivery_id, &webhook_id, &now_ms],
        )
        .await?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Claims pending deliveries due at `now_ms` on enabled endpoints that nobody holds a live
/// lease on, oldest due first, leaving out the endpoints in `busy`. `SKIP LOCKED`: a delivery
/// another node is claiming at this moment is left to it.
pub(super) async fn claim_deliveries(
    client: &impl GenericClient,
    request: &ClaimRequest,
) -> Result<Vec<DueDelivery>, StoreError> {
    let columns: String = WEBHOOK_COLUMNS
        .split(", ")
        .map(|c| format!("w.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let statement = client
        .prepare_cached(&format!(
            "WITH due AS (
                SELECT d.id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                WHERE d.status = 'pending' AND d.next_attempt_ms <= $1::bigint AND w.enabled
                  AND (d.lease_until_ms IS NULL OR d.lease_until_ms <= $1::bigint)
                  AND NOT (d.webhook_id = ANY($2::uuid[]))
                ORDER BY d.next_attempt_ms LIMIT $3::bigint
                FOR UPDATE OF d SKIP LOCKED
             ), claimed AS (
                UPDATE deliveries d SET lease_owner = $4::uuid, lease_until_ms = $5::bigint
                FROM due WHERE d.id = due.id
                RETURNING d.id, d.attempts, d.event_id, d.event_type, d.event_position,
                          d.webhook_id, d.next_attempt_ms
             )
             SELECT c.id, c.attempts, c.event_id, c.event_type, e.json, e.traceparent,
                    e.tracestate, {columns}
             FROM claimed c JOIN webhooks w ON w.id = c.webhook_id
             LEFT JOIN events e ON e.position = c.event_position
             ORDER BY c.next_attempt_ms"
        ))
        .await?;
    let lease = Lease {
        owner: request.owner,
        until_ms: request.now_ms + request.lease_ms,
    };
    let rows = client
        .query(
            &statement,
            &[
                &request.now_ms,
                &request.busy,
                &(request.limit as i64),
                &lease.owner,
                &lease.until_ms,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DueDelivery {
                id: r.try_get(0)?,
                lease,
                attempts: r.try_get(1)?,
                event_id: r.try_get(2)?,
                event_type: r.try_get(3)?,
                body: r.try_get::<_, Option<String>>(4)?.map(Bytes::from),
                trace: TraceContext::from_stored(r.try_get(5)?, r.try_get(6)?),
                webhook: webhook_from_row(r, 7)?,
            })
        })
        .collect()
}

/// Ends `owner`'s leases on these deliveries, unattempted.
pub(super) async fn release_leases(
    client: &impl GenericClient,
    owner: Uuid,
    ids: &[Uuid],
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE deliveries SET lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = ANY($1) AND lease_owner = $2",
            &[&ids, &owner],
        )
        .await?;
    Ok(())
}

/// Pending deliveries and the age of the oldest (for metrics).
pub(super) async fn queue_state(
    client: &impl GenericClient,
    now_ms: i64,
) -> Result<(i64, Option<i64>), StoreError> {
    let statement = client
        .prepare_cached("SELECT count(*), min(created_ms) FROM deliveries WHERE status = 'pending'")
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok((
        row.try_get(0)?,
        row.try_get::<_, Option<i64>>(1)?.map(|c| now_ms - c),
    ))
}

/// One page of an endpoint's deliveries, newest first, before `before` (a delivery id).
pub(super) async fn deliveries_page(
    client: &impl GenericClient,
    webhook_id: Uuid,
    status: Option<DeliveryStatus>,
    before: Option<Uuid>,
    limit: usize,
) -> Result<(Vec<DeliveryRecord>, bool), StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT id, webhook_id, event_id, event_type, status, attempts, next_attempt_ms, \
             created_ms FROM deliveries WHERE webhook_id = $1 \
             AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &webhook_id,
                &status.map(DeliveryStatus::as_str),
                &before,
                &((limit + 1) as i64),
            ],
        )
        .await?;
    let mut deliveries = rows
        .iter()
        .map(|r| {
            let status: String = r.try_get(4)?;
            Ok(DeliveryRecord {
                id: r.try_get(0)?,
                webhook_id: r.try_get(1)?,
                event_id: r.try_get(2)?,
                event_type: r.try_get(3)?,
                status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
                attempts: r.try_get(5)?,
                next_attempt_ms: r.try_get(6)?,
                created_ms: r.try_get(7)?,
                attempt_log: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let has_more = deliveries.len() > limit;
    deliveries.truncate(limit);
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let attempts = client
        .query(
            &client
                .prepare_cached(
                    "SELECT delivery_id, attempt, response_status, error, duration_ms, \
                     attempted_ms, response_body FROM delivery_attempts \
                     WHERE delivery_id = ANY($1) ORDER BY delivery_id, attempt",
                )
                .await?,
            &[&ids],
        )
        .await?;
    for row in attempts {
        let delivery: Uuid = row.try_get(0)?;
        let status: Option<i32> = row.try_get(2)?;
        if let Some(d) = deliveries.iter_mut().find(|d| d.id == delivery) {
            d.attempt_log.push(AttemptRecord {
                attempt: row.try_get(1)?,
                response_status: status.and_then(|s| u16::try_from(s).ok()),
                error: row.try_get(3)?,
                duration_ms: row.try_get(4)?,
                attempted_ms: row.try_get(5)?,
                response_body: row.try_get(6)?,
            });
        }
    }
    Ok((deliveries, has_more))
}
