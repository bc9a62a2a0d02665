//! Schema migrations, applied in order at start-up and tracked in `PRAGMA user_version`.
//!
//! Append a new entry to [`MIGRATIONS`] for every change; never edit one that has shipped.

use rusqlite::Connection;

/// Each entry moves the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: events, keys, idempotency records.
    r#"
    CREATE TABLE events (
        pos             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              BLOB    NOT NULL,
        organization_id TEXT    NOT NULL,
        type            TEXT    NOT NULL,
        resource_type   TEXT    NOT NULL,
        resource_id     TEXT    NOT NULL,
        workspace_id    TEXT,
        ts_ms           INTEGER NOT NULL,
        json            TEXT    NOT NULL
    );
    CREATE UNIQUE INDEX events_id ON events(id);
    -- Every history query is a range scan on position within one of these: an organization's
    -- events, or one resource's. Type globs and the other exact fields filter that scan; an
    -- index per filter would cost every append one more B-tree insert (see BENCHMARKS.md).
    CREATE INDEX events_org_pos ON events(organization_id, pos);
    CREATE INDEX events_org_resource_id_pos ON events(organization_id, resource_id, pos);
    -- Turns a time bound into a position bound, and finds what retention prunes.
    CREATE INDEX events_ts ON events(ts_ms);

    CREATE TABLE api_keys (
        id              BLOB    PRIMARY KEY,
        organization_id TEXT,
        role            TEXT    NOT NULL,
        name            TEXT    NOT NULL,
        source          TEXT    NOT NULL,
        secret_hash     BLOB    NOT NULL UNIQUE,
        created_ms      INTEGER NOT NULL,
        revoked_ms      INTEGER
    );
    CREATE INDEX api_keys_org ON api_keys(organization_id);

    CREATE TABLE idempotency (
        id           INTEGER PRIMARY KEY,
        scope        TEXT    NOT NULL,
        endpoint     TEXT    NOT NULL,
        key          TEXT    NOT NULL,
        request_hash BLOB    NOT NULL,
        response     BLOB    NOT NULL,
        created_ms   INTEGER NOT NULL,
        UNIQUE (scope, endpoint, key)
    );
    CREATE INDEX idempotency_created ON idempotency(created_ms);
    "#,
    // 2: broker-wide settings, e.g. the secret that signs stream tickets.
    r#"
    CREATE TABLE settings (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
    // 3: webhook endpoints, the delivery queue and its attempt log.
    r#"
    CREATE TABLE webhooks (
        id                         BLOB    PRIMARY KEY,
        organization_id            TEXT    NOT NULL,
        url                        TEXT    NOT NULL,
        types                      TEXT    NOT NULL,
        resource_type              TEXT,
        description                TEXT,
        enabled                    INTEGER NOT NULL,
        secret                     TEXT    NOT NULL,
        previous_secret            TEXT,
        previous_secret_expires_ms INTEGER,
        created_ms                 INTEGER NOT NULL,
        last_success_ms            INTEGER,
        disabled_reason            TEXT
    );
    CREATE INDEX webhooks_org ON webhooks(organization_id);

    CREATE TABLE deliveries (
        id              BLOB    PRIMARY KEY,
        webhook_id      BLOB    NOT NULL,
        event_pos       INTEGER NOT NULL,
        event_id        BLOB    NOT NULL,
        event_type      TEXT    NOT NULL,
        status          TEXT    NOT NULL,
        attempts        INTEGER NOT NULL,
        next_attempt_ms INTEGER,
        created_ms      INTEGER NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries(next_attempt_ms) WHERE status = 'pending';
    CREATE INDEX deliveries_webhook ON deliveries(webhook_id, id);

    CREATE TABLE delivery_attempts (
        delivery_id     BLOB    NOT NULL,
        attempt         INTEGER NOT NULL,
        response_status INTEGER,
        error           TEXT,
        duration_ms     INTEGER NOT NULL,
        attempted_ms    INTEGER NOT NULL,
        response_body   TEXT,
        PRIMARY KEY (delivery_id, attempt)
    ) WITHOUT ROWID;
    "#,
    // 4: delivery leases: the node attempting a delivery, and until when no other may.
    r#"
    ALTER TABLE deliveries ADD COLUMN lease_owner BLOB;
    ALTER TABLE deliveries ADD COLUMN lease_until_ms INTEGER;
    "#,
    // 5: the W3C trace context an event was ingested with (also in its JSON), for the spans
    // and `traceparent` header of its webhook attempts.
    r#"
    ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN tracestate TEXT;
    "#,
    // 6: how an endpoint's deliveries are written: `cpod`, `cloudevents` (structured mode) or
    // `cloudevents-binary`.
    r#"
    ALTER TABLE webhooks ADD COLUMN delivery_format TEXT NOT NULL DEFAULT 'cpod';
    "#,
];

/// Brings the schema up to date inside one transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let current = usize::try_from(current)?;
    if current > MIGRATIONS.len() {
        return Err(anyhow::anyhow!(
            "the database's schema version {current} is newer than this broker knows ({}); \
             run a newer cpod-events",
            MIGRATIONS.len()
        ));
    }
    let tx = conn.transaction()?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
    }
    Ok(tx.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_database_at_the_trace_version_gets_the_delivery_format_column() {
        // Version 5 (the trace columns) is what a broker before CloudEvents left.
        let mut conn = Connection::open_in_memory().unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..5] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 5).unwrap();
        tx.commit().unwrap();
        migrate(&mut conn).unwrap();
        let column = |table: &str, name: &str| -> Option<String> {
            conn.query_row(
                &format!("SELECT dflt_value FROM pragma_table_info('{table}') WHERE name = ?1"),
                [name],
                |r| r.get::<_, Option<String>>(0),
            )
            .unwrap()
        };
        assert_eq!(
            column("webhooks", "delivery_format").as_deref(),
            Some("'cpod'")
        );
        assert_eq!(column("events", "traceparent"), None);
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 6);
    }

    #[test]
    fn history_queries_are_index_range_scans() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        for (sql, index) in [
            (
                "SELECT json FROM events WHERE organization_id = 'o' AND pos >= 1 AND pos < 9 ORDER BY pos DESC LIMIT 5",
                "events_org_pos",
            ),
            (
                "SELECT json FROM events WHERE organization_id = 'o' AND resource_id = 'r' AND pos >= 1 ORDER BY pos LIMIT 5",
                "events_org_resource_id_pos",
            ),
            (
                "SELECT pos FROM events WHERE ts_ms >= 5 ORDER BY ts_ms LIMIT 1",
                "events_ts",
            ),
        ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map([], |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let plan = plan.join(" | ");
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{sql}: {plan}");
        }
    }
}
