//! What only several nodes on one PostgreSQL database can show: the cluster-wide order (and the
//! hazard it avoids), migrations and settings shared by concurrent starters, changes reaching
//! every node's feed, and recovery from lost connections.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::testing::TestDatabase;
use crate::event::{EventType, OrganizationId, ResourceId, ResourceType};
use crate::keys::{KeyRecord, NewKey, Role, hash_secret};
use crate::store::webhooks::WebhookRecord;
use crate::store::{
    AppendRequest, Backend, Change, Clock, FeedReader, IdempotencyClaim, IngestEndpoint, NewEvent,
    Store, StoreConfig, StoreError,
};

fn config(database: &TestDatabase) -> StoreConfig {
    StoreConfig {
        backend: Backend::Postgres {
            url: database.url(),
            pool_size: 4,
        },
        retention_ms: i64::MAX / 2,
        clock: Clock::system(),
    }
}

fn event(n: usize) -> NewEvent {
    NewEvent::new(
        EventType::parse("custom.n").unwrap(),
        ResourceId::parse(&n.to_string()).unwrap(),
        ResourceType::parse("n").unwrap(),
        OrganizationId::parse("org-p").unwrap(),
        None,
        &Default::default(),
    )
}

fn single(n: usize) -> AppendRequest {
    AppendRequest {
        endpoint: IngestEndpoint::Single,
        events: vec![event(n)],
        idempotency: None,
    }
}

fn admin_key(secret: &str) -> NewKey {
    NewKey {
        record: KeyRecord {
            id: Uuid::now_v7(),
            organization_id: None,
            role: Role::Admin,
            name: "admin".into(),
            created_ms: 0,
            revoked_ms: None,
        },
        secret_hash: hash_secret(secret),
    }
}

/// The next commit of a feed, or a failure after 10 s.
async fn next(feed: &mut FeedReader) -> Arc<crate::store::Commit> {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("the feed delivers within 10 s")
        .unwrap()
}

/// Positions from a feed until `until` is reached, with every change seen on the way.
async fn positions_until(feed: &mut FeedReader, until: i64) -> (Vec<i64>, Vec<Change>) {
    let (mut positions, mut changes) = (Vec::new(), Vec::new());
    while feed.position() < until {
        let commit = next(feed).await;
        positions.extend(commit.events.iter().map(|e| e.position));
        changes.extend(commit.changes.iter().copied());
    }
    (positions, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_lets_a_tail_reader_skip_an_event_and_the_append_lock_does_not() {
    let database = TestDatabase::create().await;
    let (a, b, reader) = (
        database.connect().await,
        database.connect().await,
        database.connect().await,
    );
    let tail = async |after: i64, table: &str| -> Vec<i64> {
        reader
            .query(
                &format!("SELECT position FROM {table} WHERE position > $1 ORDER BY position"),
                &[&after],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };

    // The hazard: positions from a sequence, committed out of order.
    reader
        .batch_execute("CREATE TABLE by_sequence (position bigserial PRIMARY KEY)")
        .await
        .unwrap();
    a.batch_execute("BEGIN; INSERT INTO by_sequence DEFAULT VALUES")
        .await
        .unwrap();
    b.batch_execute("BEGIN; INSERT INTO by_sequence DEFAULT VALUES; COMMIT")
        .await
        .unwrap();
    let seen = tail(0, "by_sequence").await;
    assert_eq!(seen, vec![2], "position 2 is visible while 1 is not");
    let last = *seen.last().unwrap();
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        tail(last, "by_sequence").await,
        Vec::<i64>::new(),
        "the reader, past 2, never sees 1"
    );
    assert_eq!(tail(0, "by_sequence").await, vec![1, 2], "yet 1 was stored");

    // The design: the append lock held from reading the last position to the commit.
    reader
        .batch_execute("CREATE TABLE by_lock (position bigint PRIMARY KEY)")
        .await
        .unwrap();
    let append_sql = format!(
        "SELECT pg_advisory_xact_lock({}); \
         INSERT INTO by_lock SELECT coalesce(max(position), 0) + 1 FROM by_lock",
        super::locks::APPEND
    );
    a.batch_execute(&format!("BEGIN; {append_sql}"))
        .await
        .unwrap();
    let b_appends = tokio::spawn({
        let sql = format!("BEGIN; {append_sql}; COMMIT");
        async move { b.batch_execute(&sql).await.unwrap() }
    });
    // B waits for the lock (seen in pg_locks, not guessed from time).
    let mut waiting = false;
    for _ in 0..200 {
        let row = reader
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 1 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(waiting, "the second appender waits for the lock");
    assert_eq!(tail(0, "by_lock").await, Vec::<i64>::new());
    a.batch_execute("COMMIT").await.unwrap();
    b_appends.await.unwrap();
    assert_eq!(
        tail(0, "by_lock").await,
        vec![1, 2],
        "a reader sees positions in commit order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_reader_never_skips_while_two_nodes_append_at_once_and_every_feed_agrees() {
    let database = TestDatabase::create().await;
    let nodes = [
        Store::open(&config(&database)).await.unwrap(),
        Store::open(&config(&database)).await.unwrap(),
    ];
    let mut feeds = [nodes[0].feed(0), nodes[1].feed(0)];
    const PER_TASK: usize = 60;
    let writers: Vec<_> = (0..6)
        .map(|task| {
            let store = nodes[task % 2].clone();
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let mut request = single(i);
                    if i % 4 == 0 {
                        request.endpoint = IngestEndpoint::Batch;
                        request.events.push(event(i + 1000));
                    }
                    store.append(request).await.unwrap();
                }
            })
        })
        .collect();
    let total = (6 * (PER_TASK + PER_TASK / 4)) as i64;
    // A tail reader as the hazard test's: it must see every position, each once, in order.
    let reader = {
        let store = nodes[0].clone();
        tokio::spawn(async move {
            let mut last = 0;
            while last < total {
                for event in store.events_after(last, 50).await.unwrap() {
                    assert_eq!(event.position, last + 1, "the tail reader skipped");
                    last = event.position;
                }
            }
        })
    };
    for writer in writers {
        writer.await.unwrap();
    }
    reader.await.unwrap();
    for feed in &mut feeds {
        let (positions, _) = positions_until(feed, total).await;
        assert_eq!(positions, (1..=total).collect::<Vec<_>>());
    }
    let events = nodes[1].events_after(0, 10_000).await.unwrap();
    assert!(
        events.windows(2).all(|w| w[0].id < w[1].id),
        "ids increase with positions across nodes"
    );
    for node in &nodes {
        node.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once_and_share_one_secret_and_one_admin_key() {
    let database = TestDatabase::create().await;
    let config = config(&database);
    let (a, b, c) = tokio::join!(
        Store::open(&config),
        Store::open(&config),
        Store::open(&config)
    );
    let nodes = [a.unwrap(), b.unwrap(), c.unwrap()];
    let version: i32 = database
        .connect()
        .await
        .query_one("SELECT version FROM cpod_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version as usize, super::schema::latest());
    assert!(
        nodes
            .iter()
            .all(|n| n.ticket_secret() == nodes[0].ticket_secret())
    );

    let secret = "cpk_cluster_admin_0123456789abcdefghijklmn";
    let (a, b, c) = tokio::join!(
        nodes[0].bootstrap_admin(admin_key(secret), true),
        nodes[1].bootstrap_admin(admin_key(secret), true),
        nodes[2].bootstrap_admin(admin_key(secret), true),
    );
    let inserted = [a.unwrap(), b.unwrap(), c.unwrap()];
    assert_eq!(inserted.iter().filter(|i| **i).count(), 1);
    assert_eq!(nodes[2].active_keys(None).await.unwrap().len(), 1);
    // Without CPOD_ADMIN_KEY, nodes starting together generate nothing more.
    let (a, b) = tokio::join!(
        nodes[0].bootstrap_admin(admin_key("cpk_generated_a_0123456789abcdefghijk"), false),
        nodes[1].bootstrap_admin(admin_key("cpk_generated_b_0123456789abcdefghijk"), false),
    );
    assert!(!a.unwrap() && !b.unwrap());
    assert_eq!(nodes[0].active_keys(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_idempotency_key_sent_to_two_nodes_at_once_stores_once() {
    let database = TestDatabase::create().await;
    let nodes = [
        Store::open(&config(&database)).await.unwrap(),
        Store::open(&config(&database)).await.unwrap(),
    ];
    let claim = IdempotencyClaim {
        scope: "org-p".into(),
        key: "across-nodes".into(),
        request_hash: [3; 32],
    };
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let store = nodes[i % 2].clone();
            let claim = claim.clone();
            tokio::spawn(async move {
                store
                    .append(AppendRequest {
                        idempotency: Some(claim),
                        ..single(1)
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
    assert_eq!(outcomes.iter().filter(|o| !o.replayed).count(), 1);
    assert!(outcomes.iter().all(|o| o.body == outcomes[0].body));
    assert_eq!(nodes[0].events_after(0, 100).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_and_endpoint_changes_on_one_node_reach_every_nodes_feed() {
    let database = TestDatabase::create().await;
    let (a, b) = (
        Store::open(&config(&database)).await.unwrap(),
        Store::open(&config(&database)).await.unwrap(),
    );
    let mut b_feed = b.feed(0);
    let key = admin_key("cpk_revoked_on_a_0123456789abcdefghijk");
    let key_id = key.record.id;
    a.create_key(key, None).await.unwrap();
    assert!(b.active_key(key_id).await.unwrap().is_some(), "at once");
    a.revoke_key(key_id, Some(event(1))).await.unwrap();
    let (positions, changes) = positions_until(&mut b_feed, 1).await;
    assert_eq!(positions, vec![1]);
    let mut changes = changes;
    while !changes.contains(&Change::KeyRevoked(key_id)) {
        changes.extend(next(&mut b_feed).await.changes.iter().copied());
    }
    // An endpoint created on A queues deliveries for events appended on B at once.
    let now = b.clock().now_ms();
    a.create_webhook(
        WebhookRecord {
            id: Uuid::now_v7(),
            organization_id: "org-p".into(),
            url: "http://example.com/hook".into(),
            types: vec!["custom.*".into()],
            resource_type: None,
            description: None,
            enabled: true,
            secret: "whsec_x".into(),
            previous_secret: None,
            previous_secret_expires_ms: None,
            created_ms: now,
            last_success_ms: None,
            disabled_reason: None,
            format: Default::default(),
        },
        100,
    )
    .await
    .unwrap();
    let mut seen = BTreeSet::new();
    while !seen.contains(&format!("{:?}", Change::WebhooksChanged)) {
        seen.extend(
            next(&mut b_feed)
                .await
                .changes
                .iter()
                .map(|c| format!("{c:?}")),
        );
    }
    let mut a_feed = a.feed(b.last_position().await.unwrap());
    b.append(single(2)).await.unwrap();
    let mut queued = false;
    while !queued {
        queued = next(&mut a_feed)
            .await
            .changes
            .contains(&Change::DeliveriesQueued);
    }
    let claimed = a
        .claim_deliveries(crate::store::webhooks::ClaimRequest {
            owner: Uuid::now_v7(),
            now_ms: now + 60_000,
            lease_ms: 30_000,
            limit: 10,
            busy: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_connections_are_cut_reconnects_and_its_feed_catches_up_without_a_gap() {
    let database = TestDatabase::create().await;
    let (a, b) = (
        Store::open(&config(&database)).await.unwrap(),
        Store::open(&config(&database)).await.unwrap(),
    );
    let mut a_feed = a.feed(0);
    a.append(single(1)).await.unwrap();
    assert_eq!(positions_until(&mut a_feed, 1).await.0, vec![1]);
    database.terminate_sessions().await;
    // Appends on both nodes recover by themselves (a group in flight may fail: retried).
    for n in 0..6 {
        let node = if n % 2 == 0 { &a } else { &b };
        let mut tries = 0;
        loop {
            match node.append(single(n)).await {
                Ok(_) => break,
                Err(StoreError::Unavailable | StoreError::Internal(_)) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the append does not recover: {e}"),
            }
        }
    }
    let (positions, changes) = positions_until(&mut a_feed, 7).await;
    assert_eq!(positions, (2..=7).collect::<Vec<_>>());
    let mut changes = changes;
    while !changes.contains(&Change::Resync) {
        changes.extend(next(&mut a_feed).await.changes.iter().copied());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answers_unavailable_while_the_database_refuses_it_and_recovers_after() {
    let database = TestDatabase::create().await;
    let node = Store::open(&config(&database)).await.unwrap();
    node.append(single(1)).await.unwrap();
    database.allow_connections(false).await;
    database.terminate_sessions().await;
    let mut refused = false;
    for _ in 0..20 {
        if matches!(node.append(single(2)).await, Err(StoreError::Unavailable))
            && matches!(node.ping().await, Err(StoreError::Unavailable))
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "writes and readiness answer Unavailable");
    database.allow_connections(true).await;
    let mut recovered = false;
    for _ in 0..100 {
        if node.append(single(3)).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "appends work again once the database is back");
    // Reads connect again at the end of their backoff (2 s at most).
    let back = std::time::Instant::now();
    while node.ping().await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(3), "not ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_prunes_at_a_time_and_every_node_hides_expired_events_at_once() {
    let database = TestDatabase::create().await;
    let now = Arc::new(std::sync::atomic::AtomicI64::new(1_000_000_000_000));
    let config = StoreConfig {
        retention_ms: 60_000,
        clock: Clock::manual(now.clone()),
        ..config(&database)
    };
    let (a, b) = (
        Store::open(&config).await.unwrap(),
        Store::open(&config).await.unwrap(),
    );
    for n in 0..3 {
        a.append(single(n)).await.unwrap();
    }
    now.fetch_add(120_000, std::sync::atomic::Ordering::AcqRel);
    b.append(single(3)).await.unwrap();
    // Expired on every node at once, before any pruning.
    for node in [&a, &b] {
        let page = node
            .history(crate::store::HistoryQuery {
                filter: crate::filter::Filter::for_scope(crate::filter::OrgScope::All),
                since_ms: None,
                until_ms: None,
                after_position: None,
                order: crate::store::Order::Asc,
                limit: 10,
            })
            .await
            .unwrap();
        let positions: Vec<i64> = page.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![4]);
    }
    // While another node's pass holds the prune lock, a pass removes nothing…
    let mut other = database.connect().await;
    let held = other.transaction().await.unwrap();
    held.execute("SELECT pg_advisory_xact_lock($1)", &[&super::locks::PRUNE])
        .await
        .unwrap();
    assert_eq!(b.prune(100).await.unwrap().events, 0);
    held.rollback().await.unwrap();
    // …and once it is released, one pass removes the expired events, the next finds none.
    let (first, second) = tokio::join!(a.prune(100), b.prune(100));
    let removed = first.unwrap().events + second.unwrap().events;
    assert_eq!(removed, 3);
    assert_eq!(a.prune(100).await.unwrap().events, 0);
    assert_eq!(a.events_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_bounds_statements_locks_and_idle_transactions() {
    let database = TestDatabase::create().await;
    let node = Store::open(&config(&database)).await.unwrap();
    node.append(single(1)).await.unwrap();
    node.ping().await.unwrap();
    // Every session is made by the same connector; a pooled one shows what they all get.
    assert_eq!(
        node_session_settings(&node).await,
        vec![
            (
                "idle_in_transaction_session_timeout".to_owned(),
                "5s".to_owned()
            ),
            ("lock_timeout".to_owned(), "10s".to_owned()),
            ("statement_timeout".to_owned(), "30s".to_owned()),
        ]
    );
}

/// The timeouts in force on one of the store's pooled sessions.
async fn node_session_settings(node: &Store) -> Vec<(String, String)> {
    let super::super::Open::Postgres(store) = &*node.backend else {
        unreachable!("a PostgreSQL store")
    };
    let client = store.client().await.unwrap();
    let mut settings = Vec::new();
    for name in [
        "idle_in_transaction_session_timeout",
        "lock_timeout",
        "statement_timeout",
    ] {
        let value: String = client
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap()
            .get(0);
        settings.push((name.to_owned(), value));
    }
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_database_goes_silent_answers_unavailable_in_bounded_time_and_recovers() {
    let database = TestDatabase::create().await;
    let proxy = super::testing::Proxy::start().await;
    let config = StoreConfig {
        backend: Backend::Postgres {
            url: database.url_via(&proxy),
            pool_size: 4,
        },
        ..config(&database)
    };
    let node = Store::open(&config).await.unwrap();
    let mut feed = node.feed(0);
    node.append(single(1)).await.unwrap();
    assert_eq!(positions_until(&mut feed, 1).await.0, vec![1]);
    proxy.silence(true);
    let silenced = std::time::Instant::now();
    let (ready, appended) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(node.ping(), node.append(single(2)))
    })
    .await
    .expect("the node answers while its database is silent");
    assert!(matches!(ready, Err(StoreError::Unavailable)), "{ready:?}");
    assert!(
        matches!(appended, Err(StoreError::Unavailable)),
        "{appended:?}"
    );
    assert!(
        silenced.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        silenced.elapsed()
    );
    // The network comes back (the silent connections are gone with it).
    proxy.cut();
    proxy.silence(false);
    let mut last = 0;
    for _ in 0..100 {
        if let Ok(outcome) = node.append(single(3)).await {
            last = outcome.events[0].position;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last > 1, "appends do not recover");
    node.ping().await.unwrap();
    // Nothing committed is skipped by the feed, whatever became of the append cut short.
    let (positions, _) = positions_until(&mut feed, last).await;
    assert_eq!(positions, (2..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_inside_an_append_holds_up_the_others_for_5_s_at_most() {
    let database = TestDatabase::create().await;
    let node = Store::open(&config(&database)).await.unwrap();
    node.append(single(1)).await.unwrap();
    // A session as every node makes them, frozen after taking the append lock (a stopped
    // process, a paused VM).
    let frozen = super::Connector::new(&database.url())
        .unwrap()
        .spawn()
        .await
        .unwrap();
    frozen.batch_execute("BEGIN").await.unwrap();
    frozen
        .execute("SELECT pg_advisory_xact_lock($1)", &[&super::locks::APPEND])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let appended = node.append(single(2)).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(appended.events[0].position, 2);
    assert!(
        waited > Duration::from_secs(3) && waited < Duration::from_secs(8),
        "the append waited {waited:?}"
    );
    // The server ended the frozen session: its transaction (and lock) are gone.
    assert!(frozen.execute("SELECT 1", &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starting_during_a_long_migration_waits_for_it_past_the_lock_timeout() {
    let database = TestDatabase::create().await;
    // Another starter holding the migration lock longer than the 10 s lock_timeout.
    let migrating = database.connect().await;
    migrating
        .execute("SELECT pg_advisory_lock($1)", &[&super::locks::MIGRATE])
        .await
        .unwrap();
    let config = config(&database);
    let opening = tokio::spawn(async move { Store::open(&config).await });
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        !opening.is_finished(),
        "the node did not wait for the migration"
    );
    migrating
        .execute("SELECT pg_advisory_unlock($1)", &[&super::locks::MIGRATE])
        .await
        .unwrap();
    let node = tokio::time::timeout(Duration::from_secs(10), opening)
        .await
        .expect("the node starts once the migration is done")
        .unwrap()
        .expect("the node opens the store");
    node.append(single(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refused_by_its_database_backs_off_instead_of_connecting_for_every_request() {
    let database = TestDatabase::create().await;
    let proxy = super::testing::Proxy::start().await;
    let config = StoreConfig {
        backend: Backend::Postgres {
            url: database.url_via(&proxy),
            pool_size: 4,
        },
        ..config(&database)
    };
    let node = Store::open(&config).await.unwrap();
    node.append(single(1)).await.unwrap();
    database.allow_connections(false).await;
    database.terminate_sessions().await;
    let before = proxy.accepted();
    let started = std::time::Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(matches!(node.ping().await, Err(StoreError::Unavailable)));
        requests += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The pool tries after 100, 200, 400, 800 ms, the feed's listener on its own backoff: a
    // dozen attempts at most, not one per request.
    let attempts = proxy.accepted() - before;
    assert!(
        attempts <= 12 && requests > 100,
        "{attempts} connection attempts for {requests} requests"
    );
    database.allow_connections(true).await;
    let back = std::time::Instant::now();
    while node.ping().await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(5), "not ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.append(single(2)).await.unwrap();
}
