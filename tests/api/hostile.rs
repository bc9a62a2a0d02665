//! What a hostile or broken client can try (issue 13): unbounded metric labels, huge filters,
//! stalled bodies, malformed HTTP, oversized and fragmented WebSocket frames, endpoint floods.
//! Several tests speak raw TCP, since a well-behaved client library would not send their bytes.

use crate::helpers::{ADMIN_KEY, BrokerProcess};

/// The broker's metrics text.
async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn request_metrics_label_unknown_methods_as_other_and_do_not_grow() {
    // A process of its own: the metrics recorder is process-wide.
    let dir = tempfile::TempDir::new().unwrap();
    let broker = BrokerProcess::start(
        dir.path(),
        &[("CPOD_ADMIN_KEY", ADMIN_KEY), ("RUST_LOG", "warn")],
    );
    let client = reqwest::Client::new();
    // Every label combination these requests can make exists once before measuring.
    for method in ["BREW", "PROPFIND"] {
        for path in ["/healthz", "/no/such/path"] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            client
                .request(method, broker.url(path))
                .send()
                .await
                .unwrap();
        }
    }
    // The first scrape is counted after it is answered: scrape twice.
    metrics(&broker.address).await;
    let before = metrics(&broker.address).await.len();
    for i in 0..200 {
        let method = format!("X{i:04}{}", "Y".repeat(2000));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let path = format!("/no/such/{i}/{}", "p".repeat(500));
        for path in [path.as_str(), "/healthz"] {
            let response = client
                .request(method.clone(), broker.url(path))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
    }
    let after = metrics(&broker.address).await;
    assert!(
        !after.contains("YYYYYYYYYY") && !after.contains("pppppppppp"),
        "a raw method or path became a label"
    );
    assert!(
        after.len() < before + 512,
        "/metrics grew from {before} to {} bytes",
        after.len()
    );
    assert!(
        after.contains("method=\"other\""),
        "unknown methods are counted as `other`"
    );
}
