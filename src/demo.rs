//! Demo mode (`serve --demo`): a demo organization with a reader and a service key, and a steady
//! stream of plausible platform activity — people joining and changing, pods going through
//! their lifecycles, jobs completing and failing, deployments and reports — emitted at a set
//! rate through the broker's own HTTP ingestion path (with the SDK and the service key), so
//! that the dashboard, `tail`, history and webhooks all see a living system.
//!
//! Idempotent across restarts: the organization is always [`ORGANIZATION`]; each start revokes
//! the keys the previous demo start made (their secrets were printed once and are not stored)
//! and makes fresh ones, so exactly one demo reader and one demo service key are active.

use std::time::Duration;

use anyhow::Context;
use cpod_sdk::{CpodClient, NewEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::event::{EventType, OrganizationId, unix_now_ms};
use crate::keys::{KeyRecord, NewKey, Role, generate_key};
use crate::store::Store;

/// The demo organization's id.
pub const ORGANIZATION: &str = "demo";
const READER_NAME: &str = "demo reader (serve --demo)";
const SERVICE_NAME: &str = "demo service (serve --demo)";
/// How often the emitter wakes up; each wake-up sends what the rate has accumulated.
const TICK: Duration = Duration::from_millis(100);
/// The shortest time between two warnings about failed emits.
const QUIET: Duration = Duration::from_secs(10);

/// The keys of this demo start.
#[derive(Debug, Clone)]
pub struct DemoKeys {
    pub reader: String,
    pub service: String,
}

/// Revokes the previous demo keys and makes a fresh reader and service key (each with its
/// `credential.revoked` / `credential.created` event, as through `/v1/keys`).
pub async fn prepare(store: &Store) -> anyhow::Result<DemoKeys> {
    let organization = OrganizationId::parse(ORGANIZATION).expect("a valid organization id");
    let previous = store
        .active_keys(Some(organization.clone()))
        .await
        .context("cannot list the demo keys")?;
    for key in previous
        .iter()
        .filter(|k| k.name == READER_NAME || k.name == SERVICE_NAME)
    {
        let event =
            crate::keys::credential_event(EventType::credential_revoked(), key, &organization);
        store
            .revoke_key(key.id, Some(event))
            .await
            .context("cannot revoke an old demo key")?;
    }
    let reader = create_key(store, &organization, Role::Reader, READER_NAME).await?;
    let service = create_key(store, &organization, Role::Service, SERVICE_NAME).await?;
    Ok(DemoKeys { reader, service })
}

async fn create_key(
    store: &Store,
    organization: &OrganizationId,
    role: Role,
    name: &str,
) -> anyhow::Result<String> {
    let generated = generate_key();
    let record = KeyRecord {
        id: Uuid::now_v7(),
        organization_id: Some(organization.clone()),
        role,
        name: name.to_owned(),
        created_ms: unix_now_ms(),
        revoked_ms: None,
    };
    let event =
        crate::keys::credential_event(EventType::credential_created(), &record, organization);
    store
        .create_key(
            NewKey {
                record,
                secret_hash: generated.hash,
            },
            Some(event),
        )
        .await
        .context("cannot create a demo key")?;
    Ok(generated.secret)
}

/// Emits `rate` events per second to the broker at `base_url` with `service_key` until
/// `shutdown` is cancelled. A refused or failed request is logged and the stream goes on.
pub async fn run(base_url: String, service_key: String, rate: f64, shutdown: CancellationToken) {
    let client = match CpodClient::new(&base_url, &service_key) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "demo mode cannot start its client");
            return;
        }
    };
    let mut simulation = Simulation::new(StdRng::from_os_rng());
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = 0.0_f64;
    let mut last_warning = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        due += rate * TICK.as_secs_f64();
        let count = due.floor() as usize;
        if count == 0 {
            continue;
        }
        due -= count as f64;
        let events: Vec<NewEvent> = (0..count).map(|_| simulation.next_event()).collect();
        let sent = async {
            if let [one] = events.as_slice() {
                client.events().emit(one).await.map(|_| ())
            } else {
                client.events().emit_batch(&events).await.map(|_| ())
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = sent => result,
        };
        let Err(error) = result else { continue };
        // One warning per 10 s at most: a broker under pressure need not also drown in logs.
        if last_warning.is_none_or(|at: std::time::Instant| at.elapsed() >= QUIET) {
            tracing::warn!(%error, "demo mode: an emit failed; going on");
            last_warning = Some(std::time::Instant::now());
        }
        // A rate limit (CPOD_RATE_LIMIT) says how long to hold back; what was due meanwhile is
        // dropped rather than sent in a burst.
        if let cpod_sdk::Error::Api(cpod_sdk::ApiError {
            retry_after: Some(wait),
            ..
        }) = error
        {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            due = 0.0;
        }
    }
}

/// A pod and where it is in its lifecycle.
#[derive(Debug, Clone)]
struct Pod {
    id: String,
    workspace: &'static str,
    image: &'static str,
    node: String,
    running_since_ms: Option<i64>,
    restarts: u32,
}

/// A person of the organization.
#[derive(Debug, Clone)]
struct Person {
    id: String,
    name: &'static str,
    title: &'static str,
}

const WORKSPACES: [&str; 3] = ["ws-research", "ws-platform", "ws-analytics"];
const IMAGES: [&str; 5] = [
    "cpod/jupyter:4.2",
    "cpod/pytorch:2.6-cuda12",
    "cpod/postgres:17",
    "cpod/api-gateway:1.14.3",
    "cpod/spark-worker:3.5",
];
const NAMES: [&str; 10] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Katherine Johnson",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "Ken Thompson",
    "Radia Perlman",
];
const TITLES: [&str; 5] = [
    "Data Scientist",
    "Platform Engineer",
    "ML Engineer",
    "Analyst",
    "SRE",
];
const JOBS: [&str; 5] = [
    "nightly-etl",
    "train-recommender",
    "backup-postgres",
    "rebuild-search-index",
    "export-invoices",
];

/// The model behind the demo stream: every event follows from the state it describes, so a pod
/// is created before it starts, fails or stops only while running, and people are updated or
/// deleted only after they were created.
pub struct Simulation<R: Rng> {
    rng: R,
    /// Pods created but not started.
    pending: Vec<Pod>,
    running: Vec<Pod>,
    people: Vec<Person>,
    serial: u64,
    /// The first events walk through every namespace, so that a fresh viewer sees them all at
    /// once; after that, chance decides.
    warm_up: std::vec::IntoIter<Action>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    CreatePerson,
    UpdatePerson,
    DeletePerson,
    CreatePod,
    StartPod,
    StopPod,
    FailPod,
    CompleteJob,
    FailJob,
    Deploy,
    Report,
}

impl<R: Rng> Simulation<R> {
    pub fn new(rng: R) -> Self {
        use Action::*;
        Self {
            rng,
            pending: Vec::new(),
            running: Vec::new(),
            people: Vec::new(),
            serial: 0,
            warm_up: vec![
                CreatePerson,
                CreatePod,
                StartPod,
                CompleteJob,
                Report,
                CreatePod,
                StartPod,
                FailPod,
                UpdatePerson,
                FailJob,
                Deploy,
            ]
            .into_iter(),
        }
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.serial += 1;
        let suffix: u32 = self.rng.random_range(0x1000..0xffff);
        format!("{prefix}-{suffix:04x}{:02}", self.serial % 100)
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.random_range(0..from.len())]
    }

    /// The next action that the current state allows.
    fn choose(&mut self) -> Action {
        if let Some(action) = self.warm_up.next() {
            return action;
        }
        use Action::*;
        let weighted: [(Action, u32); 11] = [
            (CreatePerson, if self.people.len() < 25 { 4 } else { 1 }),
            (UpdatePerson, 5),
            (DeletePerson, if self.people.len() > 8 { 1 } else { 0 }),
            (
                CreatePod,
                if self.running.len() + self.pending.len() < 30 {
                    10
                } else {
                    2
                },
            ),
            (StartPod, 10),
            (StopPod, if self.running.len() > 4 { 7 } else { 2 }),
            (FailPod, if self.running.len() > 2 { 3 } else { 1 }),
            (CompleteJob, 9),
            (FailJob, 2),
            (Deploy, 2),
            (Report, 2),
        ];
        loop {
            let total: u32 = weighted.iter().map(|(_, w)| w).sum();
            let mut draw = self.rng.random_range(0..total);
            let action = weighted
                .iter()
                .find(|(_, w)| {
                    if draw < *w {
                        true
                    } else {
                        draw -= w;
                        false
                    }
                })
                .map(|(a, _)| *a)
                .expect("the draw is below the total");
            if self.possible(action) {
                return action;
            }
        }
    }

    fn possible(&self, action: Action) -> bool {
        match action {
            Action::UpdatePerson | Action::DeletePerson => !self.people.is_empty(),
            Action::StartPod => !self.pending.is_empty(),
            Action::StopPod | Action::FailPod => !self.running.is_empty(),
            _ => true,
        }
    }

    /// The next event of the demo stream.
    pub fn next_event(&mut self) -> NewEvent {
        let mut action = self.choose();
        if !self.possible(action) {
            // Only the warm-up can ask for what is not possible yet; make it possible first.
            action = match action {
                Action::UpdatePerson | Action::DeletePerson => Action::CreatePerson,
                Action::StartPod => Action::CreatePod,
                _ => Action::StartPod,
            };
            if !self.possible(action) {
                action = Action::CreatePod;
            }
        }
        let now = unix_now_ms();
        match action {
            Action::CreatePerson => {
                let name = self.pick(&NAMES);
                let person = Person {
                    id: self.next_id("person"),
                    name,
                    title: self.pick(&TITLES),
                };
                let email = format!("{}@example.com", name.to_lowercase().replace(' ', "."));
                let event = NewEvent::new("person.created", "person", &person.id)
                    .payload(json!({"name": person.name, "email": email, "title": person.title}));
                self.people.push(person);
                event
            }
            Action::UpdatePerson => {
                let index = self.rng.random_range(0..self.people.len());
                let previous = self.people[index].title;
                let title = self.pick(&TITLES);
                self.people[index].title = title;
                let person = &self.people[index];
                NewEvent::new("person.updated", "person", &person.id).payload(json!({
                    "name": person.name,
                    "changes": {"title": {"from": previous, "to": title}},
                }))
            }
            Action::DeletePerson => {
                let index = self.rng.random_range(0..self.people.len());
                let person = self.people.swap_remove(index);
                NewEvent::new("person.deleted", "person", &person.id)
                    .payload(json!({"name": person.name, "reason": "offboarded"}))
            }
            Action::CreatePod => {
                let pod = Pod {
                    id: self.next_id("pod"),
                    workspace: self.pick(&WORKSPACES),
                    image: self.pick(&IMAGES),
                    node: format!("node-{}", self.rng.random_range(1..=6)),
                    running_since_ms: None,
                    restarts: 0,
                };
                let cpu = self.pick(&[0.5, 1.0, 2.0, 4.0, 8.0]);
                let memory = self.pick(&[512, 1024, 2048, 4096, 16384]);
                let event = NewEvent::new("pod.created", "pod", &pod.id)
                    .workspace_id(pod.workspace)
                    .payload(json!({"image": pod.image, "cpu": cpu, "memoryMiB": memory, "node": pod.node}));
                self.pending.push(pod);
                event
            }
            Action::StartPod => {
                let mut pod = self.pending.remove(0);
                pod.running_since_ms = Some(now);
                let startup_ms = self.rng.random_range(300..9000);
                let event = NewEvent::new("pod.started", "pod", &pod.id)
                    .workspace_id(pod.workspace)
                    .payload(json!({"node": pod.node, "image": pod.image, "startupMs": startup_ms, "restarts": pod.restarts}));
                self.running.push(pod);
                event
            }
            Action::StopPod => {
                let index = self.rng.random_range(0..self.running.len());
                let pod = self.running.swap_remove(index);
                let uptime = (now - pod.running_since_ms.unwrap_or(now)) / 1000;
                let reason = self.pick(&["Completed", "ScaledDown", "UserRequested"]);
                NewEvent::new("pod.stopped", "pod", &pod.id)
                    .workspace_id(pod.workspace)
                    .payload(json!({"exitCode": 0, "reason": reason, "uptimeSeconds": uptime}))
            }
            Action::FailPod => {
                let index = self.rng.random_range(0..self.running.len());
                let mut pod = self.running.swap_remove(index);
                let (exit_code, reason, message) = self.pick(&[
                    (137, "OOMKilled", "container exceeded its memory limit"),
                    (1, "Error", "process exited with status 1"),
                    (139, "Error", "segmentation fault"),
                    (143, "Evicted", "node under disk pressure"),
                ]);
                let event = NewEvent::new("pod.failed", "pod", &pod.id)
                    .workspace_id(pod.workspace)
                    .payload(json!({
                        "exitCode": exit_code, "reason": reason, "message": message,
                        "node": pod.node, "restarts": pod.restarts,
                    }));
                // Most failed pods are restarted by their controller: started again, later.
                if pod.restarts < 3 && self.rng.random_bool(0.6) {
                    pod.restarts += 1;
                    pod.running_since_ms = None;
                    self.pending.push(pod);
                }
                event
            }
            Action::CompleteJob => {
                let name = self.pick(&JOBS);
                let id = self.next_id(name);
                let workspace = self.pick(&WORKSPACES);
                let duration = self.rng.random_range(2_000..900_000);
                let rows = self.rng.random_range(1_000..5_000_000);
                NewEvent::new("job.completed", "job", id)
                    .workspace_id(workspace)
                    .payload(json!({"job": name, "durationMs": duration, "rowsProcessed": rows}))
            }
            Action::FailJob => {
                let name = self.pick(&JOBS);
                let id = self.next_id(name);
                let workspace = self.pick(&WORKSPACES);
                let error = self.pick(&[
                    "upstream timeout after 30s",
                    "permission denied on s3://cpod-exports",
                    "out of memory",
                    "schema mismatch: column `amount` is not numeric",
                ]);
                let attempt = self.rng.random_range(1..=3);
                NewEvent::new("job.failed", "job", id)
                    .workspace_id(workspace)
                    .payload(json!({"job": name, "error": error, "attempt": attempt}))
            }
            Action::Deploy => {
                let service = self.pick(&["api-gateway", "billing", "search", "notebooks"]);
                let version = format!(
                    "1.{}.{}",
                    self.rng.random_range(0..30),
                    self.rng.random_range(0..10)
                );
                let id = self.next_id("deploy");
                NewEvent::new("custom.deployment.finished", "deployment", id)
                    .workspace_id("ws-platform")
                    .payload(json!({"service": service, "version": version, "durationSeconds": self.rng.random_range(20..400)}))
            }
            Action::Report => {
                let id = self.next_id("report");
                let format = self.pick(&["pdf", "csv", "xlsx"]);
                NewEvent::new("custom.report.generated", "report", id)
                    .workspace_id("ws-analytics")
                    .payload(json!({"format": format, "rows": self.rng.random_range(10..50_000)}))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::event::EventDraft;

    #[test]
    fn the_first_events_cover_every_namespace_a_service_key_may_emit() {
        let mut simulation = Simulation::new(StdRng::seed_from_u64(7));
        let namespaces: HashSet<String> = (0..11)
            .map(|_| {
                let event = simulation.next_event();
                event.event_type.split('.').next().unwrap().to_owned()
            })
            .collect();
        for namespace in ["person", "pod", "job", "custom"] {
            assert!(
                namespaces.contains(namespace),
                "{namespace}: {namespaces:?}"
            );
        }
    }

    #[test]
    fn every_event_is_valid_and_lifecycles_are_plausible() {
        for seed in 0..5 {
            let mut simulation = Simulation::new(StdRng::seed_from_u64(seed));
            // The last lifecycle step of each pod and whether each person exists.
            let mut pods: HashMap<String, &str> = HashMap::new();
            let mut people: HashSet<String> = HashSet::new();
            let mut types = HashSet::new();
            for _ in 0..3000 {
                let event = simulation.next_event();
                let body = serde_json::to_value(&event).unwrap();
                let draft = serde_json::from_value(body.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|b| EventDraft::from_body(b).map_err(|e| e.message));
                assert!(draft.is_ok(), "{body}");
                assert!(event.payload.as_ref().is_some_and(|p| p.is_object()));
                let id = event.resource_id.clone();
                match event.event_type.as_str() {
                    "pod.created" => assert_eq!(pods.insert(id.clone(), "created"), None),
                    "pod.started" => {
                        // Started after its creation, or restarted after a failure.
                        let before = pods.insert(id.clone(), "started");
                        assert!(
                            matches!(before, Some("created" | "failed")),
                            "{id}: {before:?}"
                        );
                    }
                    "pod.stopped" => {
                        assert_eq!(pods.insert(id.clone(), "stopped"), Some("started"), "{id}")
                    }
                    "pod.failed" => {
                        assert_eq!(pods.insert(id.clone(), "failed"), Some("started"), "{id}")
                    }
                    "person.created" => assert!(people.insert(id)),
                    "person.updated" => assert!(people.contains(&id), "{id}"),
                    "person.deleted" => assert!(people.remove(&id), "{id}"),
                    _ => {}
                }
                types.insert(event.event_type);
            }
            for expected in [
                "person.created",
                "person.updated",
                "person.deleted",
                "pod.created",
                "pod.started",
                "pod.stopped",
                "pod.failed",
                "job.completed",
                "job.failed",
                "custom.deployment.finished",
                "custom.report.generated",
            ] {
                assert!(types.contains(expected), "seed {seed}: no {expected}");
            }
        }
    }
}
