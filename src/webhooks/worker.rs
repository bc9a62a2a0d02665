//! The delivery worker: claims due deliveries from the store with a lease, sends them
//! concurrently (bounded overall and per endpoint), records every attempt and schedules the next.
//!
//! At least once: a delivery leaves the queue only when an attempt's outcome is committed. Each
//! claim is a lease of [`lease_duration`] (more than twice the request timeout) held by this
//! node: nobody else attempts the delivery meanwhile, an attempt is only started while enough of
//! the lease is left to finish it, and only the holder's record counts. An attempt cut short by
//! a crash is due again when its lease runs out (at once after a restart on SQLite); one cut
//! short by shutdown gives its lease back. The worker wakes when the commit feed says deliveries
//! are due (on whichever node they were queued), and polls as a backstop for retries coming due.
//! A claim carries its endpoint as read at claim time; when the feed says endpoints changed (on
//! any node) before an attempt starts, the endpoint is read again, so an update, disabling,
//! deletion or secret rotation applies to every attempt started after the feed brings it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::WebhookSettings;
use super::signing::sign;
use super::url_guard;
use crate::cloudevents::{
    ContentMode, EncodeError, EventFormat, STRUCTURED_MEDIA_TYPE, binary_message, encode,
};
use crate::event::unix_now_ms;
use crate::store::webhooks::{
    AttemptOutcome, AttemptRecord, ClaimRequest, DeliveryFormat, Disable, DueDelivery, NextStep,
    WebhookRecord,
};
use crate::store::{Change, FeedReader, Store, StoreError};
use crate::trace_context::TraceContext;

/// Bytes of an answer kept in the attempt log.
pub const MAX_LOGGED_BODY: usize = 20_000;
/// How often the queue is looked at when nothing wakes the worker.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
const DUE_BATCH: usize = 256;
/// Deliveries claimed per endpoint for each attempt it may have in flight: a few wait on its
/// semaphore so that a freed slot is used at once, and an endpoint with this many claimed is
/// left out of the next reads, so that its backlog cannot hide other endpoints' deliveries.
const CLAIMS_PER_SENDING_SLOT: usize = 4;
/// The least time between two reads of the queue: under load, commits wake the worker far more
/// often than that, and each read would return the same in-flight deliveries again.
const MIN_READ_INTERVAL: Duration = Duration::from_millis(10);

/// What one attempt got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub body: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// A delivery's body and the headers that describe it, in the endpoint's format. The body is
/// what is signed, byte for byte, and the same on every attempt (its encoding is deterministic).
struct DeliveryMessage {
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl DeliveryMessage {
    fn of(format: DeliveryFormat, json: Bytes) -> Result<Self, EncodeError> {
        let content_type = |value: &str| vec![("content-type".to_owned(), value.to_owned())];
        Ok(match format {
            DeliveryFormat::Cpod => Self {
                headers: content_type("application/json"),
                body: json,
            },
            DeliveryFormat::CloudEvents(ContentMode::Structured) => Self {
                headers: content_type(STRUCTURED_MEDIA_TYPE),
                body: encode(&json, EventFormat::CloudEvents)?,
            },
            DeliveryFormat::CloudEvents(ContentMode::Binary) => {
                let message = binary_message(&json)?;
                Self {
                    headers: message.headers,
                    body: message.body,
                }
            }
        })
    }
}

/// Sends signed webhook requests: shared by the worker and the `test` endpoint.
pub struct Deliverer {
    client: reqwest::Client,
    pub settings: WebhookSettings,
}

impl Deliverer {
    pub fn new(settings: WebhookSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(url_guard::resolver(settings.allow_private))
            .user_agent(concat!("cpod-events-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, settings })
    }

    /// One signed POST of the event (`body`, its stored JSON) to the endpoint, written in the
    /// endpoint's format, with `trace` as its `traceparent` and `tracestate` headers; never
    /// fails, the result says what happened.
    pub async fn send(
        &self,
        webhook: &WebhookRecord,
        message_id: &str,
        event_type: &str,
        body: Bytes,
        trace: Option<&TraceContext>,
    ) -> AttemptResult {
        let started = Instant::now();
        let failed = |error: String| AttemptResult {
            status: None,
            error: Some(error),
            duration_ms: started.elapsed().as_millis() as i64,
            body: None,
            retry_after: None,
        };
        let url = match url_guard::parse(&webhook.url) {
            Ok(url) => url,
            Err(e) => return failed(e.to_string()),
        };
        if let Err(e) = url_guard::check(&url, self.settings.allow_private).await {
            return failed(format!("refused: {e}"));
        }
        let message = match DeliveryMessage::of(webhook.format, body) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(error = %e, webhook = %webhook.id, "a delivery could not be encoded");
                return failed("the event could not be encoded".into());
            }
        };
        let body = message.body;
        let timestamp = unix_now_ms() / 1000;
        let signatures = sign(
            &webhook.active_secrets(unix_now_ms()),
            message_id,
            timestamp,
            &body,
        );
        let mut request = self.client.post(url);
        for (name, value) in message.headers {
            request = request.header(name, value);
        }
        let mut request = request
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.standard)
            .header("x-cpod-signature", signatures.cpod)
            .header("x-cpod-event-type", event_type);
        if let Some(trace) = trace {
            request = request.header("traceparent", trace.parent.to_string());
            if let Some(state) = &trace.state {
                request = request.header("tracestate", state.as_str());
            }
        }
        let request = request.body(body);
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut kept = Vec::new();
        let mut stream = response.bytes_stream();
        let mut error = None;
        while kept.len() < MAX_LOGGED_BODY {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    kept.extend_from_slice(&chunk[..chunk.len().min(MAX_LOGGED_BODY - kept.len())])
                }
                Some(Err(e)) => {
                    error = Some(format!("reading the answer failed: {}", describe(&e)));
                    break;
                }
                None => break,
            }
        }
        let ok = (200..300).contains(&status);
        AttemptResult {
            status: Some(status),
            error: error.or_else(|| (!ok).then(|| format!("the endpoint answered {status}"))),
            duration_ms: started.elapsed().as_millis() as i64,
            body: Some(String::from_utf8_lossy(&kept).into_owned()),
            retry_after,
        }
    }

    /// What follows attempt number `attempt` (1-based) of a delivery to `webhook`.
    pub fn next_step(
        &self,
        webhook: &WebhookRecord,
        attempt: i64,
        result: &AttemptResult,
        now_ms: i64,
    ) -> (NextStep, Option<Disable>) {
        if result.succeeded() {
            return (NextStep::Succeeded, None);
        }
        if result.status == Some(410) {
            return (
                NextStep::Failed,
                Some(Disable {
                    reason: "the endpoint answered 410 Gone".into(),
                    unless_success_since: None,
                }),
            );
        }
        match self.settings.schedule.get(attempt as usize) {
            Some(delay) => {
                let mut at = now_ms + jittered(*delay).as_millis() as i64;
                if let Some(wait) = result.retry_after {
                    at = at.max(now_ms + wait.as_millis() as i64);
                }
                (NextStep::RetryAt(at), None)
            }
            None => {
                let last_success = webhook.last_success_ms.unwrap_or(webhook.created_ms);
                let silent_for = now_ms - last_success;
                let window = self.settings.disable_after.as_millis() as i64;
                let disable = (silent_for >= window).then(|| Disable {
                    reason: "no successful delivery while a delivery exhausted its retries".into(),
                    unless_success_since: Some(now_ms - window),
                });
                (NextStep::Failed, disable)
            }
        }
    }
}

/// A delay with ±20% jitter (zero stays zero).
pub fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(rand::random_range(0.8..=1.2))
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(7 * 86_400)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at.timestamp_millis() - unix_now_ms();
    Some(Duration::from_millis(wait.max(0) as u64))
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        format!(
            "could not connect: {}",
            std::error::Error::source(error).map_or_else(|| error.to_string(), |s| s.to_string())
        )
    } else {
        error.to_string()
    }
}

/// How long a claim holds: twice the request timeout and a margin, so that a holder that starts
/// an attempt only with a timeout's worth of lease left always records before it runs out.
pub fn lease_duration(settings: &WebhookSettings) -> Duration {
    settings.timeout * 2 + Duration::from_secs(10)
}

/// Deliveries this node holds a lease on and has not recorded yet, with their endpoint.
type Claims = Arc<Mutex<HashMap<Uuid, Uuid>>>;

/// Runs until `shutdown` is cancelled; `feed` wakes it when deliveries are queued.
pub async fn run(
    store: Store,
    feed: FeedReader,
    deliverer: Arc<Deliverer>,
    shutdown: CancellationToken,
) {
    // Leases are taken in this node's name; a restart is a new node.
    let owner = Uuid::now_v7();
    let lease = lease_duration(&deliverer.settings);
    let ready = Arc::new(tokio::sync::Notify::new());
    let endpoints_changed = Arc::new(AtomicU64::new(0));
    let waker = tokio::spawn(wake_on_deliveries(
        feed,
        ready.clone(),
        endpoints_changed.clone(),
        shutdown.clone(),
    ));
    let claims: Claims = Arc::default();
    let (outcomes, recorded) = mpsc::channel(1024);
    let recorder = tokio::spawn(record(store.clone(), recorded, claims.clone()));
    let overall = Arc::new(Semaphore::new(deliverer.settings.max_in_flight));
    let mut per_endpoint: HashMap<Uuid, Arc<Semaphore>> = HashMap::new();
    let mut attempts = JoinSet::new();
    let mut last_gauges = Instant::now() - Duration::from_secs(10);
    let mut last_read = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ready.notified() => {}
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        tokio::time::sleep_until((last_read + MIN_READ_INTERVAL).into()).await;
        last_read = Instant::now();
        while attempts.try_join_next().is_some() {}
        if last_gauges.elapsed() > Duration::from_secs(1) {
            last_gauges = Instant::now();
            if let Ok((depth, oldest)) = store.delivery_queue_state().await {
                metrics::gauge!("cpod_webhook_queue_depth").set(depth as f64);
                metrics::gauge!("cpod_webhook_oldest_pending_seconds")
                    .set(oldest.unwrap_or(0) as f64 / 1000.0);
            }
            per_endpoint.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let busy: Vec<Uuid> = {
            let claims = claims.lock().expect("claims lock");
            let mut sending: HashMap<Uuid, usize> = HashMap::new();
            for webhook in claims.values() {
                *sending.entry(*webhook).or_default() += 1;
            }
            sending
                .into_iter()
                .filter(|(_, n)| {
                    *n >= CLAIMS_PER_SENDING_SLOT * deliverer.settings.max_in_flight_per_endpoint
                })
                .map(|(webhook, _)| webhook)
                .collect()
        };
        // Read before the claim: a change the feed brings after it is seen as one.
        let claimed_in = endpoints_changed.load(Ordering::Acquire);
        let due = match store
            .claim_deliveries(ClaimRequest {
                owner,
                now_ms: store.clock().now_ms(),
                lease_ms: lease.as_millis() as i64,
                limit: DUE_BATCH,
                busy,
            })
            .await
        {
            Ok(due) => due,
            // Said once by the store, not on every poll: deliveries wait for space.
            Err(StoreError::StorageFull) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook deliveries");
                continue;
            }
        };
        {
            let mut claims = claims.lock().expect("claims lock");
            for delivery in &due {
                claims.insert(delivery.id, delivery.webhook.id);
            }
        }
        for mut delivery in due {
            let endpoint = per_endpoint
                .entry(delivery.webhook.id)
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(
                        deliverer.settings.max_in_flight_per_endpoint,
                    ))
                })
                .clone();
            let (deliverer, overall, outcomes, store, claims, endpoints_changed) = (
                deliverer.clone(),
                overall.clone(),
                outcomes.clone(),
                store.clone(),
                claims.clone(),
                endpoints_changed.clone(),
            );
            attempts.spawn(async move {
                let _endpoint = endpoint.acquire_owned().await;
                let _overall = overall.acquire_owned().await;
                if endpoints_changed.load(Ordering::Acquire) != claimed_in {
                    // The endpoint may have changed since the claim: attempt with what it is
                    // now, or give the claim back if it is gone or disabled (or unreadable).
                    match store.webhook(delivery.webhook.id).await {
                        Ok(Some(webhook)) if webhook.enabled => delivery.webhook = webhook,
                        _ => {
                            claims.lock().expect("claims lock").remove(&delivery.id);
                            let _ = store.release_deliveries(owner, vec![delivery.id]).await;
                            return;
                        }
                    }
                }
                // Waiting for a slot used part of the lease: start only if an attempt can still
                // finish (and be recorded) within it; otherwise give the claim back.
                let left_ms = delivery.lease.until_ms - store.clock().now_ms();
                if left_ms < deliverer.settings.timeout.as_millis() as i64 + 5_000 {
                    claims.lock().expect("claims lock").remove(&delivery.id);
                    let _ = store.release_deliveries(owner, vec![delivery.id]).await;
                    return;
                }
                let _ = outcomes.send(attempt(&deliverer, delivery).await).await;
            });
        }
    }
    // Attempts cut short here give their leases back: due again at once, for any node.
    attempts.shutdown().await;
    drop(outcomes);
    let _ = recorder.await;
    let unfinished: Vec<Uuid> = claims
        .lock()
        .expect("claims lock")
        .keys()
        .copied()
        .collect();
    if let Err(e) = store.release_deliveries(owner, unfinished).await {
        tracing::debug!(error = %e, "cannot give webhook leases back; they will run out");
    }
    let _ = waker.await;
}

/// Wakes the worker whenever the feed says deliveries may be due, and counts the changes to
/// endpoints (or the chances of having missed one) in `endpoints_changed`.
async fn wake_on_deliveries(
    mut feed: FeedReader,
    ready: Arc<tokio::sync::Notify>,
    endpoints_changed: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    loop {
        let commit = tokio::select! {
            _ = shutdown.cancelled() => return,
            commit = feed.next() => commit,
        };
        match commit {
            Ok(commit) if !commit.changes.is_empty() => {
                if commit
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::WebhooksChanged | Change::Resync))
                {
                    endpoints_changed.fetch_add(1, Ordering::AcqRel);
                }
                ready.notify_one();
            }
            Ok(_) => {}
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::debug!(error = %e, "the webhook worker cannot read the feed; polling");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                }
            }
        }
    }
}

/// Records attempt outcomes, all that are waiting in one write, and then forgets their claims.
async fn record(store: Store, mut outcomes: mpsc::Receiver<AttemptOutcome>, claims: Claims) {
    const MAX_BATCH: usize = 256;
    while let Some(first) = outcomes.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match outcomes.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        // Successes first: a success in the same batch keeps a silence rule from disabling its
        // endpoint.
        batch.sort_by_key(|o| o.next != NextStep::Succeeded);
        let ids: Vec<Uuid> = batch.iter().map(|o| o.delivery_id).collect();
        match store.record_attempts(batch).await {
            Ok(0) => {}
            Ok(stale) => tracing::warn!(
                stale,
                "attempts not recorded: their lease had been taken over or another attempt was recorded first"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record webhook attempts; they will be retried when their leases run out")
            }
        }
        let mut claims = claims.lock().expect("claims lock");
        for id in ids {
            claims.remove(&id);
        }
    }
}

/// Makes one attempt of a due delivery, as a span in its event's trace; answers the outcome to
/// record.
async fn attempt(deliverer: &Deliverer, delivery: DueDelivery) -> AttemptOutcome {
    let number = delivery.attempts + 1;
    let (span, trace) = crate::spans::webhook_attempt(
        delivery.trace.as_ref(),
        delivery.id,
        delivery.event_id,
        number,
    );
    attempt_in(deliverer, delivery, number, trace.as_ref())
        .instrument(span)
        .await
}

async fn attempt_in(
    deliverer: &Deliverer,
    delivery: DueDelivery,
    number: i64,
    trace: Option<&TraceContext>,
) -> AttemptOutcome {
    let attempted_ms = unix_now_ms();
    let result = match delivery.body.clone() {
        Some(body) => {
            deliverer
                .send(
                    &delivery.webhook,
                    &delivery.event_id.to_string(),
                    &delivery.event_type,
                    body,
                    trace,
                )
                .await
        }
        None => AttemptResult {
            status: None,
            error: Some("the event has expired".into()),
            duration_ms: 0,
            body: None,
            retry_after: None,
        },
    };
    metrics::histogram!("cpod_webhook_attempt_seconds").record(result.duration_ms as f64 / 1000.0);
    let (next, disable) = if delivery.body.is_none() {
        (NextStep::Failed, None)
    } else {
        deliverer.next_step(&delivery.webhook, number, &result, unix_now_ms())
    };
    let outcome_label = match next {
        NextStep::Succeeded => "succeeded",
        NextStep::RetryAt(_) => "retrying",
        NextStep::Failed => "failed",
    };
    metrics::counter!("cpod_webhook_deliveries_total", "outcome" => outcome_label).increment(1);
    tracing::Span::current().record("status", result.status);
    tracing::debug!(
        webhook = %delivery.webhook.id,
        outcome = outcome_label,
        duration_ms = result.duration_ms,
        "webhook attempt made"
    );
    if let Some(disable) = &disable {
        tracing::warn!(webhook = %delivery.webhook.id, reason = disable.reason.as_str(), "disabling a webhook endpoint");
    }
    AttemptOutcome {
        delivery_id: delivery.id,
        lease_owner: delivery.lease.owner,
        webhook_id: delivery.webhook.id,
        attempt: AttemptRecord {
            attempt: number,
            response_status: result.status,
            error: result.error,
            duration_ms: result.duration_ms,
            attempted_ms,
            response_body: result.body,
        },
        next,
        disable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(created_ms: i64, last_success_ms: Option<i64>) -> WebhookRecord {
        WebhookRecord {
            id: Uuid::nil(),
            organization_id: "o".into(),
            url: "http://example.com".into(),
            types: vec!["*".into()],
            resource_type: None,
            description: None,
            enabled: true,
            secret: "whsec_x".into(),
            previous_secret: None,
            previous_secret_expires_ms: None,
            created_ms,
            last_success_ms,
            disabled_reason: None,
            format: Default::default(),
        }
    }

    fn result(status: Option<u16>, retry_after: Option<u64>) -> AttemptResult {
        AttemptResult {
            status,
            error: None,
            duration_ms: 1,
            body: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    fn deliverer(schedule: &[u64]) -> Deliverer {
        Deliverer::new(WebhookSettings::new(
            schedule.iter().map(|s| Duration::from_secs(*s)).collect(),
            true,
            Duration::from_secs(5 * 86_400),
        ))
        .unwrap()
    }

    #[test]
    fn the_schedule_decides_retries_with_jitter_and_retry_after() {
        let d = deliverer(&[0, 100, 1000]);
        let w = webhook(0, None);
        let now = 1_000_000;
        let (next, _) = d.next_step(&w, 1, &result(Some(500), None), now);
        let NextStep::RetryAt(at) = next else {
            panic!("{next:?}")
        };
        assert!((now + 80_000..=now + 120_000).contains(&at), "{at}");
        let (next, _) = d.next_step(&w, 1, &result(Some(503), Some(600)), now);
        assert!(matches!(next, NextStep::RetryAt(at) if at >= now + 600_000));
        let (next, _) = d.next_step(&w, 2, &result(None, None), now);
        assert!(matches!(next, NextStep::RetryAt(at) if at >= now + 800_000));
        let (next, disable) = d.next_step(&w, 3, &result(Some(500), None), now);
        assert_eq!(
            (next, disable),
            (NextStep::Failed, None),
            "exhausted, but not silent for 5 days"
        );
        assert_eq!(
            d.next_step(&w, 1, &result(Some(204), None), now).0,
            NextStep::Succeeded
        );
        let immediate = deliverer(&[0, 0]);
        assert_eq!(
            immediate.next_step(&w, 1, &result(Some(302), None), now).0,
            NextStep::RetryAt(now),
            "a redirect is a failure"
        );
    }

    #[test]
    fn gone_disables_at_once_and_long_silence_disables_on_exhaustion() {
        let d = deliverer(&[0]);
        let day = 86_400_000;
        let (next, disable) = d.next_step(
            &webhook(0, Some(10 * day)),
            1,
            &result(Some(410), None),
            10 * day,
        );
        assert_eq!(next, NextStep::Failed);
        assert!(disable.is_some());
        let (_, disable) = d.next_step(
            &webhook(0, Some(4 * day)),
            1,
            &result(Some(500), None),
            10 * day,
        );
        assert!(disable.is_some(), "six days without success");
        let (_, disable) = d.next_step(
            &webhook(0, Some(6 * day)),
            1,
            &result(Some(500), None),
            10 * day,
        );
        assert!(disable.is_none(), "four days without success");
    }

    #[tokio::test]
    async fn every_attempt_checks_the_address_again() {
        let guarded = Deliverer::new(WebhookSettings::new(
            vec![Duration::ZERO],
            false,
            Duration::from_secs(60),
        ))
        .unwrap();
        for url in [
            "http://127.0.0.1:9/",
            "http://localhost:9/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            let mut endpoint = webhook(0, None);
            endpoint.url = url.into();
            let result = guarded
                .send(&endpoint, "id", "custom.a", Bytes::from_static(b"{}"), None)
                .await;
            assert_eq!(result.status, None, "{url}");
            assert!(
                result.error.as_deref().unwrap_or("").starts_with("refused"),
                "{url}: {result:?}"
            );
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert!(
            parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT").unwrap()
                > Duration::from_secs(86_400)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
