//! Keys and roles (contract §2): creation, listing, revocation, the credential events, and the
//! role × endpoint permission table.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, assert_error, custom, json_of, spawn_app};

#[tokio::test]
async fn a_created_key_works_is_listed_without_its_secret_and_is_audited() {
    let app = spawn_app().await;
    let created = json_of(
        app.post_json(
            ADMIN_KEY,
            "/v1/keys",
            &json!({"organizationId": "org-a", "role": "app", "name": "billing"}),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let secret = created["key"].as_str().unwrap();
    assert!(secret.starts_with("cpk_") && secret.len() >= 36, "{secret}");
    assert_eq!(created["organizationId"], "org-a");
    assert_eq!(created["role"], "app");
    assert_eq!(created["name"], "billing");
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));
    app.emit(secret, &custom("r")).await;

    let listed = json_of(
        app.get(ADMIN_KEY, "/v1/keys?organizationId=org-a")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], created["id"]);
    assert!(!listed[0].to_string().contains(secret) && listed[0].get("key").is_none());

    let audit = app.history_all(secret, "types=credential.*").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["type"], "credential.created");
    assert_eq!(audit[0]["resourceType"], "credential");
    assert_eq!(audit[0]["resourceId"], created["id"]);
    assert_eq!(
        audit[0]["payload"],
        json!({"name": "billing", "role": "app"})
    );
    assert!(!audit[0].to_string().contains(secret));
}

#[tokio::test]
async fn a_revoked_key_is_refused_from_then_on_and_the_revocation_is_audited() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let created = app.created_key(&service, "reader", "dashboard").await;
    let (id, secret) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    assert_eq!(
        app.get(secret, "/v1/events").send().await.unwrap().status(),
        StatusCode::OK
    );

    let revoked = json_of(
        app.client
            .delete(app.url(&format!("/v1/keys/{id}")))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(revoked["revokedAt"].is_string());
    assert_error(
        app.get(secret, "/v1/events").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert_error(
        app.client
            .delete(app.url(&format!("/v1/keys/{id}")))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;

    let audit = app.history_all(&service, "types=credential.revoked").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["resourceId"], id);
    assert_eq!(
        audit[0]["payload"],
        json!({"name": "dashboard", "role": "reader"})
    );
    let listed = json_of(
        app.get(&service, "/v1/keys").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["id"] != id)
    );
}

#[tokio::test]
async fn missing_wrong_and_malformed_keys_are_401() {
    let app = spawn_app().await;
    let no_key = app.client.get(app.url("/v1/events")).send().await.unwrap();
    assert!(no_key.headers().contains_key("www-authenticate"));
    assert_error(no_key, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    for header in [
        "Bearer cpk_wrongwrongwrongwrongwrongwrongwrongwrong",
        "Basic dXNlcjpwYXNz",
        "cpk_x",
        "Bearer ",
    ] {
        let response = app
            .client
            .get(app.url("/v1/events"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    }
    // Refused before anything else is looked at.
    let response = app
        .client
        .post(app.url("/v1/events"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
}

#[tokio::test]
async fn key_creation_is_validated_and_limited_by_role() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    for (key, body, status, param) in [
        (
            ADMIN_KEY,
            json!({"role": "app", "name": "x"}),
            StatusCode::BAD_REQUEST,
            Some("organizationId"),
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "org-a", "role": "admin", "name": "x"}),
            StatusCode::BAD_REQUEST,
            Some("role"),
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "org-a", "role": "owner", "name": "x"}),
            StatusCode::BAD_REQUEST,
            Some("role"),
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "org-a", "role": "app"}),
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "org-a", "role": "app", "name": ""}),
            StatusCode::BAD_REQUEST,
            Some("name"),
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "org-a", "role": "app", "name": "x", "scopes": []}),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            ADMIN_KEY,
            json!({"organizationId": "*", "role": "app", "name": "x"}),
            StatusCode::BAD_REQUEST,
            Some("organizationId"),
        ),
        (
            service.as_str(),
            json!({"role": "service", "name": "x"}),
            StatusCode::FORBIDDEN,
            None,
        ),
        (
            service.as_str(),
            json!({"organizationId": "org-b", "role": "app", "name": "x"}),
            StatusCode::FORBIDDEN,
            None,
        ),
        (
            app_key.as_str(),
            json!({"role": "reader", "name": "x"}),
            StatusCode::FORBIDDEN,
            None,
        ),
    ] {
        let response = app.post_json(key, "/v1/keys", &body).send().await.unwrap();
        let code = if status == StatusCode::BAD_REQUEST {
            "invalid_request"
        } else {
            "forbidden"
        };
        assert_error(response, status, code, param).await;
    }
    // A service key manages its own organization's app and reader keys, and nothing else.
    let reader = app.created_key(&service, "reader", "r").await;
    assert_eq!(reader["organizationId"], "org-a");
    let other_service = app.key("org-b", "service").await;
    let other_app = json_of(
        app.post_json(
            &other_service,
            "/v1/keys",
            &json!({"role": "app", "name": "b"}),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let delete = |key: &str, id: &Value| {
        app.client
            .delete(app.url(&format!("/v1/keys/{}", id.as_str().unwrap())))
            .bearer_auth(key)
            .send()
    };
    assert_error(
        delete(&service, &other_app["id"]).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    let listed = json_of(
        app.get(&service, "/v1/keys").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["organizationId"] == "org-a")
    );
    let service_listed = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["role"] == "service")
        .unwrap()
        .clone();
    assert_error(
        delete(&service, &service_listed["id"]).await.unwrap(),
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    json_of(
        delete(ADMIN_KEY, &other_app["id"]).await.unwrap(),
        StatusCode::OK,
    )
    .await;
}

/// What each role gets on each endpoint: the contract's permission table.
#[tokio::test]
async fn every_role_gets_what_the_contract_says_on_every_endpoint() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let app_key = app.key("org-a", "app").await;
    let reader = app.key("org-a", "reader").await;
    let event = app.emit(&service, &custom("r")).await;
    let event_path = format!("/v1/events/{}", event["id"].as_str().unwrap());
    let custom_event = custom("r");
    let pod_event = json!({"type": "pod.failed", "resourceId": "p", "resourceType": "pod"});
    let batch = json!({"events": [custom("r")]});
    let new_reader = json!({"role": "reader", "name": "n"});
    type Case<'a> = (Method, &'a str, Option<&'a Value>, [u16; 4]);
    // Expected status for [admin, service, app, reader]. Admin names organizations in bodies and
    // queries, so its row uses the organization-qualified forms below.
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/events",
            Some(&custom_event),
            [201, 201, 201, 403],
        ),
        (
            Method::POST,
            "/v1/events",
            Some(&pod_event),
            [201, 201, 403, 403],
        ),
        (
            Method::POST,
            "/v1/events/batch",
            Some(&batch),
            [201, 201, 201, 403],
        ),
        (Method::GET, "/v1/events", None, [200, 200, 200, 200]),
        (Method::GET, &event_path, None, [200, 200, 200, 200]),
        (
            Method::POST,
            "/v1/keys",
            Some(&new_reader),
            [201, 201, 403, 403],
        ),
        (Method::GET, "/v1/keys", None, [200, 200, 403, 403]),
    ];
    for (method, path, body, expected) in cases {
        for (i, key) in [ADMIN_KEY, &service, &app_key, &reader]
            .into_iter()
            .enumerate()
        {
            let (path, body) = if i == 0 {
                admin_form(path, body)
            } else {
                (path.to_owned(), body.cloned())
            };
            let mut request = app
                .client
                .request(method.clone(), app.url(&path))
                .bearer_auth(key);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status().as_u16();
            assert_eq!(status, expected[i], "{method} {path} as role #{i}");
        }
    }
}

/// The same request as an admin must make it: naming the organization.
fn admin_form(path: &str, body: Option<&Value>) -> (String, Option<Value>) {
    let body = body.map(|b| {
        let mut b = b.clone();
        if let Some(events) = b.get_mut("events").and_then(Value::as_array_mut) {
            for e in events {
                e["organizationId"] = json!("org-a");
            }
        } else {
            b["organizationId"] = json!("org-a");
        }
        b
    });
    let path = if path == "/v1/events" && body.is_none() {
        "/v1/events?organizationId=org-a".to_owned()
    } else {
        path.to_owned()
    };
    (path, body)
}

#[tokio::test]
async fn the_per_key_rate_limit_answers_429_with_retry_after() {
    let app = crate::helpers::spawn_app_with(&["--rate-limit", "5"]).await;
    let reader = app.key("org-a", "reader").await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..12 {
        let response = app.get(&reader, "/v1/events").send().await.unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 5,
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    // Another key has its own budget.
    let other = app.key("org-a", "reader").await;
    assert_eq!(
        app.get(&other, "/v1/events").send().await.unwrap().status(),
        StatusCode::OK
    );
}
