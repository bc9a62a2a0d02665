//! The PostgreSQL schema and its migrations, applied at start-up under a session advisory lock so
//! that nodes starting together do not race: one migrates, the others wait and then find the
//! schema current. The version is kept in `cpod_schema`.
//!
//! Append a new entry to [`MIGRATIONS`] for every change; never edit one that has shipped.

use anyhow::Context;
use tokio_postgres::Client;

use super::locks;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite backend has after its fourth migration.
    r#"
    -- `position` is given under the append lock (last + 1), never by a sequence: see
    -- `writer.rs` for why a sequence would let a reader tailing the table skip events.
    CREATE TABLE events (
        position        bigint PRIMARY KEY,
        id              uuid   NOT NULL UNIQUE,
        organization_id text   NOT NULL,
        type            text   NOT NULL,
        resource_type   text   NOT NULL,
        resource_id     text   NOT NULL,
        workspace_id    text,
        ts_ms           bigint NOT NULL,
        -- The wire JSON as first serialized: text, not jsonb, so it comes back byte for byte.
        json            text   NOT NULL
    );
    CREATE INDEX events_org_pos ON events (organization_id, position);
    CREATE INDEX events_org_resource_id_pos ON events (organization_id, resource_id, position);
    -- Turns a time bound into a position bound, and finds what retention prunes.
    CREATE INDEX events_ts ON events (ts_ms, position);

    CREATE TABLE api_keys (
        id              uuid   PRIMARY KEY,
        organization_id text,
        role            text   NOT NULL,
        name            text   NOT NULL,
        source          text   NOT NULL,
        secret_hash     bytea  NOT NULL UNIQUE,
        created_ms      bigint NOT NULL,
        revoked_ms      bigint
    );
    CREATE INDEX api_keys_org ON api_keys (organization_id);

    -- Decided under the append lock; the primary key is the backstop.
    CREATE TABLE idempotency (
        scope        text   NOT NULL,
        endpoint     text   NOT NULL,
        key          text   NOT NULL,
        request_hash bytea  NOT NULL,
        response     bytea  NOT NULL,
        created_ms   bigint NOT NULL,
        PRIMARY KEY (scope, endpoint, key)
    );
    CREATE INDEX idempotency_created ON idempotency (created_ms);

    CREATE TABLE settings (
        name  text  PRIMARY KEY,
        value bytea NOT NULL
    );

    CREATE TABLE webhooks (
        id                         uuid    PRIMARY KEY,
        organization_id            text    NOT NULL,
        url                        text    NOT NULL,
        types                      text[]  NOT NULL,
        resource_type              text,
        description                text,
        enabled                    boolean NOT NULL,
        secret                     text    NOT NULL,
        previous_secret            text,
        previous_secret_expires_ms bigint,
        created_ms                 bigint  NOT NULL,
        last_success_ms            bigint,
        disabled_reason            text
    );
    CREATE INDEX webhooks_org ON webhooks (organization_id);

    -- No foreign keys: an append must never wait on, or fail because of, an endpoint being
    -- changed by another node. Deleting an endpoint takes the append lock instead.
    CREATE TABLE deliveries (
        id              uuid   PRIMARY KEY,
        webhook_id      uuid   NOT NULL,
        event_position  bigint NOT NULL,
        event_id        uuid   NOT NULL,
        event_type      text   NOT NULL,
        status          text   NOT NULL,
        attempts        bigint NOT NULL,
        next_attempt_ms bigint,
        created_ms      bigint NOT NULL,
        lease_owner     uuid,
        lease_until_ms  bigint
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_ms) WHERE status = 'pending';
    CREATE INDEX deliveries_webhook ON deliveries (webhook_id, id);

    CREATE TABLE delivery_attempts (
        delivery_id     uuid    NOT NULL,
        attempt         bigint  NOT NULL,
        response_status integer,
        error           text,
        duration_ms     bigint  NOT NULL,
        attempted_ms    bigint  NOT NULL,
        response_body   text,
        PRIMARY KEY (delivery_id, attempt)
    );
    "#,
    // 2: the node registry and the cluster-wide rate limit.
    r#"
    -- One row per running node, its heartbeat in the database's clock.
    CREATE TABLE nodes (
        id           text   PRIMARY KEY,
        started_ms   bigint NOT NULL,
        heartbeat_ms bigint NOT NULL
    );

    -- One token bucket per key, shared by every node: each takes tokens in small chunks.
    CREATE TABLE rate_buckets (
        key_id     uuid             PRIMARY KEY,
        tokens     double precision NOT NULL,
        granted    integer          NOT NULL,
        updated_ms bigint           NOT NULL
    );
    "#,
    // 3: the W3C trace context an event was ingested with (also in its JSON), for the spans
    // and `traceparent` header of its webhook attempts.
    r#"
    ALTER TABLE events ADD COLUMN traceparent text;
    ALTER TABLE events ADD COLUMN tracestate text;
    "#,
    // 4: how an endpoint's deliveries are written: `cpod`, `cloudevents` (structured mode) or
    // `cloudevents-binary`.
    r#"
    ALTER TABLE webhooks ADD COLUMN delivery_format text NOT NULL DEFAULT 'cpod';
    "#,
];

/// Brings the schema up to date. Holds the migration lock for the whole run, so concurrent
/// starters wait for the first to finish; each migration commits with its version. Meant for a
/// session of its own (its timeouts are lifted).
pub(super) async fn migrate(client: &mut Client) -> anyhow::Result<()> {
    // This session only: a migration may take long on a large database, and a node starting
    // meanwhile waits for it as long as it takes, not `lock_timeout`.
    client
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await
        .context("cannot lift the timeouts for the migration")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&locks::MIGRATE])
        .await
        .context("cannot take the migration lock")?;
    let result = apply(client).await;
    // Released explicitly (the connection may live on in a pool); a lost connection releases it
    // anyway.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&locks::MIGRATE])
        .await;
    result?;
    unlocked.context("cannot release the migration lock")?;
    Ok(())
}

async fn apply(client: &mut Client) -> anyhow::Result<()> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS cpod_schema (version integer NOT NULL)")
        .await?;
    let current: Option<i32> = client
        .query_opt("SELECT version FROM cpod_schema", &[])
        .await?
        .map(|r| r.get(0));
    let current = usize::try_from(current.unwrap_or(0))?;
    if current > MIGRATIONS.len() {
        anyhow::bail!(
            "the database's schema version {current} is newer than this broker knows ({}); \
             run a newer cpod-events",
            MIGRATIONS.len()
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migration {} failed", index + 1))?;
        tx.execute("DELETE FROM cpod_schema", &[]).await?;
        tx.execute(
            "INSERT INTO cpod_schema (version) VALUES ($1)",
            &[&((index + 1) as i32)],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The version a fully migrated database has.
#[cfg(test)]
pub(super) fn latest() -> usize {
    MIGRATIONS.len()
}
