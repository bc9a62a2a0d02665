//! The integration suite of `tests/api` again, every broker on PostgreSQL: each test directory
//! gets a fresh database on the local server (`tests/api/helpers.rs`, `postgres`). Left out:
//! `sqlite_only.rs`, which looks at SQLite's files; `disk_full.rs` and `clock.rs`, which test
//! SQLite's own reserve and its clamps (PostgreSQL's are the store's conformance cases); and
//! `schemathesis.rs` and `asyncapi.rs`, whose documents do not depend on the backend.

#[path = "../api/cli.rs"]
mod cli;
#[path = "../api/cloudevents.rs"]
mod cloudevents;
mod cluster;
#[path = "../api/dashboard.rs"]
mod dashboard;
#[path = "../api/demo.rs"]
mod demo;
#[path = "../api/durability.rs"]
mod durability;
#[path = "../api/helpers.rs"]
mod helpers;
#[path = "../api/history.rs"]
mod history;
#[path = "../api/hostile.rs"]
mod hostile;
#[path = "../api/ingest.rs"]
mod ingest;
#[path = "../api/keys.rs"]
mod keys;
#[path = "../api/ops.rs"]
mod ops;
#[path = "../api/receiver.rs"]
mod receiver;
#[path = "../api/sdk.rs"]
mod sdk;
#[path = "../api/shutdown.rs"]
mod shutdown;
#[path = "../api/stream_connections.rs"]
mod stream_connections;
#[path = "../api/streams.rs"]
mod streams;
#[path = "../api/trace.rs"]
mod trace;
#[path = "../api/webhooks.rs"]
mod webhooks;
#[path = "../api/ws.rs"]
mod ws;
