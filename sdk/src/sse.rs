//! The Server-Sent Events wire format (WHATWG HTML §9.2): bytes in, [`Message`]s out. Lines end
//! in LF, CRLF or CR; `field: value` with at most one space stripped; several `data:` lines join
//! with LF; a blank line ends a message; lines starting with `:` are comments.

/// One dispatched message (or a `retry:` field, which may arrive alone).
///
/// ```
/// let mut decoder = cpod_sdk::sse::Decoder::default();
/// let messages = decoder.feed(b"retry: 3000\n\nid: 1\ndata: {}\n\n");
/// assert_eq!(messages[0].retry, Some(3000));
/// assert_eq!(messages[1].id.as_deref(), Some("1"));
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
/// assert!(decoder.feed(b"data: hel").is_empty());
/// let messages = decoder.feed(b"lo\r\n\r\n");
/// assert_eq!(messages[0].data.as_deref(), Some("hello"));
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    /// Bytes of the line being received (a chunk may end inside a UTF-8 character).
    line: Vec<u8>,
    /// The previous chunk ended in CR: a LF at the start of the next one belongs to it.
    after_cr: bool,
    current: Message,
    data: Vec<String>,
    /// Whether the message being built has any field at all (comments do not count).
    has_fields: bool,
}

impl Decoder {
    /// Decodes `chunk`, answering every message it completes.
    ///
    /// ```
    /// let mut decoder = cpod_sdk::sse::Decoder::default();
    /// let messages = decoder.feed(b": keep-alive\n\nevent: reset\ndata: {\"reason\":\"x\"}\n\n");
    /// assert_eq!(messages.len(), 1);
    /// assert_eq!(messages[0].event.as_deref(), Some("reset"));
    /// ```
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Message> {
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
                _ => self.line.push(byte),
            }
        }
        out
    }

    fn line_done(&mut self, line: &str) -> Option<Message> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
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
            "data" => self.data.push(value.to_owned()),
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
        let whole = Decoder::default().feed(wire);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].retry, Some(2500));
        assert_eq!(whole[1].id.as_deref(), Some("a"));
        assert_eq!(whole[1].data.as_deref(), Some("{\"x\":1}"));
        assert_eq!(whole[2].event.as_deref(), Some("reset"));
        assert_eq!(whole[2].data.as_deref(), Some("one\ntwo"));
        assert_eq!(whole[3].data.as_deref(), Some("no-space"));
        for split in 1..wire.len() {
            let mut decoder = Decoder::default();
            let mut parts = decoder.feed(&wire[..split]);
            parts.extend(decoder.feed(&wire[split..]));
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_retries_are_ignored() {
        let messages = Decoder::default().feed(b"foo: bar\nretry: soon\n\ndata\n\n");
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].data.as_deref(), Some(""));
    }
}
