//! The HTTP server and what it does per connection, below actix-web's routing.
//!
//! The server is actix-web's own parts (actix-server, actix-http's HTTP/1 service, the `App`)
//! assembled as `HttpServer` would, so that each TCP connection can be wrapped in a
//! [`Connection`]. The wrapper does two things no hook of actix-http allows:
//!
//! - **Protocol refusals get the contract's JSON error.** actix-http answers a request it cannot
//!   parse (bad or duplicate `Content-Length`, conflicting `Transfer-Encoding`, a NUL in a
//!   header, an over-long URI; too large or too many headers) itself, with an empty 400 or 431,
//!   before any handler runs. The wrapper recognises that answer in the outgoing bytes (the
//!   handlers never send an empty 400 or 431, and JSON bodies cannot hold the raw CRLFs the
//!   match needs) and sends the JSON error in its place. Should the answer be split across
//!   writes, it goes out as actix wrote it.
//! - **A stream can end its connection** ([`ConnectionCloser`]): a response whose client does
//!   not read stops being polled once the socket's buffers are full, so it cannot end itself;
//!   closing the connection under it makes actix-http drop it (and everything it holds).

use std::io;
use std::net::TcpListener;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{HttpService, Request, Response};
use actix_service::{IntoServiceFactory, ServiceFactoryExt, map_config};
use actix_web::dev::{
    AppConfig, Extensions, Server, Service, ServiceFactory, fn_factory, fn_service,
};

use crate::http::owned::Route;
use actix_web::rt::net::TcpStream;
use bytes::Bytes;
use cpod_proto::{ErrorBody, ErrorCode};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Server-wide settings of [`serve`].
pub struct ServerSettings {
    pub workers: usize,
    /// How long in-flight requests get after a graceful stop.
    pub shutdown_timeout: Duration,
    /// Cancelled when connections are to take no more requests (at shutdown, once the drain is
    /// over): idle keep-alive connections close at once and buffered requests are not started.
    pub shutdown: CancellationToken,
    /// Serve stream requests that open a connection below actix-web
    /// ([`crate::http::owned`]), each worker with its shard; `None` leaves them all to actix.
    pub streams: Option<actix_web::web::Data<crate::http::state::AppState>>,
}

/// Connections one worker may hold: each idle stream is one, and they are cheap.
const MAX_CONNECTIONS_PER_WORKER: usize = 1 << 20;

/// Serves `factory`'s application on `listener`, each connection wrapped in a [`Connection`]
/// (whose [`ConnectionCloser`] handlers find with `req.conn_data()`).
pub fn serve<F, I, S, B>(
    listener: TcpListener,
    settings: ServerSettings,
    factory: F,
) -> io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let address = listener.local_addr()?;
    let ServerSettings {
        workers,
        shutdown_timeout,
        shutdown,
        streams,
    } = settings;
    Ok(Server::build()
        .workers(workers)
        .backlog(4096)
        .max_concurrent_connections(MAX_CONNECTIONS_PER_WORKER)
        .disable_signals()
        .shutdown_timeout(shutdown_timeout.as_secs())
        .listen("cpod-events", listener, move || {
            let shutdown = shutdown.clone();
            let application = factory()
                .into_factory()
                .map_err(|err| err.into().error_response());
            let http = HttpService::build()
                // A subscriber that closes its socket ends its stream at once (the read side
                // sees the EOF), instead of lingering until a write fails.
                .h1_allow_half_closed(false)
                // actix-web's own defaults, which the builder does not share: a connection
                // being closed keeps reading for 1 s, so a client still sending a refused body
                // gets the answer instead of a reset.
                .client_request_timeout(Duration::from_secs(5))
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(address)
                .graceful_shutdown_signal(move || {
                    let shutdown = shutdown.clone();
                    async move { shutdown.cancelled().await }
                })
                .on_connect_ext(|connection: &Connection, data: &mut Extensions| {
                    data.insert(connection.closer());
                })
                // The default config names localhost; it serves URL generation and a `Host`
                // fallback, neither of which the broker uses (actix-web's constructor with the
                // real address is private).
                .h1(map_config(application, |_| AppConfig::default()));
            let streams = streams.clone();
            fn_factory(move || {
                let http = http.new_service(());
                let streams = streams.clone();
                async move {
                    let http = Rc::new(http.await?);
                    // Started on this worker's thread: the shard of the streams it accepts.
                    let shard = streams.map(crate::http::owned::Shard::start);
                    Ok::<_, ()>(fn_service(move |tcp: TcpStream| {
                        let (http, shard) = (http.clone(), shard.clone());
                        async move {
                            let peer = tcp.peer_addr().ok();
                            // Stream frames are small and latency-bound: never let Nagle hold
                            // one back.
                            let _ = tcp.set_nodelay(true);
                            if let Some(shard) = shard
                                && crate::http::owned::sniff(&tcp).await == Route::Stream
                            {
                                crate::http::owned::serve_stream(tcp, shard).await;
                                return Ok(());
                            }
                            // Boxed: an actix connection's state is not every stream's.
                            Box::pin(http.call((Connection::new(tcp), peer))).await
                        }
                    }))
                }
            })
        })?
        .run())
}

/// Ends a connection from outside the task that serves it.
#[derive(Clone)]
pub struct ConnectionCloser(Arc<Shared>);

impl ConnectionCloser {
    /// Closes the connection: its reads end and its writes fail from now on, and the task
    /// serving it is woken to notice, even while it waits for a socket that does not drain.
    pub fn close(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

struct Shared {
    closed: AtomicBool,
    /// The task serving the connection (it polls both directions).
    waker: AtomicWaker,
}

/// One TCP connection as actix-http sees it.
pub struct Connection {
    io: TcpStream,
    shared: Arc<Shared>,
    /// Past a `101 Switching Protocols` the bytes are WebSocket frames: left alone.
    upgraded: bool,
    /// A JSON error answer still to write, in place of actix-http's empty one.
    replacement: Bytes,
}

/// actix-http's own answers to requests it could not parse, as it writes them.
const REFUSALS: [(&[u8], ErrorCode, &str); 2] = [
    (
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
        ErrorCode::InvalidRequest,
        "the request is not valid HTTP/1.1 (its request line, a header, Content-Length or \
         Transfer-Encoding) and was refused before it was read",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n",
        ErrorCode::RequestHeadersTooLarge,
        "the request's head is too large: at most 32 KiB of request line and headers, and at \
         most 96 headers",
    ),
];

/// The contract's JSON error in place of an empty refusal starting `head` (through its blank
/// line).
fn json_refusal(head: &[u8], code: ErrorCode, message: &str) -> Bytes {
    let status_line = &head[..head.windows(2).position(|w| w == b"\r\n").unwrap_or(0)];
    let body = serde_json::to_string(&ErrorBody::new(code, message, None))
        .expect("an error body serializes");
    let mut answer = Vec::with_capacity(status_line.len() + body.len() + 100);
    answer.extend_from_slice(status_line);
    answer.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    answer.extend_from_slice(body.as_bytes());
    Bytes::from(answer)
}

/// Where the next refusal starts in `buf`, with its whole head's length and its JSON answer.
fn find_refusal(buf: &[u8]) -> Option<(usize, usize, Bytes)> {
    REFUSALS
        .iter()
        .filter_map(|(pattern, code, message)| {
            let start = memchr::memmem::find(buf, pattern)?;
            let end = memchr::memmem::find(&buf[start..], b"\r\n\r\n")? + 4;
            Some((
                start,
                end,
                json_refusal(&buf[start..start + end], *code, message),
            ))
        })
        .min_by_key(|(start, _, _)| *start)
}

impl Connection {
    fn new(io: TcpStream) -> Self {
        Self {
            io,
            shared: Arc::new(Shared {
                closed: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            }),
            upgraded: false,
            replacement: Bytes::new(),
        }
    }

    fn closer(&self) -> ConnectionCloser {
        ConnectionCloser(self.shared.clone())
    }

    fn closed(&self, cx: &mut Context<'_>) -> bool {
        self.shared.waker.register(cx.waker());
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Writes what is left of a replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.replacement.is_empty() {
            let written =
                std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.replacement))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let _ = self.replacement.split_to(written);
        }
        Poll::Ready(Ok(()))
    }
}

fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the broker closed this connection",
    )
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        std::task::ready!(self.poll_replacement(cx))?;
        if !self.upgraded {
            if buf.starts_with(b"HTTP/1.1 101 ") {
                self.upgraded = true;
            } else if let Some((start, length, answer)) = find_refusal(buf) {
                if start > 0 {
                    // What comes before goes out first; the refusal starts the next write.
                    return Pin::new(&mut self.io).poll_write(cx, &buf[..start]);
                }
                self.replacement = answer;
                // The refusal counts as written once its replacement is queued; flushes and
                // later writes send the replacement first.
                let _ = self.poll_replacement(cx)?;
                return Poll::Ready(Ok(length));
            }
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed(cx) {
            return Poll::Ready(Err(closed_error()));
        }
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shared.closed.load(Ordering::Acquire) {
            std::task::ready!(self.poll_replacement(cx))?;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_refusal_is_found_after_other_answers_and_replaced_by_json() {
        let good = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";
        let refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let buf = [&good[..], &refusal[..]].concat();
        let (start, length, answer) = find_refusal(&buf).unwrap();
        assert_eq!((start, length), (good.len(), refusal.len()));
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "invalid_request");

        let too_large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let (_, _, answer) = find_refusal(too_large).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 431 "));
        // An answer with a body, or a refusal whose head is cut, is left alone.
        assert!(find_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n").is_none());
        assert!(find_refusal(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nda").is_none());
    }
}
