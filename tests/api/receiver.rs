//! A webhook receiver for tests: a real HTTP server on port 0 that records every request and
//! answers from a script (then 200), or holds requests open.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// An answer: status and extra headers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Answer>>,
    default: Mutex<Option<Answer>>,
    /// How many of the next requests to hold open (never answered).
    hold: AtomicUsize,
}

pub struct Receiver {
    pub url: String,
    shared: Arc<Shared>,
}

async fn record(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    shared.received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    let hold = shared
        .hold
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if hold {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let answer = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| shared.default.lock().unwrap().clone())
        .unwrap_or(Answer::status(200));
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(answer.status).unwrap());
    for (name, value) in answer.headers {
        response.insert_header((name, value));
    }
    response.body(answer.body)
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap()).await
    }

    /// Starts on a given listener (to come back on a port a webhook already names).
    pub async fn start_on(listener: TcpListener) -> Receiver {
        let shared = Arc::new(Shared::default());
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Receiver { url, shared }
    }

    /// Answers these, in order, before going back to the default.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.script.lock().unwrap().extend(answers);
    }

    /// Holds the next `count` requests open instead of answering them (a hung endpoint).
    #[allow(dead_code)] // used by tests/cluster, which shares this file
    pub fn hold_next(&self, count: usize) {
        self.shared.hold.store(count, Ordering::SeqCst);
    }

    pub fn answer_always(&self, answer: Answer) {
        *self.shared.default.lock().unwrap() = Some(answer);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("the receiver got {} of {count} requests", received.len());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
