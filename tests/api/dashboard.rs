//! The dashboard's assets at `/` and `GET /v1/keys/me`, which tells a client its key's
//! organization and role. The dashboard itself is tested in a real browser (`tests/browser.rs`).

use reqwest::StatusCode;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::json;

use crate::helpers::{ADMIN_KEY, assert_error, json_of, spawn_app};

#[tokio::test]
async fn the_dashboard_and_its_assets_are_served_with_their_types_a_strict_csp_and_etags() {
    let app = spawn_app().await;
    for (path, content_type, marker) in [
        (
            "/",
            "text/html; charset=utf-8",
            "<title>cPod Events</title>",
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            "from '/sdk.js'",
        ),
        (
            "/sdk.js",
            "text/javascript; charset=utf-8",
            "export class CpodClient",
        ),
        ("/style.css", "text/css; charset=utf-8", ":root"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers[CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[CACHE_CONTROL], "no-cache", "{path}");
        let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'none'"), "{csp}");
        assert!(
            !csp.contains("http"),
            "no external origin is allowed: {csp}"
        );
        let etag = headers[ETAG].to_str().unwrap().to_owned();
        assert!(response.text().await.unwrap().contains(marker), "{path}");

        let revalidated = app
            .client
            .get(app.url(path))
            .header(IF_NONE_MATCH, &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(revalidated.headers()[ETAG].to_str().unwrap(), etag);
        assert!(revalidated.bytes().await.unwrap().is_empty());

        let stale = app
            .client
            .get(app.url(path))
            .header(IF_NONE_MATCH, "\"an-older-build\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn unknown_paths_and_other_methods_keep_their_json_errors() {
    let app = spawn_app().await;
    assert_error(
        app.client.get(app.url("/nothing.js")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;
    assert_error(
        app.client.post(app.url("/")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}

#[tokio::test]
async fn a_key_reads_its_own_organization_and_role_never_its_secret() {
    let app = spawn_app().await;
    let reader = app.key("org-me", "reader").await;
    let me = json_of(
        app.get(&reader, "/v1/keys/me").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(me["organizationId"], "org-me");
    assert_eq!(me["role"], "reader");
    assert_eq!(me["name"], "reader key");
    assert!(me["id"].is_string() && me["createdAt"].is_string());
    assert!(me.get("key").is_none(), "{me}");
    assert!(!me.to_string().contains(&reader));

    let admin = json_of(
        app.get(ADMIN_KEY, "/v1/keys/me").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(admin["role"], "admin");
    assert_eq!(admin["organizationId"], json!(null));
}

#[tokio::test]
async fn keys_me_refuses_a_missing_or_revoked_key_and_other_methods() {
    let app = spawn_app().await;
    assert_error(
        app.client.get(app.url("/v1/keys/me")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    let service = app.key("org-me", "service").await;
    let created = app.created_key(&service, "app", "short-lived").await;
    let secret = created["key"].as_str().unwrap();
    json_of(
        app.get(secret, "/v1/keys/me").send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    app.revoke(&service, &created).await;
    assert_error(
        app.get(secret, "/v1/keys/me").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    assert_error(
        app.client
            .delete(app.url("/v1/keys/me"))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    )
    .await;
}

#[tokio::test]
async fn the_openapi_document_describes_keys_me_the_dashboard_and_the_sdk() {
    let app = spawn_app().await;
    let document = json_of(
        app.client
            .get(app.url("/openapi.json"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    for path in ["/v1/keys/me", "/", "/sdk.js"] {
        assert!(document["paths"][path]["get"].is_object(), "{path}");
    }
}

#[tokio::test]
async fn the_dashboard_links_both_api_documents_and_they_are_served() {
    let app = spawn_app().await;
    let page = app
        .client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for document in ["/openapi.json", "/asyncapi.json"] {
        assert!(
            page.contains(&format!("href=\"{document}\"")),
            "the page links {document}"
        );
        let body = json_of(
            app.client.get(app.url(document)).send().await.unwrap(),
            StatusCode::OK,
        )
        .await;
        assert!(body["info"]["title"].is_string(), "{document}");
    }
}
