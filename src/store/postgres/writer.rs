//! The append path: one task per node with group commit, and one cluster-wide gapless order.
//!
//! The hazard this avoids: with a sequence (or `bigserial`), transactions take their positions
//! when they insert but commit in any order, so a reader tailing `position > last` can see
//! position 8 committed before position 7, move its mark to 8, and never see 7 (the test
//! `a_sequence_lets_a_tail_reader_skip_an_event_and_the_append_lock_does_not` shows it).
//!
//! Here each group of commands is one READ COMMITTED transaction that
//! 1. takes the append lock (`pg_advisory_xact_lock`), and then, in statements that start
//!    after the lock is held (so their snapshots see every commit made under it before), reads
//!    the newest event's position, timestamp and id, the idempotency records the group names
//!    and the enabled endpoints of the group's organizations;
//! 2. gives its events `last+1 … last+n`, timestamps clamped to never decrease and ids greater
//!    than the last, decides idempotency (the primary key is a backstop), and matches events
//!    to endpoints;
//! 3. inserts events, idempotency records and deliveries (one statement each, pipelined),
//!    `NOTIFY`s the other nodes, commits.
//!
//! A commit is visible before the lock is released, so once position `p` is visible every
//! position below it is committed. Under REPEATABLE READ the snapshot would predate the lock;
//! READ COMMITTED takes one per statement.
//!
//! The connection is the writer's own; when it is lost, the group in flight is answered
//! `Unavailable` (its outcome may be unknown: a client retrying with its Idempotency-Key gets
//! the first answer if it did commit) and the next group reconnects, with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::feed::Doorbell;
use super::{CHANNEL, Connector, locks};
use crate::event::NewEvent;
use crate::filter::TypePattern;
use crate::store::append::{batch_body, next_event_id};
use crate::store::{
    AppendOutcome, AppendRequest, Change, Clock, Commit, IDEMPOTENCY_WINDOW_MS, IngestEndpoint,
    NewKey, StoreError, StoredEvent,
};

/// The most commands one transaction takes.
const MAX_GROUP: usize = 512;
/// Capacity of the writer's queue; callers wait (back-pressure) when it is full.
pub(super) const QUEUE_CAPACITY: usize = 8192;
/// The longest a group's transaction may take before its connection is given up: more than
/// the `lock_timeout` a group may spend waiting for the append lock.
const GROUP_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum Command {
    Append(AppendRequest, Reply<AppendOutcome>),
    CreateKey(NewKey, Option<NewEvent>, Reply<Option<Arc<StoredEvent>>>),
    RevokeKey(Uuid, Option<NewEvent>, Reply<Option<Arc<StoredEvent>>>),
    Shutdown,
}

/// A command's result, held until its transaction commits.
enum Finished {
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StoreError>),
    Key(
        Reply<Option<Arc<StoredEvent>>>,
        Result<Option<Arc<StoredEvent>>, StoreError>,
    ),
}

impl Finished {
    fn answer(self, failure: Option<&StoreError>) {
        fn send<T>(reply: Reply<T>, result: Result<T, StoreError>, failure: Option<&StoreError>) {
            let result = match failure {
                Some(StoreError::Unavailable) => Err(StoreError::Unavailable),
                Some(_) => Err(StoreError::Internal(anyhow::anyhow!("the commit failed"))),
                None => result,
            };
            // The caller may have gone (client disconnected): its work is committed anyway.
            let _ = reply.send(result);
        }
        match self {
            Finished::Append(r, v) => send(r, v, failure),
            Finished::Key(r, v) => send(r, v, failure),
        }
    }

    fn stored_events(&self) -> &[Arc<StoredEvent>] {
        match self {
            Finished::Append(_, Ok(outcome)) => &outcome.events,
            Finished::Key(_, Ok(Some(event))) => std::slice::from_ref(event),
            _ => &[],
        }
    }
}

/// The writer's connection with its statements prepared.
struct Session {
    client: Client,
    lock: Statement,
    last: Statement,
    idempotency: Statement,
    endpoints: Statement,
    insert_events: Statement,
    forget_idempotency: Statement,
    insert_idempotency: Statement,
    insert_deliveries: Statement,
    notify: Statement,
}

impl Session {
    async fn open(connector: &Connector) -> Result<Self, StoreError> {
        let client = connector.spawn().await?;
        let prepare = |sql: &'static str| client.prepare(sql);
        Ok(Self {
            lock: prepare("SELECT pg_advisory_xact_lock($1)").await?,
            last: prepare("SELECT position, ts_ms, id FROM events ORDER BY position DESC LIMIT 1")
                .await?,
            idempotency: prepare(
                "SELECT i.scope, i.endpoint, i.key, i.request_hash, i.response, i.created_ms \
                 FROM idempotency i JOIN unnest($1::text[], $2::text[], $3::text[]) AS c(scope, endpoint, key) \
                 ON i.scope = c.scope AND i.endpoint = c.endpoint AND i.key = c.key",
            )
            .await?,
            endpoints: prepare(
                "SELECT id, organization_id, types, resource_type FROM webhooks \
                 WHERE enabled AND organization_id = ANY($1)",
            )
            .await?,
            insert_events: prepare(
                "INSERT INTO events (position, id, organization_id, type, resource_type, \
                 resource_id, workspace_id, ts_ms, json, traceparent, tracestate) \
                 SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], \
                 $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[], \
                 $11::text[])",
            )
            .await?,
            forget_idempotency: prepare(
                "DELETE FROM idempotency i USING unnest($1::text[], $2::text[], $3::text[]) \
                 AS c(scope, endpoint, key) \
                 WHERE i.scope = c.scope AND i.endpoint = c.endpoint AND i.key = c.key",
            )
            .await?,
            insert_idempotency: prepare(
                "INSERT INTO idempotency (scope, endpoint, key, request_hash, response, created_ms) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], \
                 $5::bytea[], $6::bigint[])",
            )
            .await?,
            insert_deliveries: prepare(
                "INSERT INTO deliveries (id, webhook_id, event_position, event_id, event_type, \
                 status, attempts, next_attempt_ms, created_ms) \
                 SELECT d.id, d.webhook_id, d.position, d.event_id, d.event_type, 'pending', 0, \
                 d.due, d.due FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::uuid[], \
                 $5::text[], $6::bigint[]) AS d(id, webhook_id, position, event_id, event_type, due)",
            )
            .await?,
            notify: prepare("SELECT pg_notify($1, $2)").await?,
            client,
        })
    }
}

/// One enabled endpoint's filter.
struct Endpoint {
    id: Uuid,
    types: Vec<TypePattern>,
    resource_type: Option<String>,
}

/// An idempotency key: (scope, endpoint, key).
type ClaimKey = (String, String, String);

/// An idempotency record: the request's hash, the response, when it was made.
struct Record {
    hash: Vec<u8>,
    response: Vec<u8>,
    created_ms: i64,
}

/// What a group builds up in memory before it writes.
#[derive(Default)]
struct Group {
    last_position: i64,
    last_timestamp_ms: i64,
    last_id: Uuid,
    /// Idempotency records that exist (or this group made).
    records: HashMap<ClaimKey, Record>,
    /// Enabled endpoints by organization.
    endpoints: HashMap<String, Vec<Endpoint>>,
    events: Vec<Arc<StoredEvent>>,
    timestamps: Vec<i64>,
    /// Expired records to replace, and new ones.
    forget: Vec<ClaimKey>,
    remember: Vec<(ClaimKey, Record)>,
    deliveries: Vec<(Uuid, Uuid, i64, Uuid, String, i64)>,
    changes: Vec<Change>,
}

pub(super) struct Writer {
    connector: Connector,
    session: Option<Session>,
    node: Uuid,
    clock: Clock,
    own: mpsc::UnboundedSender<Arc<Commit>>,
    /// Failed connection attempts in a row (for the backoff).
    failures: u32,
    next_attempt: Instant,
    ingested: HashMap<String, metrics::Counter>,
}

impl Writer {
    pub(super) fn new(
        connector: Connector,
        node: Uuid,
        clock: Clock,
        own: mpsc::UnboundedSender<Arc<Commit>>,
    ) -> Self {
        Self {
            connector,
            session: None,
            node,
            clock,
            own,
            failures: 0,
            next_attempt: Instant::now(),
            ingested: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Command>) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut shutting_down = false;
        while !shutting_down {
            let Some(first) = queue.recv().await else {
                break;
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match queue.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            if let Some(at) = group.iter().position(|c| matches!(c, Command::Shutdown)) {
                // Everything queued before the shutdown is written; anything after it is
                // refused when the queue is dropped.
                group.truncate(at);
                shutting_down = true;
            }
            if !group.is_empty() {
                self.commit_group(&mut group).await;
            }
        }
        queue.close();
        tracing::debug!("store writer stopped");
    }

    /// The session, connecting (with backoff) when there is none.
    async fn session(&mut self) -> Result<&Session, StoreError> {
        if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
            self.session = None;
        }
        if self.session.is_none() {
            if Instant::now() < self.next_attempt {
                return Err(StoreError::Unavailable);
            }
            match Session::open(&self.connector).await {
                Ok(session) => {
                    if self.failures > 0 {
                        tracing::info!("the store writer reconnected to the database");
                    }
                    self.failures = 0;
                    self.session = Some(session);
                }
                Err(e) => {
                    self.failures += 1;
                    let backoff = (Duration::from_millis(100) * 2u32.pow(self.failures.min(6)))
                        .min(MAX_BACKOFF);
                    self.next_attempt = Instant::now() + backoff;
                    tracing::warn!(error = %e, ?backoff, "the store writer cannot connect");
                    return Err(StoreError::Unavailable);
                }
            }
        }
        Ok(self.session.as_ref().expect("connected above"))
    }

    async fn commit_group(&mut self, group: &mut Vec<Command>) {
        let started = Instant::now();
        let mut finished = Vec::with_capacity(group.len());
        let now_ms = self.clock.now_ms();
        let node = self.node;
        let result = match self.session().await {
            Ok(session) => tokio::time::timeout(
                GROUP_TIMEOUT,
                apply_group(session, node, now_ms, group, &mut finished),
            )
            .await
            .unwrap_or_else(|_| {
                // The database went silent (a frozen network, a stopped server): this
                // connection is given up, and the group answered Unavailable. Whether it
                // committed is unknown, as with a lost connection; if it did, the feed finds
                // its events in the table.
                tracing::warn!(timeout = ?GROUP_TIMEOUT, "the database did not answer a commit");
                self.session = None;
                Err(StoreError::Unavailable)
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(changes) => {
                let committed: Vec<Arc<StoredEvent>> = finished
                    .iter()
                    .flat_map(|f| f.stored_events().iter().cloned())
                    .collect();
                metrics::histogram!("cpod_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("cpod_store_commit_group_events")
                    .record(committed.len() as f64);
                for event in &committed {
                    self.ingested_counter(&event.event_type).increment(1);
                }
                for done in finished {
                    done.answer(None);
                }
                if !committed.is_empty() || !changes.is_empty() {
                    let _ = self.own.send(Arc::new(Commit {
                        events: committed,
                        changes,
                    }));
                }
            }
            Err(e) => {
                if !matches!(e, StoreError::Unavailable) {
                    tracing::error!(error = %e, "store commit failed; the group is rolled back");
                }
                if self.session.as_ref().is_some_and(|s| s.client.is_closed()) {
                    self.session = None;
                } else if let Some(session) = &self.session {
                    // A failed statement leaves the transaction open: end it.
                    if session.client.batch_execute("ROLLBACK").await.is_err() {
                        self.session = None;
                    }
                }
                for done in finished {
                    done.answer(Some(&e));
                }
                // Commands not reached are answered alike.
                for command in group.drain(..) {
                    let error = || match e {
                        StoreError::Unavailable => StoreError::Unavailable,
                        _ => StoreError::Internal(anyhow::anyhow!("the commit failed")),
                    };
                    match command {
                        Command::Append(_, reply) => {
                            let _ = reply.send(Err(error()));
                        }
                        Command::CreateKey(_, _, reply) | Command::RevokeKey(_, _, reply) => {
                            let _ = reply.send(Err(error()));
                        }
                        Command::Shutdown => {}
                    }
                }
            }
        }
        group.clear();
    }

    /// `cpod_events_ingested_total{type}`, looked up once per type.
    fn ingested_counter(&mut self, event_type: &str) -> &metrics::Counter {
        if !self.ingested.contains_key(event_type) {
            let counter =
                metrics::counter!("cpod_events_ingested_total", "type" => event_type.to_owned());
            self.ingested.insert(event_type.to_owned(), counter);
        }
        &self.ingested[event_type]
    }
}

/// Applies a group in one transaction; answers the changes it made for the feed. Commands are
/// drained from `group` into `finished` as they are applied.
async fn apply_group(
    session: &Session,
    node: Uuid,
    now_ms: i64,
    group: &mut Vec<Command>,
    finished: &mut Vec<Finished>,
) -> Result<Vec<Change>, StoreError> {
    let client = &session.client;

    // Under the lock: the high-water marks, the idempotency records and endpoints in question.
    let claims: Vec<ClaimKey> = group
        .iter()
        .filter_map(|c| match c {
            Command::Append(request, _) => request.idempotency.as_ref().map(|claim| {
                (
                    claim.scope.clone(),
                    request.endpoint.as_str().to_owned(),
                    claim.key.clone(),
                )
            }),
            _ => None,
        })
        .collect();
    let mut organizations: Vec<String> = group
        .iter()
        .flat_map(|c| match c {
            Command::Append(request, _) => request
                .events
                .iter()
                .map(|e| e.organization_id.as_str().to_owned())
                .collect(),
            Command::CreateKey(_, Some(e), _) | Command::RevokeKey(_, Some(e), _) => {
                vec![e.organization_id.as_str().to_owned()]
            }
            _ => Vec::new(),
        })
        .collect();
    organizations.sort_unstable();
    organizations.dedup();
    let (scopes, endpoints, keys): (Vec<&str>, Vec<&str>, Vec<&str>) = claims
        .iter()
        .map(|(s, e, k)| (s.as_str(), e.as_str(), k.as_str()))
        .collect();
    // Pipelined behind BEGIN, in one round trip: the statements after the lock run (and take
    // their snapshots) once it is held.
    let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&scopes, &endpoints, &keys];
    let endpoint_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&organizations];
    let (_, _, last, records, hooks) = tokio::try_join!(
        client.batch_execute("BEGIN"),
        client.execute(&session.lock, &[&locks::APPEND]),
        client.query_opt(&session.last, &[]),
        client.query(&session.idempotency, &claim_params),
        client.query(&session.endpoints, &endpoint_params),
    )?;
    let mut state = Group::default();
    if let Some(row) = last {
        state.last_position = row.try_get(0)?;
        state.last_timestamp_ms = row.try_get(1)?;
        state.last_id = row.try_get(2)?;
    }
    for row in records {
        state.records.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Record {
                hash: row.try_get(3)?,
                response: row.try_get(4)?,
                created_ms: row.try_get(5)?,
            },
        );
    }
    for row in hooks {
        let types: Vec<String> = row.try_get(2)?;
        state
            .endpoints
            .entry(row.try_get(1)?)
            .or_default()
            .push(Endpoint {
                id: row.try_get(0)?,
                types: types
                    .iter()
                    .filter_map(|t| TypePattern::parse(t).ok())
                    .collect(),
                resource_type: row.try_get(3)?,
            });
    }

    for command in group.drain(..) {
        match command {
            Command::Append(request, reply) => {
                let result = append(&mut state, request, now_ms);
                finished.push(Finished::Append(reply, result));
            }
            Command::CreateKey(key, event, reply) => {
                super::insert_key(client, &key, "api").await?;
                let event = event.map(|e| insert_event(&mut state, &e, now_ms));
                finished.push(Finished::Key(reply, Ok(event)));
            }
            Command::RevokeKey(id, event, reply) => {
                let revoked = client
                    .execute(
                        "UPDATE api_keys SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                        &[&id, &now_ms],
                    )
                    .await?;
                let result = if revoked == 0 {
                    Err(StoreError::NotFound)
                } else {
                    state.changes.push(Change::KeyRevoked(id));
                    Ok(event.map(|e| insert_event(&mut state, &e, now_ms)))
                };
                finished.push(Finished::Key(reply, result));
            }
            Command::Shutdown => unreachable!("shutdown is taken out of the group before applying"),
        }
    }

    if !state.deliveries.is_empty() {
        state.changes.push(Change::DeliveriesQueued);
    }
    let payload = Doorbell::payload(
        node,
        state.events.last().map_or(0, |e| e.position),
        &state.changes,
    );
    let events = &state.events;
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let organizations: Vec<&str> = events.iter().map(|e| e.organization_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let resource_types: Vec<&str> = events.iter().map(|e| e.resource_type.as_str()).collect();
    let resource_ids: Vec<&str> = events.iter().map(|e| e.resource_id.as_str()).collect();
    let workspaces: Vec<Option<&str>> = events.iter().map(|e| e.workspace_id.as_deref()).collect();
    let jsons: Vec<&str> = events
        .iter()
        .map(|e| std::str::from_utf8(&e.json).expect("serde_json writes UTF-8"))
        .collect();
    let traceparents: Vec<Option<String>> = events
        .iter()
        .map(|e| e.trace.as_ref().map(|t| t.parent.to_string()))
        .collect();
    let tracestates: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.trace.as_ref()?.state.as_ref().map(|s| s.as_str()))
        .collect();
    let forget: (Vec<&str>, Vec<&str>, Vec<&str>) = state
        .forget
        .iter()
        .map(|(s, e, k)| (s.as_str(), e.as_str(), k.as_str()))
        .collect();
    let remember = &state.remember;
    let r_scopes: Vec<&str> = remember.iter().map(|(k, _)| k.0.as_str()).collect();
    let r_endpoints: Vec<&str> = remember.iter().map(|(k, _)| k.1.as_str()).collect();
    let r_keys: Vec<&str> = remember.iter().map(|(k, _)| k.2.as_str()).collect();
    let r_hashes: Vec<&[u8]> = remember.iter().map(|(_, r)| r.hash.as_slice()).collect();
    let r_responses: Vec<&[u8]> = remember
        .iter()
        .map(|(_, r)| r.response.as_slice())
        .collect();
    let r_created: Vec<i64> = remember.iter().map(|(_, r)| r.created_ms).collect();
    let deliveries = &state.deliveries;
    let d_ids: Vec<Uuid> = deliveries.iter().map(|d| d.0).collect();
    let d_webhooks: Vec<Uuid> = deliveries.iter().map(|d| d.1).collect();
    let d_positions: Vec<i64> = deliveries.iter().map(|d| d.2).collect();
    let d_events: Vec<Uuid> = deliveries.iter().map(|d| d.3).collect();
    let d_types: Vec<&str> = deliveries.iter().map(|d| d.4.as_str()).collect();
    let d_due: Vec<i64> = deliveries.iter().map(|d| d.5).collect();

    let insert_events = async {
        if positions.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &session.insert_events,
                &[
                    &positions,
                    &ids,
                    &organizations,
                    &types,
                    &resource_types,
                    &resource_ids,
                    &workspaces,
                    &state.timestamps,
                    &jsons,
                    &traceparents,
                    &tracestates,
                ],
            )
            .await
    };
    let forget_records = async {
        if forget.0.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &session.forget_idempotency,
                &[&forget.0, &forget.1, &forget.2],
            )
            .await
    };
    let remember_records = async {
        if r_scopes.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &session.insert_idempotency,
                &[
                    &r_scopes,
                    &r_endpoints,
                    &r_keys,
                    &r_hashes,
                    &r_responses,
                    &r_created,
                ],
            )
            .await
    };
    let insert_deliveries = async {
        if d_ids.is_empty() {
            return Ok(0);
        }
        client
            .execute(
                &session.insert_deliveries,
                &[
                    &d_ids,
                    &d_webhooks,
                    &d_positions,
                    &d_events,
                    &d_types,
                    &d_due,
                ],
            )
            .await
    };
    let notify = async {
        if positions.is_empty() && state.changes.is_empty() {
            return Ok(0);
        }
        client.execute(&session.notify, &[&CHANNEL, &payload]).await
    };
    // Pipelined, in this order (the forgetting before the remembering), with the COMMIT in the
    // same round trip. If a statement fails, the server refuses the rest of the transaction and
    // turns the COMMIT into a rollback; the failure is what `try_join` answers, so nothing that
    // failed is ever reported committed.
    tokio::try_join!(
        insert_events,
        forget_records,
        remember_records,
        insert_deliveries,
        notify,
        client.batch_execute("COMMIT"),
    )?;
    let mut changes = state.changes;
    changes.dedup();
    Ok(changes)
}

/// Decides and stages one append.
fn append(
    state: &mut Group,
    request: AppendRequest,
    now_ms: i64,
) -> Result<AppendOutcome, StoreError> {
    let claim_key = request.idempotency.as_ref().map(|claim| {
        (
            claim.scope.clone(),
            request.endpoint.as_str().to_owned(),
            claim.key.clone(),
        )
    });
    if let (Some(claim), Some(key)) = (&request.idempotency, &claim_key)
        && let Some(record) = state.records.get(key)
    {
        if record.created_ms > now_ms - IDEMPOTENCY_WINDOW_MS {
            return if record.hash[..] == claim.request_hash[..] {
                Ok(AppendOutcome {
                    body: Bytes::from(record.response.clone()),
                    replayed: true,
                    events: Vec::new(),
                })
            } else {
                Err(StoreError::IdempotencyConflict)
            };
        }
        // Expired: replaced by this request's record.
        state.forget.push(key.clone());
    }
    let events: Vec<Arc<StoredEvent>> = request
        .events
        .iter()
        .map(|event| insert_event(state, event, now_ms))
        .collect();
    let body = match request.endpoint {
        IngestEndpoint::Single => events[0].json.clone(),
        IngestEndpoint::Batch => batch_body(&events),
    };
    if let (Some(claim), Some(key)) = (&request.idempotency, claim_key) {
        let record = || Record {
            hash: claim.request_hash.to_vec(),
            response: body.to_vec(),
            created_ms: now_ms,
        };
        // Later requests of this group with the same key replay this one.
        state.records.insert(key.clone(), record());
        state.remember.push((key, record()));
    }
    Ok(AppendOutcome {
        body,
        replayed: false,
        events,
    })
}

/// Gives an event its position, timestamp and id, and queues its deliveries.
fn insert_event(state: &mut Group, event: &NewEvent, now_ms: i64) -> Arc<StoredEvent> {
    let timestamp_ms = now_ms.max(state.last_timestamp_ms);
    state.last_timestamp_ms = timestamp_ms;
    let id = next_event_id(state.last_id, timestamp_ms);
    state.last_id = id;
    state.last_position += 1;
    let json = event.stamp(&id, timestamp_ms);
    let stored = Arc::new(StoredEvent {
        position: state.last_position,
        id,
        organization_id: event.organization_id.as_str().to_owned(),
        event_type: event.event_type.as_str().to_owned(),
        resource_type: event.resource_type.as_str().to_owned(),
        resource_id: event.resource_id.as_str().to_owned(),
        workspace_id: event.workspace_id.as_ref().map(|w| w.as_str().to_owned()),
        trace: event.trace.clone(),
        json: Bytes::from(json),
        sse: Default::default(),
    });
    if let Some(endpoints) = state.endpoints.get(&stored.organization_id) {
        for endpoint in endpoints {
            let type_matches = endpoint.types.iter().any(|p| p.matches(&stored.event_type));
            let resource_matches = endpoint
                .resource_type
                .as_deref()
                .is_none_or(|r| r == stored.resource_type);
            if type_matches && resource_matches {
                state.deliveries.push((
                    Uuid::now_v7(),
                    endpoint.id,
                    stored.position,
                    stored.id,
                    stored.event_type.clone(),
                    timestamp_ms,
                ));
            }
        }
    }
    state.timestamps.push(timestamp_ms);
    state.events.push(stored.clone());
    stored
}
