//! Requests that arrive while the broker drains after SIGTERM: each is answered 503
//! `unavailable` with `Retry-After`, or its connection is refused before it is accepted; none is
//! read and then cut, and nothing acknowledged is lost.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{ADMIN_KEY, BrokerProcess, custom, json_of};

/// What became of one request sent during the drain.
#[derive(Debug)]
enum Outcome {
    /// Answered before the broker saw the signal: 201 (a write) or 200 (a read).
    Served(Option<String>),
    /// 503 `unavailable` with `Retry-After`.
    Unavailable,
    /// Connection refused: never accepted, nothing read.
    Refused,
    /// Anything else: a reset or a closed connection after the request was sent, or a wrong
    /// answer.
    Cut(String),
}

async fn send(request: reqwest::RequestBuilder) -> Outcome {
    match request.send().await {
        Err(e) if e.is_connect() => Outcome::Refused,
        Err(e) => Outcome::Cut(format!("{e:?}")),
        Ok(response) => {
            let status = response.status();
            let retry_after = response.headers().get("retry-after").cloned();
            let body = response.text().await;
            let Ok(body) = body else {
                return Outcome::Cut(format!("{status}: the body was cut"));
            };
            match status {
                StatusCode::SERVICE_UNAVAILABLE => {
                    let json: Value = serde_json::from_str(&body).unwrap_or_default();
                    if json["error"]["code"] == "unavailable" && retry_after.is_some() {
                        Outcome::Unavailable
                    } else {
                        Outcome::Cut(format!("503 without the contract's error: {body}"))
                    }
                }
                StatusCode::CREATED => {
                    let json: Value = serde_json::from_str(&body).unwrap_or_default();
                    Outcome::Served(json["id"].as_str().map(str::to_owned))
                }
                StatusCode::OK => Outcome::Served(None),
                other => Outcome::Cut(format!("{other}: {body}")),
            }
        }
    }
}

/// A request whose body arrives slowly: it is in flight when the signal comes, and holds the
/// drain window open until its body is finished.
struct SlowUpload {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl SlowUpload {
    async fn start(address: &str, key: &str) -> SlowUpload {
        let body = serde_json::to_vec(&custom("slow-upload")).unwrap();
        let host = address.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(first).await.unwrap();
        SlowUpload {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the rest of the body and answers the response's status line and body.
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut response = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.stream.read_to_end(&mut response),
        )
        .await;
        String::from_utf8_lossy(&response).into_owned()
    }
}

#[tokio::test]
async fn requests_arriving_during_the_drain_get_503_with_retry_after_or_are_refused_never_cut() {
    let dir = TempDir::new().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let service = broker.key(ADMIN_KEY, "service").await;
    // Pooled: keep-alive connections, warmed up so several are open and idle at the signal.
    let pooled = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    futures_util::future::join_all((0..8).map(|_| {
        pooled
            .get(broker.url("/v1/events?limit=1"))
            .bearer_auth(&service)
            .send()
    }))
    .await;
    // Fresh: a new connection for every request.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let slow = SlowUpload::start(&broker.address, &service).await;
    // The broker has read the slow request's head before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 32 clients send back to back, half on kept-alive connections, half on fresh ones, half
    // writes, half reads; each stops at its first answer that is not a success. The signal
    // comes while they run.
    let stop_at = std::time::Instant::now() + Duration::from_secs(20);
    let clients = (0..32).map(|c| {
        let client = if c % 2 == 0 {
            pooled.clone()
        } else {
            fresh.clone()
        };
        let url = broker.url("/v1/events");
        let service = service.clone();
        async move {
            let mut outcomes = Vec::new();
            for i in 0.. {
                let request = if c % 4 < 2 {
                    client
                        .post(&url)
                        .bearer_auth(&service)
                        .json(&custom(&format!("drain-{c}-{i}")))
                } else {
                    client.get(format!("{url}?limit=1")).bearer_auth(&service)
                };
                let outcome = send(request).await;
                let go_on = matches!(outcome, Outcome::Served(_));
                outcomes.push(outcome);
                if !go_on || std::time::Instant::now() > stop_at {
                    break;
                }
            }
            outcomes
        }
    });
    let pid = broker.child.id() as i32;
    let signal = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        unsafe { libc::kill(pid, libc::SIGTERM) };
    };
    let (outcomes, ()) = tokio::join!(futures_util::future::join_all(clients), signal);
    let outcomes: Vec<Outcome> = outcomes.into_iter().flatten().collect();
    let slow_response = slow.finish().await;

    let status = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the broker exits within 15 s of SIGTERM");
    assert!(status.success(), "{status:?}");

    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let served = count(|o| matches!(o, Outcome::Served(_)));
    let unavailable = count(|o| matches!(o, Outcome::Unavailable));
    let refused = count(|o| matches!(o, Outcome::Refused));
    let cut: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Cut(why) => Some(why),
            _ => None,
        })
        .collect();
    eprintln!(
        "{} requests around SIGTERM: {served} served, {unavailable} × 503, {refused} refused, {} cut",
        outcomes.len(),
        cut.len()
    );
    assert!(cut.is_empty(), "requests cut: {cut:#?}");
    // The drain keeps answering: the requests that reached the broker were told to come back.
    assert!(
        unavailable > 0,
        "no request got 503 (served {served}, refused {refused})"
    );
    assert!(
        slow_response.starts_with("HTTP/1.1 201"),
        "the request in flight at the signal was not finished: {slow_response}"
    );

    // Every acknowledged event is stored.
    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let page = json_of(
        reqwest::Client::new()
            .get(broker.url("/v1/events?limit=1000&types=custom.*"))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let stored: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    for outcome in &outcomes {
        if let Outcome::Served(Some(id)) = outcome {
            assert!(stored.contains(&id.as_str()), "acknowledged {id} was lost");
        }
    }
}
