//! What every party of cPod Events speaks — the broker, the Rust SDK, the command-line client and
//! the load generator — written once, so that none of them can drift from the others:
//!
//! - [`event`]    — the event's wire form: the same JSON in history, streams and webhooks
//! - [`filter`]   — the type-glob language and what a filter asks of an event
//! - [`error`]    — the error body `{"error": {"code", "message", "param"}}`, its code table with
//!   each code's HTTP status, and [`FieldError`] (a refused field)
//! - [`signing`]  — webhook signatures (Standard Webhooks and `X-Cpod-Signature`) and their check
//! - [`webhooks`] — the webhook records the API answers: endpoints, deliveries, attempts
//! - [`cloudevents`] — the event as a CloudEvent (1.0) and back, and the formats events travel in
//!
//! Pure data and functions: no I/O, no runtime, no HTTP stack. With the `openapi` feature the wire
//! types derive `utoipa::ToSchema` under the names the broker's OpenAPI document gives them.

#![warn(missing_docs)]

pub mod cloudevents;
pub mod error;
pub mod event;
pub mod filter;
pub mod signing;
pub mod webhooks;

pub use cloudevents::CloudEvent;
pub use error::{ErrorBody, ErrorCode, ErrorDetail, FieldError};
pub use event::Event;
pub use filter::{EventKey, TypePattern, glob_matches};
