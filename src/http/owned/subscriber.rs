//! One directly written stream: its socket, filter and position ([`Subscriber`]), and the
//! non-blocking and waiting writes its shard and its task ([`super::task`]) make.
//!
//! While the subscriber is **live**, its worker's shard writes each matching event's shared
//! frame straight into its socket (non-blocking; see [`super::shard`]), and its task only waits
//! for the client to close. A write that would block, or that went out in part, takes it off the
//! live path: the rest of that write is kept ([`Subscriber::backlog`]), and its task sends it
//! when the socket drains, then catches up from the store in pages after its last position, then
//! from the shard's recent events, and rejoins — the gapless invariant of [`crate::hub`], held
//! here by the shard's single thread: between two awaits nothing else runs, so rejoining (check
//! the position against the shard's, go live) cannot interleave with a fan-out.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use actix_web::rt::net::TcpStream;
use bytes::{Buf, Bytes};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cloudevents::EventFormat;
use crate::filter::Filter;
use crate::http::sse::frames;
use crate::http::streams::SubscriberGauge;
use crate::store::StoredEvent;

/// A stream written directly by its worker's shard.
pub struct Subscriber {
    pub(super) socket: TcpStream,
    pub(super) filter: Filter,
    /// How its events are written (`format`): cPod's shared frames, or CloudEvents.
    pub(super) format: EventFormat,
    /// Cancelled when the key that opened the stream is revoked, or at shutdown.
    pub(super) ended: CancellationToken,
    /// When the ticket that opened the stream expires.
    pub(super) deadline: Option<Instant>,
    /// Its key in the shard's registry.
    pub(super) slot: Cell<usize>,
    /// The last position delivered, or known to hold nothing for it.
    pub(super) last_position: Cell<i64>,
    /// Written by the shard's fan-out (else its own task is catching up).
    pub(super) live: Cell<bool>,
    /// To be closed: its task ends the stream.
    pub(super) closed: Cell<bool>,
    pub(super) last_write: Cell<Instant>,
    /// What a blocked write left unsent, sent first by its task.
    pub(super) backlog: Cell<Bytes>,
    /// Its task, waiting for the socket or for the shard.
    waker: RefCell<Option<Waker>>,
    _gauge: SubscriberGauge,
}

/// How a non-blocking write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    All,
    /// Part or none of it: the rest is in the backlog and the subscriber is off the live path.
    Blocked,
    /// The socket failed: the subscriber is closed.
    Failed,
}

impl Subscriber {
    pub(super) fn new(
        socket: TcpStream,
        filter: Filter,
        format: EventFormat,
        ended: CancellationToken,
        deadline: Option<Instant>,
        last_position: i64,
    ) -> Self {
        Self {
            socket,
            filter,
            format,
            ended,
            deadline,
            slot: Cell::new(usize::MAX),
            last_position: Cell::new(last_position),
            live: Cell::new(false),
            closed: Cell::new(false),
            last_write: Cell::new(Instant::now()),
            backlog: Cell::new(Bytes::new()),
            waker: RefCell::new(None),
            _gauge: SubscriberGauge::new("sse"),
        }
    }

    /// Wakes its task (to catch up, or to end).
    pub(super) fn wake(&self) {
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Marks it to be closed; its task ends the stream.
    pub(super) fn close(&self) {
        self.closed.set(true);
        self.live.set(false);
        self.wake();
    }

    /// Writes `bytes` without waiting. What does not go out is kept for its task, which is
    /// woken: it is then off the live path until it has caught up.
    pub(super) fn write_now(&self, bytes: Bytes) -> Written {
        debug_assert!(self.backlog_is_empty(), "a write jumped the backlog");
        match self.socket.try_write(&bytes) {
            Ok(n) if n == bytes.len() => {
                self.last_write.set(Instant::now());
                Written::All
            }
            Ok(n) => {
                self.last_write.set(Instant::now());
                self.hold(bytes.slice(n..));
                Written::Blocked
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.hold(bytes);
                Written::Blocked
            }
            Err(_) => {
                self.close();
                Written::Failed
            }
        }
    }

    fn hold(&self, rest: Bytes) {
        self.backlog.set(rest);
        if self.live.replace(false) {
            metrics::counter!("cpod_stream_catchups_total").increment(1);
        }
        self.wake();
    }

    pub(super) fn backlog_is_empty(&self) -> bool {
        let backlog = self.backlog.take();
        let empty = backlog.is_empty();
        self.backlog.set(backlog);
        empty
    }

    /// The frames of the events it wants among `events` (all after its position), in its
    /// format, and moves its position to the last of them. `None` when none is for it, or when
    /// an event cannot be encoded (a broken invariant: the stream is closed, as on actix).
    pub(super) fn frames_for(&self, events: &[Arc<StoredEvent>]) -> Option<(Bytes, usize)> {
        let after = self.last_position.get();
        let last = events.last()?.position;
        if last <= after {
            return None;
        }
        self.last_position.set(last);
        let wanted = events
            .iter()
            .filter(|e| e.position > after && self.filter.matches(&e.key()))
            .map(|e| &**e);
        let encoded = frames(wanted, self.format);
        match encoded {
            Ok(frames) => frames,
            Err(e) => {
                tracing::error!(error = %e, "an SSE stream ends: an event could not be encoded");
                self.close();
                None
            }
        }
    }

    /// Waits until the client closes (or sends something, which is dropped), the shard wants
    /// its task (to catch up or to close), or — with `writable` — the socket takes more bytes.
    pub(super) async fn wait(&self, writable: bool) -> Wake {
        poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Wake::Close);
            }
            if !writable && !self.live.get() {
                return Poll::Ready(Wake::CatchUp);
            }
            let mut waker = self.waker.borrow_mut();
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            drop(waker);
            if let Poll::Ready(ready) = self.socket.poll_read_ready(cx) {
                return Poll::Ready(if ready.is_ok() {
                    Wake::Readable
                } else {
                    Wake::Close
                });
            }
            if writable && self.socket.poll_write_ready(cx).is_ready() {
                return Poll::Ready(Wake::Writable);
            }
            Poll::Pending
        })
        .await
    }

    /// Reads what the client sent: `false` once it has closed its side (or failed).
    pub(super) fn drain_input(&self) -> bool {
        let mut scratch = [0u8; 256];
        loop {
            match self.socket.try_read(&mut scratch) {
                Ok(0) => return false,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    /// Sends the backlog, waiting for the socket as needed. `false` if the stream is to end.
    pub(super) async fn flush_backlog(&self) -> bool {
        loop {
            let mut backlog = self.backlog.take();
            if backlog.is_empty() {
                return true;
            }
            match self.socket.try_write(&backlog) {
                Ok(n) => {
                    backlog.advance(n);
                    self.last_write.set(Instant::now());
                    self.backlog.set(backlog);
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.backlog.set(backlog);
                }
                Err(_) => return false,
            }
            match self.wait(true).await {
                Wake::Close => return false,
                Wake::Readable if !self.drain_input() => return false,
                _ => {}
            }
        }
    }
}

/// What woke a subscriber's task.
pub(super) enum Wake {
    Readable,
    Writable,
    CatchUp,
    Close,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle stream keeps besides its socket's kernel buffers (BENCHMARKS.md, "Memory
    /// per idle subscriber"): this struct, its filter's strings, and its task.
    #[test]
    fn an_idle_subscribers_state_stays_small() {
        let bytes = std::mem::size_of::<Subscriber>();
        println!(
            "Subscriber {bytes} B (TcpStream {} B, Filter {} B, CancellationToken {} B)",
            std::mem::size_of::<TcpStream>(),
            std::mem::size_of::<Filter>(),
            std::mem::size_of::<CancellationToken>()
        );
        assert!(bytes <= 320, "Subscriber grew to {bytes} bytes");
    }
}
