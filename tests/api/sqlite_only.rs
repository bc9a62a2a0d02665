//! Tests that look at SQLite's own files: run by the `api` target only (`api_postgres` runs
//! the rest of this suite on PostgreSQL).

#[tokio::test]
async fn the_wal_stays_bounded_under_continuous_writes() {
    let app = crate::helpers::spawn_app().await;
    let service = app.key("org-a", "service").await;
    let filler = "x".repeat(1000);
    // ~40 MB of events in ~1 MB batches, faster than the 10 s a small WAL may wait.
    for batch in 0..40 {
        let events: Vec<serde_json::Value> = (0..1000)
            .map(|i| {
                serde_json::json!({"type": "custom.wal", "resourceId": format!("r-{batch}-{i}"),
                    "resourceType": "wal", "payload": {"filler": filler}})
            })
            .collect();
        let response = app
            .post_json(
                &service,
                "/v1/events/batch",
                &serde_json::json!({ "events": events }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    }
    let wal = std::fs::metadata(app.dir.path().join("events.db-wal"))
        .unwrap()
        .len();
    // The writer restarts the WAL once it passes 16 MiB (checkpointed by then); without
    // checkpoints it would hold every one of the ~40 MB written.
    assert!(wal < 24 * 1024 * 1024, "the WAL grew to {wal} bytes");
}
