//! Webhooks (contract §6): signed HTTP delivery of events, at least once.
//!
//! - [`signing`]   — Standard Webhooks signatures and `X-Cpod-Signature`
//! - [`url_guard`] — which URLs the broker may call (SSRF)
//! - [`worker`]    — the delivery loop: claims due deliveries, sends, records, reschedules
//!
//! The queue itself lives in the store (`store::webhooks`): a delivery is created in the
//! transaction that stores its event.

pub mod signing;
pub mod url_guard;
pub mod worker;

use std::time::Duration;

/// Delivery settings, from the configuration.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Delays before each attempt; its length is the number of attempts.
    pub schedule: Vec<Duration>,
    pub allow_private: bool,
    /// No success for this long, when a delivery exhausts its retries: the endpoint is disabled.
    pub disable_after: Duration,
    pub timeout: Duration,
    /// Concurrent attempts in all, and per endpoint.
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
}

impl WebhookSettings {
    pub fn new(schedule: Vec<Duration>, allow_private: bool, disable_after: Duration) -> Self {
        Self {
            schedule,
            allow_private,
            disable_after,
            timeout: Duration::from_secs(15),
            max_in_flight: 64,
            max_in_flight_per_endpoint: 8,
        }
    }
}
