//! cPod Events: a real-time event broker.
//!
//! The modules form layers that point one way: each layer uses only the layers above it in this
//! list (`../shared/tools/layers` prints no import circle).
//!
//! 1. **Domain** — what the broker is about, with no I/O:
//!    [`event`] (the event, its validated fields, its wire JSON, monotonic ids and timestamps),
//!    [`filter`] (organization scope, type globs, exact fields), [`cloudevents`] (an event
//!    written as a CloudEvent for every transport, and a received CloudEvent read as an event
//!    draft), [`keys`] (keys, roles, the
//!    credential events a key's life leaves), [`tickets`] (signed, expiring stream tickets),
//!    [`error`] (the one error type, mapped to the contract's JSON in one place), [`shutdown`]
//!    (the process-wide cancellation token), [`config`] (flags and `CPOD_*` variables),
//!    [`trace_context`] (W3C `traceparent`/`tracestate`, parsed by the spec's rules).
//! 2. **Storage** — [`store`]: the only place anything durable lives, used through domain
//!    operations (append a group of events with their idempotency records and webhook
//!    deliveries, history, reads after a position, keys, webhook endpoints and their leased
//!    delivery queue, settings). Behind the seam: `store::sqlite` (one process; one writer
//!    thread with group commit) and `store::postgres` (N nodes on one database; appends under
//!    one advisory lock, so positions are gapless cluster-wide). `store::feed` is the **commit feed**: every committed group and control record
//!    (key revoked, endpoint changed) in position order, as a stream a consumer starts after
//!    any position. `store::conformance` holds every backend to the same invariants.
//! 3. **Services that follow the feed** — [`hub`] (live fan-out in commit order; the gapless
//!    `Subscription`), [`auth`] (the key cache, evicted by revocations from the feed; the per-key
//!    rate limit), [`webhooks`] (signed delivery from the durable queue, woken by the feed;
//!    signing; the SSRF guard), [`retention`] (pruning), [`cluster`] (this node's heartbeat,
//!    `cpod_cluster_nodes`, `cpod_feed_lag_seconds`), [`telemetry`] (logs, Prometheus),
//!    [`spans`] (the broker's spans along an event's path — ingest, commit, fan-out, webhook
//!    attempt — continuing the event's trace context, and their OTLP export).
//! 4. **Edges** — [`http`] (`AppState` and the `Principal` extractor in `http::state`; the body
//!    and response types in `http::wire`, which are also the OpenAPI schemas; one module per
//!    area: `ingest`, `history`, `keys`, `sse`, `ws`, `streams`, `webhooks`, `ops`, `dashboard`;
//!    `bodies` and `connection` for what a request and a connection may cost), [`openapi`] (the
//!    document, read from the handlers), [`asyncapi`] (the streams, the WebSocket protocol and
//!    webhooks as an AsyncAPI document, on the OpenAPI document's schemas), [`cli`] (the command-line client, on the SDK crate
//!    `cpod-sdk`), [`demo`] (`serve --demo`).
//! 5. **Assembly** — [`startup`] builds the application from the configuration, runs it, and on
//!    shutdown joins every task it spawned before it closes the store; `main.rs` calls it.
//!
//! Beneath the domain, the crate `cpod-proto` holds what every party speaks — the broker, the SDK,
//! the command-line client and the load generator: the event's wire form, the type-glob
//! language, webhook signing and verification, the webhook records and the error body with its
//! code table. `event`, `filter`, `error`, `webhooks::signing` and `http::wire` re-export from it
//! and add the broker's own rules; its `openapi` feature gives the same types their schemas.
//!
//! The data path, in the order an event travels it: `http::ingest` → `event` → `store` (commit)
//! → `store::feed` → `hub` → `http::sse` / `http::ws`; `http::history` and a resuming stream read
//! the store.

pub mod asyncapi;
pub mod auth;
pub mod cli;
pub mod cloudevents;
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
pub mod spans;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tickets;
pub mod trace_context;
pub mod webhooks;
