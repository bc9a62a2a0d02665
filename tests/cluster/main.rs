//! Cluster tests (contract §9): three `cpod-events` processes on one fresh PostgreSQL database
//! (`CPOD_TEST_POSTGRES`, by default the local server), spoken to over HTTP, SSE and WebSocket,
//! killed with SIGKILL, and cut from the database through a TCP proxy.

mod faults;
mod keys;
mod order;
// The integration suite's webhook receiver; this suite uses only part of it.
#[allow(dead_code)]
#[path = "../api/receiver.rs"]
mod receiver;
mod support;
mod webhooks;
