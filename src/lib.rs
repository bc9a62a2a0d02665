//! cPod Events: a real-time event broker.
//!
//! The data path, in the order an event travels it:
//!
//! - [`http::ingest`]   — `POST /v1/events[/batch]`: parse, validate, authorize
//! - [`event`]          — the event, its validated fields and its wire JSON
//! - [`store`]          — SQLite (one process) or PostgreSQL (N nodes); positions, idempotency
//! - [`hub`]            — live fan-out in commit order; the gapless `Subscription`
//! - [`http::history`]  — `GET /v1/events`: filters, cursors, the retention horizon
//! - [`http::sse`]      — `GET /v1/events/stream`: Server-Sent Events
//! - [`http::ws`]       — `GET /v1/events/ws`: the WebSocket protocol
//! - [`http::streams`]  — what both streams share; `POST /v1/stream-tickets`
//! - [`webhooks`]       — signed HTTP delivery from a durable queue (`store::webhooks`)
//!
//! Around it:
//!
//! - [`config`]     — flags and `CPOD_*` variables
//! - [`startup`]    — builds the application, runs it, shuts it down
//! - [`auth`]       — keys, roles, the `Principal` extractor, the per-key rate limit
//! - [`tickets`]    — signed, expiring stream tickets
//! - [`filter`]     — organization scope, type globs, exact fields
//! - [`error`]      — the one JSON error type
//! - [`http::keys`] — `/v1/keys`
//! - [`http::webhooks`] — `/v1/webhooks`
//! - [`http::ops`]  — `/healthz`, `/readyz`, `/metrics`, `/openapi.json`
//! - [`http::dashboard`] — `/` and its assets (`static/`: the dashboard and `/sdk.js`)
//! - [`retention`]  — pruning of expired events
//! - [`cluster`]    — this node's heartbeat, `cpod_cluster_nodes`, `cpod_feed_lag_seconds`
//! - [`telemetry`]  — logs, the Prometheus recorder, request metrics
//! - [`openapi`]    — the generated OpenAPI document
//! - [`cli`]        — the command-line client (`tail`, `emit`, `history`, `keys`, `webhooks`),
//!   built on the SDK crate `cpod-sdk` (`sdk/`)
//! - [`demo`]       — `serve --demo`: a demo organization and a steady stream of platform activity

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod event;
pub mod filter;
pub mod http;
pub mod hub;
pub mod keys;
pub mod openapi;
pub mod retention;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tickets;
pub mod webhooks;
