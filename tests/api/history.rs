//! History (contract §4): filters, bounds, order, cursors, retention, isolation.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_KEY, assert_error, custom, eventually, json_of, spawn_app, spawn_app_with,
};

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

fn event(kind: &str, resource_type: &str, resource_id: &str, workspace: Option<&str>) -> Value {
    json!({"type": kind, "resourceType": resource_type, "resourceId": resource_id, "workspaceId": workspace})
}

#[tokio::test]
async fn every_filter_selects_exactly_the_matching_events() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut stored = Vec::new();
    for body in [
        event("pod.failed", "pod", "p1", Some("ws1")),
        event("pod.started", "pod", "p2", None),
        event("job.failed", "job", "j1", Some("ws1")),
        event("job.completed", "job", "j2", Some("ws2")),
        event("custom.report.generated", "report", "r1", None),
        event("person.created", "person", "u1", Some("ws2")),
    ] {
        stored.push(app.emit(&service, &body).await);
    }
    let pick = |indexes: &[usize]| -> Vec<String> {
        indexes
            .iter()
            .map(|&i| stored[i]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let table: Vec<(&str, Vec<String>)> = vec![
        ("types=pod.*", pick(&[0, 1])),
        ("types=*.failed", pick(&[0, 2])),
        ("types=pod.*,job.completed", pick(&[0, 1, 3])),
        ("types=pod.failed&types=custom.*", pick(&[0, 4])),
        ("types=custom.*.generated", pick(&[4])),
        ("types=*&resourceType=job", pick(&[2, 3])),
        ("resourceType=pod&resourceId=p2", pick(&[1])),
        ("resourceId=u1", pick(&[5])),
        ("workspaceId=ws1", pick(&[0, 2])),
        ("workspaceId=ws2&types=job.*", pick(&[3])),
        ("types=nothing.*", vec![]),
    ];
    for (query, expected) in table {
        let got = app
            .history_all(&service, &format!("order=asc&{query}"))
            .await;
        assert_eq!(ids(&got), expected, "{query}");
    }
}

#[tokio::test]
async fn order_limit_and_time_bounds_behave_as_documented() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let mut stored = Vec::new();
    for i in 0..6 {
        stored.push(app.emit(&service, &custom(&format!("r{i}"))).await);
        // Distinct milliseconds, so that time bounds fall between events.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let page = json_of(
        app.get(&service, "/v1/events?types=custom.*&limit=2")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        ids(page["data"].as_array().unwrap()),
        ids(&[stored[5].clone(), stored[4].clone()]),
        "desc by default"
    );
    assert_eq!(page["hasMore"], true);
    assert!(page["nextCursor"].is_string());

    let all = json_of(
        app.get(&service, "/v1/events?types=custom.*")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 6);
    assert_eq!(all["hasMore"], false);
    assert_eq!(all["nextCursor"], Value::Null);

    let since = stored[2]["timestamp"].as_str().unwrap();
    let until = stored[4]["timestamp"].as_str().unwrap();
    let bounded = app
        .history_all(
            &service,
            &format!("types=custom.*&order=asc&since={since}&until={until}"),
        )
        .await;
    assert_eq!(
        ids(&bounded),
        ids(&stored[2..4]),
        "since inclusive, until exclusive"
    );

    let empty = app
        .history_all(&service, "types=custom.*&since=2999-01-01T00:00:00Z")
        .await;
    assert!(empty.is_empty());
    let old = app
        .history_all(&service, "types=custom.*&until=2000-01-01")
        .await;
    assert!(old.is_empty());
}

#[tokio::test]
async fn unparseable_parameters_are_refused_naming_them() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("order=sideways", "order"),
        ("since=yesterday", "since"),
        ("until=2026-13-45", "until"),
        ("cursor=garbage!", "cursor"),
        ("types=Pod.*", "types"),
        ("types=", "types"),
        ("resourceType=Pod", "resourceType"),
        ("limit=5&limit=6", "limit"),
        ("colour=blue", "colour"),
        ("organizationId=org-b", ""),
    ] {
        let response = app
            .get(&service, &format!("/v1/events?{query}"))
            .send()
            .await
            .unwrap();
        if param.is_empty() {
            assert_error(response, StatusCode::FORBIDDEN, "forbidden", None).await;
        } else {
            assert_error(
                response,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                Some(param),
            )
            .await;
        }
    }
    // A cursor of one order cannot continue the other.
    for _ in 0..3 {
        app.emit(&service, &custom("r")).await;
    }
    let page = json_of(
        app.get(&service, "/v1/events?limit=1")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let cursor = page["nextCursor"].as_str().unwrap();
    assert_error(
        app.get(
            &service,
            &format!("/v1/events?limit=1&order=asc&cursor={cursor}"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("cursor"),
    )
    .await;
    // An admin must say which organization.
    assert_error(
        app.get(ADMIN_KEY, "/v1/events").send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        Some("organizationId"),
    )
    .await;
}

#[tokio::test]
async fn cursor_paging_sees_every_event_exactly_once_while_a_writer_posts() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let batch: Vec<Value> = (0..500).map(|i| custom(&format!("before-{i}"))).collect();
    app.post_json(&service, "/v1/events/batch", &json!({"events": batch}))
        .send()
        .await
        .unwrap();
    let before = app.history_all(&service, "order=asc&types=custom.*").await;
    assert_eq!(before.len(), 500);

    let writer = {
        let client = app.client.clone();
        let url = app.url("/v1/events");
        let key = service.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..300 {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&custom(&format!("during-{i}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                written.push(
                    response.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            written
        })
    };
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/events?types=custom.*&limit=7&order={order}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = json_of(
                app.get(&service, &path).send().await.unwrap(),
                StatusCode::OK,
            )
            .await;
            seen.extend(ids(page["data"].as_array().unwrap()));
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        let unique: std::collections::HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{order}: an event was repeated");
        if order == "desc" {
            // Descending pages start at the newest event when the first page was read; every
            // event older than that appears exactly once.
            let first_page_top = seen[0].clone();
            let snapshot = app.history_all(&service, "order=desc&types=custom.*").await;
            let expected: Vec<String> = ids(&snapshot)
                .into_iter()
                .skip_while(|id| *id != first_page_top)
                .collect();
            assert_eq!(seen, expected, "desc paging skipped or reordered");
        } else {
            // Ascending paging reads everything stored before, and goes on into what arrives.
            assert_eq!(seen[..500].to_vec(), ids(&before));
            let all = ids(&app.history_all(&service, "order=asc&types=custom.*").await);
            assert_eq!(
                seen,
                all[..seen.len()].to_vec(),
                "asc paging skipped or reordered"
            );
        }
    }
    let written = writer.await.unwrap();
    let all = ids(&app.history_all(&service, "order=asc&types=custom.*").await);
    assert_eq!(
        all[500..].to_vec(),
        written,
        "acknowledged events are stored in acknowledgment order"
    );
}

#[tokio::test]
async fn another_organizations_events_do_not_exist_for_a_key() {
    let app = spawn_app().await;
    let a = app.key("org-a", "service").await;
    let b = app.key("org-b", "reader").await;
    let event = app.emit(&a, &custom("secret")).await;
    let id = event["id"].as_str().unwrap();
    assert_error(
        app.get(&b, &format!("/v1/events/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert!(app.history_all(&b, "types=custom.*").await.is_empty());
    assert_error(
        app.get(&b, "/v1/events?organizationId=org-a")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    assert_error(
        app.get(&b, "/v1/events?organizationId=*")
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    // The reader sees its own organization by naming it or not.
    assert_eq!(
        app.history_all(&b, "organizationId=org-b").await.len(),
        1,
        "its own key's credential.created"
    );
    // The admin sees one organization by name, or all with `*`, and any event by id.
    assert_eq!(
        app.history_all(ADMIN_KEY, "organizationId=org-a&types=custom.*")
            .await
            .len(),
        1
    );
    assert_eq!(
        app.history_all(ADMIN_KEY, "organizationId=*&types=credential.*")
            .await
            .len(),
        2,
        "one per organization"
    );
    json_of(
        app.get(ADMIN_KEY, &format!("/v1/events/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    for missing in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        assert_error(
            app.get(&a, &format!("/v1/events/{missing}"))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
}

#[tokio::test]
async fn expired_events_vanish_at_once_and_are_pruned() {
    let app = spawn_app_with(&["--retention", "2s"]).await;
    let service = app.key("org-a", "service").await;
    let old = app.emit(&service, &custom("old")).await;
    let id = old["id"].as_str().unwrap().to_owned();
    assert_eq!(app.history_all(&service, "types=custom.*").await.len(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = app.emit(&service, &custom("fresh")).await;
    // Invisible everywhere as soon as it is older than the retention period…
    assert_error(
        app.get(&service, &format!("/v1/events/{id}"))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_eq!(
        ids(&app.history_all(&service, "types=custom.*").await),
        ids(&[fresh])
    );
    assert_eq!(
        app.history_all(&service, "types=custom.*&since=2000-01-01")
            .await
            .len(),
        1
    );
    // …and deleted from the database by the pruning task soon after.
    let pruned = eventually(Duration::from_secs(10), || {
        let id = id.clone();
        let dir = app.dir.path().to_owned();
        async move { !crate::helpers::event_row_exists(&dir, &id).await }
    })
    .await;
    assert!(pruned, "the expired event is still in the database");
}
