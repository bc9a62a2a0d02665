//! The store conformance suite: what every backend must do, written against the seam
//! ([`Store`]) only. Each backend runs the whole suite (`suite!` below makes one test per case
//! and backend); a new backend joins by adding one line.
//!
//! The clock is a manual one, so expiry, leases and a clock that goes back are tested without
//! sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use uuid::Uuid;

use super::webhooks::{AttemptOutcome, AttemptRecord, ClaimRequest, NextStep, WebhookRecord};
use super::*;
use crate::event::{EventType, ResourceId, ResourceType};
use crate::keys::{KeyRecord, NewKey, Role, hash_secret};

/// A store on a manual clock, which can be closed and opened again on the same data.
struct Harness {
    store: Store,
    config: StoreConfig,
    clock: Arc<AtomicI64>,
    /// Where the data lives (a directory, a database), removed when the test ends.
    _data: Box<dyn std::any::Any + Send>,
}

impl Harness {
    fn now(&self) -> i64 {
        self.clock.load(Ordering::Acquire)
    }

    fn set_clock(&self, ms: i64) {
        self.clock.store(ms, Ordering::Release);
    }

    async fn reopen(&mut self) {
        self.store.close().await;
        self.store = Store::open(&self.config).await.expect("the store reopens");
    }
}

/// A SQLite store in a fresh directory.
fn sqlite(
    retention_ms: i64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Harness> + Send>> {
    Box::pin(open_sqlite(retention_ms))
}

async fn open_sqlite(retention_ms: i64) -> Harness {
    let dir = tempfile::TempDir::new().unwrap();
    let clock = Arc::new(AtomicI64::new(1_700_000_000_000));
    let config = StoreConfig {
        backend: Backend::Sqlite {
            path: dir.path().join("conformance.db"),
            sync: SyncMode::Off,
            readers: 4,
            min_free_bytes: 0,
        },
        retention_ms,
        clock: Clock::manual(clock.clone()),
    };
    Harness {
        store: Store::open(&config).await.unwrap(),
        config,
        clock,
        _data: Box::new(dir),
    }
}

/// A PostgreSQL store in a fresh database on the local server.
fn postgres(
    retention_ms: i64,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Harness> + Send>> {
    Box::pin(open_postgres(retention_ms))
}

async fn open_postgres(retention_ms: i64) -> Harness {
    let database = super::postgres::testing::TestDatabase::create().await;
    let clock = Arc::new(AtomicI64::new(1_700_000_000_000));
    let config = StoreConfig {
        backend: Backend::Postgres {
            url: database.url(),
            pool_size: 8,
        },
        retention_ms,
        clock: Clock::manual(clock.clone()),
    };
    Harness {
        store: Store::open(&config).await.unwrap(),
        config,
        clock,
        _data: Box::new(database),
    }
}

/// One test per case for a backend: `suite!(module, opener; case, …)`.
macro_rules! suite {
    ($backend:ident, $open:path; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case($open).await
                }
            )*
        }
    };
}

/// Every case for a backend: `every_case!(module, opener)`.
macro_rules! every_case {
    ($backend:ident, $open:path) => {
        suite!($backend, $open;
    positions_follow_commit_order_without_gaps_under_concurrent_appends,
    an_idempotency_key_raced_by_many_requests_stores_its_events_once,
    positions_are_never_reused_after_pruning_and_a_restart,
    timestamps_and_ids_never_go_back_when_the_clock_does,
    a_delivery_lease_excludes_other_claims_until_it_runs_out_and_is_then_taken_over,
    a_released_lease_is_claimable_at_once_and_attempts_are_numbered_without_gaps,
    retention_hides_expired_events_at_once_and_pruning_removes_them,
    the_feed_delivers_every_commit_in_order_from_any_start_with_its_changes,
    a_feed_reader_that_falls_behind_catches_up_from_the_store_and_asks_for_a_resync,
    concurrent_webhook_creations_never_pass_the_organization_limit,
    history_answers_filters_with_far_more_type_patterns_than_the_domain_allows,
    the_timestamp_after_a_position_is_the_next_events,
    an_events_trace_context_is_stored_and_read_back_by_every_read,
        );
    };
}

every_case!(sqlite, super::sqlite);
every_case!(postgres, super::postgres);

/// Opens a fresh store of one backend with this retention.
type Opener = fn(i64) -> std::pin::Pin<Box<dyn std::future::Future<Output = Harness> + Send>>;

fn org() -> OrganizationId {
    OrganizationId::parse("org-c").unwrap()
}

fn event(n: usize) -> NewEvent {
    NewEvent::new(
        EventType::parse("custom.n").unwrap(),
        ResourceId::parse(&n.to_string()).unwrap(),
        ResourceType::parse("n").unwrap(),
        org(),
        None,
        &Default::default(),
    )
}

fn request(events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        endpoint: if events.len() == 1 {
            IngestEndpoint::Single
        } else {
            IngestEndpoint::Batch
        },
        events,
        idempotency: None,
    }
}

async fn append(store: &Store, count: usize) -> Vec<Arc<StoredEvent>> {
    store
        .append(request((0..count).map(event).collect()))
        .await
        .unwrap()
        .events
}

async fn all_events(store: &Store) -> Vec<Arc<StoredEvent>> {
    store.events_after(0, 1_000_000).await.unwrap()
}

fn timestamp(event: &StoredEvent) -> String {
    let json: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
    json["timestamp"].as_str().unwrap().to_owned()
}

fn webhook(now_ms: i64) -> WebhookRecord {
    WebhookRecord {
        id: Uuid::now_v7(),
        organization_id: org().as_str().to_owned(),
        url: "http://example.com/hook".into(),
        types: vec!["*".into()],
        resource_type: None,
        description: None,
        enabled: true,
        secret: "whsec_conformance".into(),
        previous_secret: None,
        previous_secret_expires_ms: None,
        created_ms: now_ms,
        last_success_ms: None,
        disabled_reason: None,
        format: Default::default(),
    }
}

fn claim(owner: Uuid, now_ms: i64, lease_ms: i64) -> ClaimRequest {
    ClaimRequest {
        owner,
        now_ms,
        lease_ms,
        limit: 100,
        busy: Vec::new(),
    }
}

fn succeeded(delivery: &webhooks::DueDelivery, now_ms: i64) -> AttemptOutcome {
    AttemptOutcome {
        delivery_id: delivery.id,
        lease_owner: delivery.lease.owner,
        webhook_id: delivery.webhook.id,
        attempt: AttemptRecord {
            attempt: delivery.attempts + 1,
            response_status: Some(200),
            error: None,
            duration_ms: 1,
            attempted_ms: now_ms,
            response_body: None,
        },
        next: NextStep::Succeeded,
        disable: None,
    }
}

async fn positions_follow_commit_order_without_gaps_under_concurrent_appends(open: Opener) {
    let h = open(i64::MAX / 2).await;
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = h.store.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in 0..40 {
                    // Singles and batches, interleaved with the other tasks'.
                    let size = if (task + i) % 3 == 0 { 5 } else { 1 };
                    let events = append(&store, size).await;
                    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
                    assert!(
                        positions.windows(2).all(|w| w[1] == w[0] + 1),
                        "a batch's positions follow on: {positions:?}"
                    );
                    answered.extend(positions);
                }
                answered
            })
        })
        .collect();
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    answered.sort_unstable();
    let stored: Vec<i64> = all_events(&h.store)
        .await
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(stored, answered, "every answered position is stored, once");
    assert_eq!(
        stored,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "positions have no gaps"
    );
    assert_eq!(h.store.last_position().await.unwrap(), stored.len() as i64);
}

async fn an_idempotency_key_raced_by_many_requests_stores_its_events_once(open: Opener) {
    let h = open(i64::MAX / 2).await;
    let claim = IdempotencyClaim {
        scope: org().as_str().to_owned(),
        key: "race-1".into(),
        request_hash: [7; 32],
    };
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (store, claim) = (h.store.clone(), claim.clone());
            tokio::spawn(async move {
                store
                    .append(AppendRequest {
                        endpoint: IngestEndpoint::Batch,
                        events: vec![event(1), event(2)],
                        idempotency: Some(claim),
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for racer in racers {
        outcomes.push(racer.await.unwrap());
    }
    assert_eq!(
        outcomes.iter().filter(|o| !o.replayed).count(),
        1,
        "one request stores, the others replay"
    );
    assert!(outcomes.iter().all(|o| o.body == outcomes[0].body));
    assert_eq!(all_events(&h.store).await.len(), 2);
    // The same key with another request: refused, nothing stored.
    let conflict = h
        .store
        .append(AppendRequest {
            endpoint: IngestEndpoint::Batch,
            events: vec![event(3)],
            idempotency: Some(IdempotencyClaim {
                request_hash: [8; 32],
                ..claim.clone()
            }),
        })
        .await;
    assert!(matches!(conflict, Err(StoreError::IdempotencyConflict)));
    // The same key on the other endpoint is another key.
    let single = h
        .store
        .append(AppendRequest {
            endpoint: IngestEndpoint::Single,
            events: vec![event(4)],
            idempotency: Some(claim),
        })
        .await
        .unwrap();
    assert!(!single.replayed);
    assert_eq!(all_events(&h.store).await.len(), 3);
}

async fn positions_are_never_reused_after_pruning_and_a_restart(open: Opener) {
    let mut h = open(60_000).await;
    let first = append(&h.store, 3).await;
    assert_eq!(first.last().unwrap().position, 3);
    h.set_clock(h.now() + 120_000);
    while h.store.prune(100).await.unwrap().events > 0 {}
    assert_eq!(h.store.last_position().await.unwrap(), 3);
    h.reopen().await;
    assert_eq!(h.store.last_position().await.unwrap(), 3);
    let next = append(&h.store, 1).await;
    assert_eq!(next[0].position, 4, "position 3 is not given again");
}

async fn the_timestamp_after_a_position_is_the_next_events(open: Opener) {
    let h = open(i64::MAX / 2).await;
    assert_eq!(h.store.timestamp_after(0).await.unwrap(), None);
    let first = h.now();
    append(&h.store, 1).await;
    h.set_clock(first + 5_000);
    append(&h.store, 1).await;
    assert_eq!(h.store.timestamp_after(0).await.unwrap(), Some(first));
    assert_eq!(
        h.store.timestamp_after(1).await.unwrap(),
        Some(first + 5_000)
    );
    assert_eq!(h.store.timestamp_after(2).await.unwrap(), None);
}

async fn timestamps_and_ids_never_go_back_when_the_clock_does(open: Opener) {
    let mut h = open(i64::MAX / 2).await;
    let start = h.now();
    let mut events = append(&h.store, 3).await;
    h.set_clock(start - 3_600_000);
    events.extend(append(&h.store, 3).await);
    h.reopen().await;
    h.set_clock(start - 7_200_000);
    events.extend(append(&h.store, 3).await);
    h.set_clock(start + 1);
    events.extend(append(&h.store, 1).await);
    for pair in events.windows(2) {
        assert!(pair[1].position > pair[0].position);
        assert!(
            timestamp(&pair[1]) >= timestamp(&pair[0]),
            "timestamps never go back"
        );
        assert!(pair[1].id > pair[0].id, "ids increase with positions");
        assert_eq!(pair[1].id.get_version_num(), 7);
    }
    assert_eq!(timestamp(&events[8]), timestamp(&events[0]));
    assert!(timestamp(&events[9]) > timestamp(&events[0]));
}

async fn a_delivery_lease_excludes_other_claims_until_it_runs_out_and_is_then_taken_over(
    open: Opener,
) {
    let h = open(i64::MAX / 2).await;
    h.store.create_webhook(webhook(h.now()), 100).await.unwrap();
    append(&h.store, 1).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = h
        .store
        .claim_deliveries(claim(a, h.now(), 30_000))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].lease.owner, a);
    assert!(claimed[0].body.is_some());
    assert!(
        h.store
            .claim_deliveries(claim(b, h.now(), 30_000))
            .await
            .unwrap()
            .is_empty(),
        "a leased delivery is not claimed again"
    );
    assert!(
        h.store
            .claim_deliveries(claim(b, h.now() + 29_999, 30_000))
            .await
            .unwrap()
            .is_empty()
    );
    // A dies: its lease runs out and B takes the delivery over.
    h.set_clock(h.now() + 30_000);
    let taken = h
        .store
        .claim_deliveries(claim(b, h.now(), 30_000))
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, claimed[0].id);
    assert_eq!(taken[0].lease.owner, b);
    // A comes back and records: refused, it no longer holds the lease.
    assert_eq!(
        h.store
            .record_attempts(vec![succeeded(&claimed[0], h.now())])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        h.store
            .record_attempts(vec![succeeded(&taken[0], h.now())])
            .await
            .unwrap(),
        0
    );
    let (log, _) = h
        .store
        .deliveries(taken[0].webhook.id, None, None, 10)
        .await
        .unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].attempts, 1, "one attempt recorded");
    assert_eq!(log[0].status, webhooks::DeliveryStatus::Succeeded);
    assert!(
        h.store
            .claim_deliveries(claim(a, h.now() + 100_000, 30_000))
            .await
            .unwrap()
            .is_empty(),
        "a succeeded delivery is never claimed again"
    );
}

async fn a_released_lease_is_claimable_at_once_and_attempts_are_numbered_without_gaps(
    open: Opener,
) {
    let h = open(i64::MAX / 2).await;
    h.store.create_webhook(webhook(h.now()), 100).await.unwrap();
    append(&h.store, 1).await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = h
        .store
        .claim_deliveries(claim(a, h.now(), 30_000))
        .await
        .unwrap();
    // B cannot give back A's lease.
    h.store
        .release_deliveries(b, vec![claimed[0].id])
        .await
        .unwrap();
    assert!(
        h.store
            .claim_deliveries(claim(b, h.now(), 30_000))
            .await
            .unwrap()
            .is_empty()
    );
    h.store
        .release_deliveries(a, vec![claimed[0].id])
        .await
        .unwrap();
    let again = h
        .store
        .claim_deliveries(claim(b, h.now(), 30_000))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    // A retry scheduled by B's attempt: due later, and then claimable again.
    let mut retry = succeeded(&again[0], h.now());
    retry.next = NextStep::RetryAt(h.now() + 5_000);
    retry.attempt.response_status = Some(500);
    assert_eq!(
        h.store.record_attempts(vec![retry.clone()]).await.unwrap(),
        0
    );
    assert_eq!(
        h.store.record_attempts(vec![retry]).await.unwrap(),
        1,
        "the same attempt is not recorded twice"
    );
    assert!(
        h.store
            .claim_deliveries(claim(a, h.now(), 30_000))
            .await
            .unwrap()
            .is_empty()
    );
    let second = h
        .store
        .claim_deliveries(claim(a, h.now() + 5_000, 30_000))
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempts, 1);
}

async fn retention_hides_expired_events_at_once_and_pruning_removes_them(open: Opener) {
    let h = open(10_000).await;
    let start = h.now();
    let old = append(&h.store, 2).await;
    h.set_clock(start + 5_000);
    let young = append(&h.store, 1).await;
    let history = |store: Store| async move {
        store
            .history(HistoryQuery {
                filter: Filter::for_scope(OrgScope::One(org())),
                since_ms: None,
                until_ms: None,
                after_position: None,
                order: Order::Asc,
                limit: 100,
            })
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>()
    };
    assert_eq!(history(h.store.clone()).await.len(), 3);
    h.set_clock(start + 10_001);
    assert_eq!(
        history(h.store.clone()).await,
        vec![young[0].position],
        "expired events vanish before they are pruned"
    );
    let scope = OrgScope::One(org());
    assert_eq!(
        h.store.event_json(old[0].id, scope.clone()).await.unwrap(),
        None
    );
    assert_eq!(
        h.store.position_of(old[0].id, scope.clone()).await.unwrap(),
        None
    );
    assert!(
        h.store
            .event_json(young[0].id, scope)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(h.store.retention_horizon_ms(), start + 1);
    assert_eq!(h.store.prune(100).await.unwrap().events, 2);
    assert_eq!(all_events(&h.store).await.len(), 1);
    assert_eq!(h.store.prune(100).await.unwrap(), PruneReport::default());
}

async fn the_feed_delivers_every_commit_in_order_from_any_start_with_its_changes(open: Opener) {
    let h = open(i64::MAX / 2).await;
    append(&h.store, 3).await;
    let mut from_start = h.store.feed(0);
    let mut from_two = h.store.feed(2);
    append(&h.store, 2).await;
    let key = NewKey {
        record: KeyRecord {
            id: Uuid::now_v7(),
            organization_id: Some(org()),
            role: Role::App,
            name: "feed".into(),
            created_ms: h.now(),
            revoked_ms: None,
        },
        secret_hash: hash_secret("cpk_feed"),
    };
    let key_id = key.record.id;
    h.store.create_key(key, None).await.unwrap();
    h.store.revoke_key(key_id, Some(event(9))).await.unwrap();
    h.store.create_webhook(webhook(h.now()), 100).await.unwrap();
    for (reader, first) in [(&mut from_start, 1), (&mut from_two, 3)] {
        let mut positions = Vec::new();
        let mut changes = Vec::new();
        while !changes.contains(&Change::WebhooksChanged) {
            let commit = tokio::time::timeout(std::time::Duration::from_secs(10), reader.next())
                .await
                .expect("the feed keeps coming")
                .unwrap();
            positions.extend(commit.events.iter().map(|e| e.position));
            changes.extend(commit.changes.iter().copied());
        }
        assert_eq!(positions, (first..=6).collect::<Vec<_>>());
        assert_eq!(
            changes,
            vec![Change::KeyRevoked(key_id), Change::WebhooksChanged]
        );
        assert_eq!(reader.position(), 6);
    }
}

async fn a_feed_reader_that_falls_behind_catches_up_from_the_store_and_asks_for_a_resync(
    open: Opener,
) {
    let h = open(i64::MAX / 2).await;
    let mut reader = h.store.feed(0);
    // Live first: the reader has read everything there was and waits on the channel.
    append(&h.store, 1).await;
    assert_eq!(reader.next().await.unwrap().events[0].position, 1);
    // Then more commits than the feed retains, none read meanwhile.
    let commits = feed::FEED_CAPACITY + 50;
    for _ in 1..commits {
        append(&h.store, 1).await;
    }
    let mut positions = vec![1];
    let mut resyncs = 0;
    while positions.len() < commits {
        let commit = reader.next().await.unwrap();
        positions.extend(commit.events.iter().map(|e| e.position));
        resyncs += commit
            .changes
            .iter()
            .filter(|c| **c == Change::Resync)
            .count();
    }
    assert_eq!(positions, (1..=commits as i64).collect::<Vec<_>>());
    assert_eq!(resyncs, 1);
    // And live again afterwards.
    append(&h.store, 1).await;
    let commit = reader.next().await.unwrap();
    assert_eq!(commit.events[0].position, commits as i64 + 1);
}

async fn concurrent_webhook_creations_never_pass_the_organization_limit(open: Opener) {
    let h = open(60_000).await;
    let attempts = (0..30).map(|_| h.store.create_webhook(webhook(h.now()), 7));
    let results = futures_util::future::join_all(attempts).await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 7);
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(StoreError::LimitReached(7))))
    );
    assert_eq!(h.store.webhooks(Some(org())).await.unwrap().len(), 7);
    // Another organization is counted apart.
    let mut elsewhere = webhook(h.now());
    elsewhere.organization_id = "org-other".into();
    h.store.create_webhook(elsewhere, 7).await.unwrap();
}

/// The domain bounds a filter to [`crate::filter::MAX_TYPE_PATTERNS`]; a backend's query must
/// not have a limit of its own anywhere near it (SQLite's expression depth once made 999
/// patterns an error).
async fn history_answers_filters_with_far_more_type_patterns_than_the_domain_allows(open: Opener) {
    let h = open(60_000).await;
    let stored = append(&h.store, 3).await;
    let count = 20 * crate::filter::MAX_TYPE_PATTERNS;
    let mut filter = Filter::for_scope(OrgScope::One(org()));
    filter.types = (0..count)
        .map(|i| {
            let raw = match i % 3 {
                0 => format!("custom.x{i}.*"),
                1 => format!("custom.y{i}"),
                _ => format!("*.z{i}"),
            };
            crate::filter::TypePattern::parse(&raw).unwrap()
        })
        .collect();
    filter
        .types
        .push(crate::filter::TypePattern::parse("custom.n").unwrap());
    filter
        .types
        .push(crate::filter::TypePattern::parse("custom.*n").unwrap());
    let page = h
        .store
        .history(HistoryQuery {
            filter,
            since_ms: None,
            until_ms: None,
            after_position: None,
            order: Order::Asc,
            limit: 100,
        })
        .await
        .expect("a long filter is answered");
    let positions: Vec<i64> = page.events.iter().map(|e| e.position).collect();
    let expected: Vec<i64> = stored.iter().map(|e| e.position).collect();
    assert_eq!(positions, expected);
}

async fn an_events_trace_context_is_stored_and_read_back_by_every_read(open: Opener) {
    let mut h = open(i64::MAX / 2).await;
    h.store.create_webhook(webhook(h.now()), 100).await.unwrap();
    let (trace, _) = crate::trace_context::TraceContext::from_headers(
        &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
        &["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"],
    );
    let trace = trace.unwrap();
    let traced = event(1).with_trace(trace.clone());
    let untraced = event(2);
    let stored = h
        .store
        .append(request(vec![traced, untraced]))
        .await
        .unwrap()
        .events;
    assert_eq!(stored[0].trace.as_ref(), Some(&trace));
    assert_eq!(stored[1].trace, None);
    // Closed and opened again: everything below is read from the database.
    h.reopen().await;
    let read = all_events(&h.store).await;
    assert_eq!(read[0].trace.as_ref(), Some(&trace));
    assert_eq!(read[1].trace, None);
    let json: serde_json::Value = serde_json::from_slice(&read[0].json).unwrap();
    assert_eq!(json["traceparent"], trace.parent.to_string());
    assert_eq!(
        json["tracestate"],
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    let untraced_json: serde_json::Value = serde_json::from_slice(&read[1].json).unwrap();
    assert!(untraced_json.get("traceparent").is_none());
    let page = h
        .store
        .history(HistoryQuery {
            filter: Filter::for_scope(OrgScope::One(org())),
            since_ms: None,
            until_ms: None,
            after_position: None,
            order: Order::Asc,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.events[0].trace.as_ref(), Some(&trace));
    let mut due = h
        .store
        .claim_deliveries(claim(Uuid::now_v7(), h.now(), 30_000))
        .await
        .unwrap();
    due.sort_by_key(|d| d.event_id);
    assert_eq!(due.len(), 2);
    assert_eq!(
        due[0].trace.as_ref(),
        Some(&trace),
        "a delivery carries its event's trace"
    );
    assert_eq!(due[1].trace, None);
}
