//! Integration tests: the real broker on port 0 with a temporary database, spoken to over HTTP.

mod dashboard;
mod durability;
mod helpers;
mod history;
mod ingest;
mod keys;
mod ops;
mod receiver;
mod streams;
mod webhooks;
mod ws;
