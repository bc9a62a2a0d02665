//! [`ConnectionCloser`]: ending an actix-served connection from outside the task that serves
//! it (a stream whose client does not read cannot end itself; see `crate::http::connection`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Context;

use futures_util::task::AtomicWaker;

/// Ends a connection from outside the task that serves it.
#[derive(Clone, Default)]
pub struct ConnectionCloser(Arc<Shared>);

#[derive(Default)]
struct Shared {
    closed: AtomicBool,
    /// The task serving the connection (it polls both directions).
    waker: AtomicWaker,
}

impl ConnectionCloser {
    /// Closes the connection: its reads end and its writes fail from now on, and the task
    /// serving it is woken to notice, even while it waits for a socket that does not drain.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// Whether it is closed; the task polling with `cx` is woken when it is.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> bool {
        self.0.waker.register(cx.waker());
        self.is_closed()
    }

    pub fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }
}
