//! The Rust client of cPod Events.
//!
//! One [`CpodClient`] per process (it is a cheap-clone handle) gives:
//!
//! - [`Events`] (`client.events()`): history pages and a stream over all pages, `emit` and
//!   `emit_batch` with optional idempotency keys, in-process `subscribe`/`dispatch`, and live
//!   streams over Server-Sent Events or WebSocket that reconnect by themselves, resume with the
//!   last event id, and never yield an event twice;
//! - [`Keys`] (`client.keys()`) and [`Webhooks`] (`client.webhooks()`): management;
//! - [`webhooks::verify`]: the Standard Webhooks check of a delivery, without a client.
//!
//! Every broker error becomes [`Error::Api`] with the broker's `code`, `message` and `param`.
//!
//! ```no_run
//! use cpod_sdk::{CpodClient, Filter, StreamItem};
//! use futures_util::StreamExt;
//!
//! # async fn run() -> Result<(), cpod_sdk::Error> {
//! let client = CpodClient::from_env()?; // CPOD_BASE_URL, CPOD_API_KEY
//! let mut stream = client.events().stream(Filter::new().types(["pod.*", "*.failed"]));
//! while let Some(item) = stream.next().await {
//!     if let StreamItem::Event(event) = item? {
//!         println!("{} {} {}", event.timestamp, event.event_type, event.resource_id);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Modules, one idea each:
//!
//! - [`client`]   — the handle: one broker, one key, and the resource handles made from them
//! - `api`        — (internal) requests carrying the key, answers decoded into values or errors
//! - [`error`]    — [`Error`] and the broker's [`ApiError`]
//! - [`model`]    — the event, new events, history queries and pages
//! - [`filter`]   — the type-glob language and local filter matching (shared with the broker)
//! - [`events`]   — history, emit, local subscriptions and dispatch
//! - [`stream`]   — live streams: reconnection, backoff, resume, de-duplication
//! - `connection` — (internal) what one connection of a stream reports, and where it resumes
//! - [`sse`]      — the Server-Sent Events wire format
//! - [`ws`]       — the WebSocket protocol
//! - [`keys`]     — `/v1/keys`
//! - [`webhooks`] — `/v1/webhooks` and signature verification

#![warn(missing_docs)]

mod api;
pub mod client;
mod connection;
pub mod error;
pub mod events;
pub mod filter;
pub mod keys;
pub mod model;
pub mod sse;
pub mod stream;
pub mod webhooks;
pub mod ws;

pub use client::{ClientBuilder, CpodClient};
pub use error::{ApiError, Error, Result};
pub use events::{EmitOptions, Events, Subscription};
pub use filter::Filter;
pub use keys::Keys;
pub use model::{Emitted, EmittedBatch, Event, EventFormat, HistoryQuery, NewEvent, Order, Page};
pub use stream::{EventStream, StreamItem, StreamOptions};
pub use webhooks::Webhooks;
