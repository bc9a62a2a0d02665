//! One connection of a live stream, whichever its protocol (SSE in [`stream`](crate::stream),
//! WebSocket in [`ws`](crate::ws)): what it reports, where it resumes, and the `since` of its
//! acceptance. The reconnecting stream above reads these; the protocols below produce them.

use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures_util::Stream;

use cpod_proto::cloudevents::{EventFormat, from_cloudevent};

use crate::error::{Error, Result};
use crate::model::Event;

/// An event's JSON as a stream carries it in `format`: cPod's event, or a structured CloudEvent
/// (read by the CloudEvents SDK, then mapped back to the event it was made from).
pub(crate) fn decode_event(json: &str, format: EventFormat) -> Result<Event> {
    let not_an_event = |e: &dyn std::fmt::Display| {
        Error::Protocol(format!("an event that is not an event ({e}): {json}"))
    };
    match format {
        EventFormat::Cpod => serde_json::from_str::<Event>(json).map_err(|e| not_an_event(&e)),
        EventFormat::CloudEvents => {
            let cloudevent: cloudevents::Event =
                serde_json::from_str(json).map_err(|e| not_an_event(&e))?;
            from_cloudevent(&cloudevent).map_err(|e| not_an_event(&e))
        }
    }
}

/// How far before its acceptance a stream that has yielded nothing yet resumes (`since`), for
/// the resolution of `Date` (whole seconds) and clocks that disagree a little.
///
/// ```
/// assert_eq!(cpod_sdk::stream::RESUME_MARGIN.as_secs(), 3);
/// ```
pub const RESUME_MARGIN: Duration = Duration::from_secs(3);

/// What one connection reports.
#[derive(Debug)]
pub(crate) enum Incoming {
    Event(Box<Event>),
    Reset {
        reason: String,
    },
    /// The broker's `retry:` hint.
    Retry(Duration),
    /// Anything else that shows the connection is alive (keep-alive, ping, acknowledgements).
    Alive,
}

/// One open connection's reports.
pub(crate) type Connection = Pin<Box<dyn Stream<Item = Result<Incoming>> + Send>>;

/// The `since` that covers everything stored after a connection was accepted: the broker's
/// `Date` header of its answer (the clock that stamps events), or else the local clock, less
/// [`RESUME_MARGIN`], as RFC 3339.
pub(crate) fn accepted_since(date: Option<&str>) -> String {
    let accepted = date
        .and_then(|d| httpdate::parse_http_date(d.trim()).ok())
        .unwrap_or_else(SystemTime::now);
    let since = accepted
        .checked_sub(RESUME_MARGIN)
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .max(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(since).to_string()
}

/// Where a (re)connection resumes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    pub last_event_id: Option<String>,
    pub since: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_point_is_the_brokers_date_less_the_margin() {
        assert_eq!(
            accepted_since(Some("Sat, 28 Nov 2026 23:17:48 GMT")),
            "2026-11-28T23:17:45.000Z"
        );
        // Without a (readable) Date: the local clock, less the margin.
        let before = SystemTime::now() - RESUME_MARGIN - Duration::from_millis(1);
        let local = accepted_since(Some("yesterday"));
        let parsed = humantime::parse_rfc3339(&local).unwrap();
        assert!(
            parsed >= before
                && parsed <= SystemTime::now() - RESUME_MARGIN + Duration::from_millis(1)
        );
        assert!(humantime::parse_rfc3339(&accepted_since(None)).is_ok());
    }
}
