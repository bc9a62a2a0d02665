//! The Server-Sent Events wire format (WHATWG HTML §9.2): bytes in, [`Message`]s out. Lines end
//! in LF, CRLF or CR; `field: value` with at most one space stripped; several `data:` lines join
//! with LF; a blank line ends a message; lines starting with `:` are comments.
//!
//! A message (its `data:` lines, until the blank line) and any one line may hold at most
//! [`MAX_MESSAGE_BYTES`] (or the limit given to [`Decoder::with_max_message_bytes`]); a peer that
//! sends more is refused with [`Error::Protocol`] rather than buffered without bound.

use crate::error::{Error, Result};

/// The default limit of one message: far above the broker's largest event (64 KiB by default,
/// `CPOD_MAX_EVENT_BYTES`, and never more than a request body, 4 MiB by default).
///
/// ```
/// assert_eq!(cpod_sdk::sse::MAX_MESSAGE_BYTES, 8 * 1024 * 1024);
/// ```
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched message (or a `retry:` field, which may arrive alone).
///
/// ```
/// let mut decoder = cpod_sdk::sse::Decoder::default();
/// let messages = decoder.feed(b"retry: 3000\n\nid: 1\ndata: {}\n\n")?;
/// assert_eq!(messages[0].retry, Some(3000));
/// assert_eq!(messages[1].id.as_deref(), Some("1"));
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// `id:` of this message, if it had one.
    pub id: Option<String>,
    /// `event:`; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when there were none.
    pub data: Option<String>,
    /// `retry:` in milliseconds.
    pub retry: Option<u64>,
}

/// An incremental decoder: feed it chunks as they arrive, in any split.
///
/// ```
/// let mut decoder = cpod_sdk::sse::Decoder::default();
/// assert!(decoder.feed(b"data: hel")?.is_empty());
/// let messages = decoder.feed(b"lo\r\n\r\n")?;
/// assert_eq!(messages[0].data.as_deref(), Some("hello"));
/// # Ok::<(), cpod_sdk::Error>(())
/// ```
#[derive(Debug)]
pub struct Decoder {
    /// Bytes of the line being received (a chunk may end inside a UTF-8 character).
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    current: Message,
    data: Vec<String>,
    /// Whether the message being built has any field at all (comments do not count).
    has_fields: bool,
    /// Bytes of the `data:` lines of the message being built (one more each for its LF).
    message_bytes: usize,
    max_message_bytes: usize,
    /// A limit was exceeded: the stream is not decoded any further.
    failed: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::with_max_message_bytes(MAX_MESSAGE_BYTES)
    }
}

impl Decoder {
    /// A decoder that refuses a message of more than `max` bytes.
    ///
    /// ```
    /// let mut decoder = cpod_sdk::sse::Decoder::with_max_message_bytes(16);
    /// assert!(decoder.feed(b"data: short\n\n").is_ok());
    /// assert!(decoder.feed(b"data: much too long for it\n\n").is_err());
    /// ```
    pub fn with_max_message_bytes(max: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            current: Message::default(),
            data: Vec::new(),
            has_fields: false,
            message_bytes: 0,
            max_message_bytes: max.max(1),
            failed: false,
        }
    }

    /// Decodes `chunk`, answering every message it completes; fails with [`Error::Protocol`]
    /// (now and for every later chunk) once a message exceeds the limit.
    ///
    /// ```
    /// let mut decoder = cpod_sdk::sse::Decoder::default();
    /// let messages = decoder.feed(b": keep-alive\n\nevent: reset\ndata: {\"reason\":\"x\"}\n\n")?;
    /// assert_eq!(messages.len(), 1);
    /// assert_eq!(messages[0].event.as_deref(), Some("reset"));
    /// # Ok::<(), cpod_sdk::Error>(())
    /// ```
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Message>> {
        if self.failed {
            return Err(self.too_large());
        }
        let mut out = Vec::new();
        for &byte in chunk {
            if std::mem::take(&mut self.after_cr) && byte == b'\n' {
                continue;
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(message) = self.line_done(&String::from_utf8_lossy(&line)) {
                        out.push(message);
                    }
                }
                _ => {
                    if self.message_bytes + self.line.len() >= self.max_message_bytes {
                        // Let go of what was buffered: this stream is over.
                        self.failed = true;
                        self.line = Vec::new();
                        self.data = Vec::new();
                        self.current = Message::default();
                        return Err(self.too_large());
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(out)
    }

    fn too_large(&self) -> Error {
        Error::Protocol(format!(
            "a Server-Sent Events message longer than {} bytes",
            self.max_message_bytes
        ))
    }

    fn line_done(&mut self, line: &str) -> Option<Message> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
            self.message_bytes = 0;
            let mut message = std::mem::take(&mut self.current);
            if !self.data.is_empty() {
                message.data = Some(std::mem::take(&mut self.data).join("\n"));
            }
            return Some(message);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.message_bytes += value.len() + 1;
                self.data.push(value.to_owned());
            }
            "event" => self.current.event = Some(value.to_owned()),
            // An id holding NUL is ignored, as the specification says.
            "id" if !value.contains('\0') => self.current.id = Some(value.to_owned()),
            "retry" => match value.parse() {
                Ok(ms) => self.current.retry = Some(ms),
                Err(_) => return None,
            },
            _ => return None,
        }
        self.has_fields = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_split_of_a_stream_decodes_the_same() {
        let wire = b"retry: 2500\n\n: keep-alive\n\nid: a\ndata: {\"x\":1}\n\nevent: reset\r\ndata: one\r\ndata: two\r\n\r\nid: b\rdata:no-space\r\r";
        let whole = Decoder::default().feed(wire).unwrap();
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].retry, Some(2500));
        assert_eq!(whole[1].id.as_deref(), Some("a"));
        assert_eq!(whole[1].data.as_deref(), Some("{\"x\":1}"));
        assert_eq!(whole[2].event.as_deref(), Some("reset"));
        assert_eq!(whole[2].data.as_deref(), Some("one\ntwo"));
        assert_eq!(whole[3].data.as_deref(), Some("no-space"));
        for split in 1..wire.len() {
            let mut decoder = Decoder::default();
            let mut parts = decoder.feed(&wire[..split]).unwrap();
            parts.extend(decoder.feed(&wire[split..]).unwrap());
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_retries_are_ignored() {
        let messages = Decoder::default()
            .feed(b"foo: bar\nretry: soon\n\ndata\n\n")
            .unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].data.as_deref(), Some(""));
    }

    #[test]
    fn a_line_without_end_is_refused_at_the_limit() {
        let mut decoder = Decoder::with_max_message_bytes(1000);
        assert!(decoder.feed(b"data: ").unwrap().is_empty());
        let mut refused = None;
        for _ in 0..20 {
            if let Err(e) = decoder.feed(&[b'x'; 100]) {
                refused = Some(e);
                break;
            }
        }
        assert!(
            matches!(refused, Some(Error::Protocol(ref m)) if m.contains("1000 bytes")),
            "{refused:?}"
        );
        assert!(decoder.line.capacity() == 0, "the buffer is let go");
        assert!(
            decoder.feed(b"\n\n").is_err(),
            "a failed decoder stays failed"
        );
    }

    #[test]
    fn endless_data_lines_without_a_blank_line_are_refused_at_the_limit() {
        let mut decoder = Decoder::with_max_message_bytes(1000);
        let mut refused = false;
        for _ in 0..100 {
            match decoder.feed(b"data: 0123456789\n") {
                Ok(messages) => assert!(messages.is_empty()),
                Err(Error::Protocol(_)) => {
                    refused = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused);
        assert!(decoder.data.is_empty(), "the buffered lines are let go");
    }

    #[test]
    fn messages_up_to_the_limit_pass_and_the_count_starts_over_with_each() {
        let mut decoder = Decoder::with_max_message_bytes(64);
        // 20 bytes a line: three lines fit in 64, and each message is counted on its own.
        for _ in 0..50 {
            let messages = decoder
                .feed(b"data: 0123456789abc\ndata: 0123456789abc\ndata: 0123456789abc\n\n")
                .unwrap();
            assert_eq!(messages.len(), 1);
        }
        // Comments between messages are not kept, so they add nothing…
        for _ in 0..50 {
            assert!(decoder.feed(b": keep-alive\n").unwrap().is_empty());
        }
        assert_eq!(decoder.feed(b"data: x\n\n").unwrap().len(), 1);
        // … but one comment line is still bounded while it is read.
        assert!(decoder.feed(&[b':'; 100]).is_err());
    }
}
