//! Integration tests: the real broker on port 0 with a temporary database, spoken to over HTTP.

mod asyncapi;
mod cli;
mod clock;
mod cloudevents;
mod dashboard;
mod demo;
mod disk_full;
mod durability;
mod helpers;
mod history;
mod hostile;
mod ingest;
mod keys;
mod ops;
mod receiver;
mod schemathesis;
mod sdk;
mod shutdown;
mod sqlite_only;
mod stream_connections;
mod streams;
mod trace;
mod webhooks;
mod ws;
