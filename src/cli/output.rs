//! How the client prints: one readable line per item (coloured when stdout is a terminal and
//! `NO_COLOR` is unset), or the item's JSON on one line (`--json`, NDJSON).
//!
//! Text that comes from the broker (names, URLs, descriptions, reasons, payloads) is printed
//! through [`clean`]: a control character in it is shown escaped, never sent to the terminal,
//! where it could rewrite the screen, the title or the clipboard.

use std::borrow::Cow;
use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use cpod_sdk::keys::{CreatedKey, KeyInfo};
use cpod_sdk::webhooks::{CreatedWebhook, Delivery, TestResult, Webhook};
use cpod_sdk::{Event, EventFormat};
use serde::Serialize;

/// A payload longer than this is cut in readable lines (never in `--json`).
const MAX_PAYLOAD_CHARS: usize = 160;
/// Column widths of event lines: time, type, resource, workspace (longer values overflow).
const WIDTHS: [usize; 4] = [24, 24, 28, 12];

/// `text` padded with spaces to `width` characters, cleaned.
fn pad(text: &str, width: usize) -> String {
    let text = clean(text);
    format!("{text:<width$}")
}

/// Whether `c` must not reach a terminal as it is: C0 and C1 controls and DEL (escape sequences,
/// bells, carriage returns), and the bidirectional overrides that make text read otherwise
/// than it is.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every unsafe character escaped as Rust does (`\u{1b}`, `\n`), and its
/// backslashes kept as they are.
pub fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// An optional value, cleaned, or `default`.
fn clean_or<'a>(value: Option<&'a str>, default: &'a str) -> Cow<'a, str> {
    clean(value.unwrap_or(default))
}

pub struct Printer {
    json: bool,
    color: bool,
    /// Tests read the lines here instead of stdout.
    captured: Option<std::cell::RefCell<String>>,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        let color = !json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self {
            json,
            color,
            captured: None,
        }
    }

    /// A printer whose lines (readable, coloured as on a terminal) are kept for [`Printer::captured`].
    #[cfg(test)]
    fn capturing() -> Self {
        Self {
            json: false,
            color: true,
            captured: Some(Default::default()),
        }
    }

    #[cfg(test)]
    fn captured(&self) -> String {
        self.captured
            .as_ref()
            .expect("a capturing printer")
            .borrow()
            .clone()
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    fn line(&self, text: &str) -> std::io::Result<()> {
        if let Some(captured) = &self.captured {
            let mut captured = captured.borrow_mut();
            captured.push_str(text);
            captured.push('\n');
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    fn json_line(&self, value: &impl Serialize) -> std::io::Result<()> {
        self.line(&serde_json::to_string(value).expect("client types serialize"))
    }

    /// `2026-05-01T12:00:00.123Z  pod.failed  pod/pod-7f9c  ws-42  {"exitCode":137}`, in
    /// fixed-width columns so that consecutive lines form a table.
    pub fn event(&self, event: &Event) -> std::io::Result<()> {
        if self.json {
            return self.json_line(event);
        }
        let mut payload =
            clean(&serde_json::to_string(&event.payload).expect("JSON serializes")).into_owned();
        if payload.chars().count() > MAX_PAYLOAD_CHARS {
            payload = payload
                .chars()
                .take(MAX_PAYLOAD_CHARS - 1)
                .collect::<String>()
                + "…";
        }
        let dim = Style::new().dimmed();
        let resource = format!("{}/{}", event.resource_type, event.resource_id);
        let workspace = event.workspace_id.as_deref().unwrap_or("-");
        self.line(&format!(
            "{}  {}  {}  {}  {}",
            self.paint(dim, &pad(&event.timestamp, WIDTHS[0])),
            self.paint(
                type_style(&event.event_type),
                &pad(&event.event_type, WIDTHS[1])
            ),
            self.paint(Style::new().bold(), &pad(&resource, WIDTHS[2])),
            self.paint(dim, &pad(workspace, WIDTHS[3])),
            payload,
        ))
    }

    /// The column names above [`Printer::event`] lines (not in `--json`).
    /// An event that travelled in `format`: with `--json` and CloudEvents, its structured
    /// CloudEvent (the one mapping of `cpod_proto::cloudevents`); otherwise as [`Printer::event`].
    pub fn event_in(&self, event: &Event, format: EventFormat) -> std::io::Result<()> {
        match format {
            EventFormat::CloudEvents if self.json => {
                self.json_line(&cpod_proto::cloudevents::to_structured_json(event))
            }
            _ => self.event(event),
        }
    }

    /// A CloudEvent from the broker: with `--json` as it came; otherwise the readable line of
    /// the event it maps back to.
    pub fn cloudevent(&self, cloudevent: &cloudevents::Event) -> std::io::Result<()> {
        if self.json {
            return self.json_line(cloudevent);
        }
        match cpod_proto::cloudevents::from_cloudevent(cloudevent) {
            Ok(event) => self.event(&event),
            Err(e) => self.line(&format!("(a CloudEvent that is not a cPod event: {e})")),
        }
    }

    pub fn event_header(&self) -> std::io::Result<()> {
        if self.json {
            return Ok(());
        }
        let names = ["TIME", "TYPE", "RESOURCE", "WORKSPACE"];
        let header: Vec<String> = names.iter().zip(WIDTHS).map(|(n, w)| pad(n, w)).collect();
        self.line(&self.paint(
            Style::new().bold().underline(),
            &format!("{}  PAYLOAD", header.join("  ")),
        ))
    }

    pub fn key(&self, key: &KeyInfo) -> std::io::Result<()> {
        if self.json {
            return self.json_line(key);
        }
        self.line(&format!(
            "{}  {:<8}  {:<20}  {}  {}{}",
            clean(&key.id),
            clean(&key.role),
            clean_or(key.organization_id.as_deref(), "*"),
            self.paint(Style::new().bold(), &clean(&key.name)),
            self.paint(Style::new().dimmed(), &clean(&key.created_at)),
            key.revoked_at
                .as_deref()
                .map(|t| format!("  revoked {}", clean(t)))
                .unwrap_or_default(),
        ))
    }

    pub fn created_key(&self, created: &CreatedKey) -> std::io::Result<()> {
        if self.json {
            return self.json_line(created);
        }
        self.key(&created.info)?;
        self.line(&format!(
            "key (shown only this once): {}",
            self.paint(Style::new().bold(), &clean(&created.key))
        ))
    }

    pub fn webhook(&self, webhook: &Webhook) -> std::io::Result<()> {
        if self.json {
            return self.json_line(webhook);
        }
        let state = if webhook.enabled {
            self.paint(AnsiColor::Green.on_default(), "enabled")
        } else {
            self.paint(
                AnsiColor::Red.on_default(),
                &format!(
                    "disabled ({})",
                    clean_or(webhook.disabled_reason.as_deref(), "by request")
                ),
            )
        };
        self.line(&format!(
            "{}  {}  types {}{}  {}{}",
            clean(&webhook.id),
            self.paint(Style::new().bold(), &clean(&webhook.url)),
            clean(&webhook.types.join(",")),
            webhook
                .resource_type
                .as_deref()
                .map(|r| format!("  resourceType {}", clean(r)))
                .unwrap_or_default(),
            state,
            webhook
                .description
                .as_deref()
                .map(|d| format!("  {}", clean(d)))
                .unwrap_or_default(),
        ))
    }

    pub fn created_webhook(&self, created: &CreatedWebhook) -> std::io::Result<()> {
        if self.json {
            return self.json_line(created);
        }
        self.webhook(&created.webhook)?;
        self.line(&format!(
            "secret (shown only this once): {}",
            self.paint(Style::new().bold(), &clean(&created.secret))
        ))
    }

    pub fn deleted(&self, id: &str) -> std::io::Result<()> {
        if self.json {
            return self.json_line(&serde_json::json!({"id": id, "deleted": true}));
        }
        self.line(&format!("deleted {}", clean(id)))
    }

    pub fn test_result(&self, result: &TestResult) -> std::io::Result<()> {
        if self.json {
            return self.json_line(result);
        }
        let outcome = if result.success {
            self.paint(AnsiColor::Green.on_default(), "success")
        } else {
            self.paint(AnsiColor::Red.on_default(), "failure")
        };
        self.line(&format!(
            "{outcome}  status {}  {} ms{}",
            result
                .response_status
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            result.duration_ms,
            result
                .error
                .as_deref()
                .map(|e| format!("  {}", clean(e)))
                .unwrap_or_default(),
        ))
    }

    pub fn delivery(&self, delivery: &Delivery) -> std::io::Result<()> {
        if self.json {
            return self.json_line(delivery);
        }
        let status_style = match delivery.status.as_str() {
            "succeeded" => AnsiColor::Green.on_default(),
            "failed" => AnsiColor::Red.on_default(),
            _ => AnsiColor::Yellow.on_default(),
        };
        let last = delivery.attempts.last().map(|a| {
            format!(
                "  last attempt #{} at {}: {}",
                a.attempt,
                clean(&a.attempted_at),
                a.error.as_deref().map_or_else(
                    || a.response_status
                        .map_or_else(|| "-".to_owned(), |s| format!("HTTP {s}")),
                    |e| clean(e).into_owned()
                )
            )
        });
        self.line(&format!(
            "{}  {:<9}  {:<24}  event {}  {} attempts{}{}",
            clean(&delivery.id),
            self.paint(status_style, &clean(&delivery.status)),
            clean(&delivery.event_type),
            clean(&delivery.event_id),
            delivery.attempts.len(),
            last.unwrap_or_default(),
            delivery
                .next_attempt_at
                .as_deref()
                .map(|t| format!("  next {}", clean(t)))
                .unwrap_or_default(),
        ))
    }
}

/// Red for failures, green for births and successes, yellow for endings, cyan otherwise.
fn type_style(event_type: &str) -> Style {
    let verb = event_type.rsplit('.').next().unwrap_or("");
    let color = match verb {
        "failed" => AnsiColor::Red,
        "created" | "started" | "completed" => AnsiColor::Green,
        "stopped" | "deleted" | "revoked" => AnsiColor::Yellow,
        _ => AnsiColor::Cyan,
    };
    color.on_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an attacker may put in a name: an OSC 52 clipboard write, a screen clear, a bell,
    /// a carriage return that hides what came before, C1 CSI, and a right-to-left override.
    const HOSTILE: &str = "ok\u{1b}]52;c;cm0gLXJmIH4=\u{7}\u{1b}[2J\r\u{9b}31m\u{202e}gpj.exe";

    fn assert_inert(text: &str) {
        // The only escapes left are the printer's own colours: `ESC [ … m` with digits.
        let mut rest = text;
        while let Some(at) = rest.find('\u{1b}') {
            let tail = &rest[at + 1..];
            let end = tail.find('m').expect("a colour sequence ends in m");
            assert!(
                tail.starts_with('[')
                    && tail[1..end].chars().all(|c| c.is_ascii_digit() || c == ';'),
                "a foreign escape reached the terminal: {text:?}"
            );
            rest = &tail[end..];
        }
        for c in ['\u{7}', '\r', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(c), "{c:?} reached the terminal: {text:?}");
        }
    }

    #[test]
    fn clean_escapes_controls_and_keeps_everything_else() {
        assert!(matches!(clean("plain – ünïcødé 🚀"), Cow::Borrowed(_)));
        assert_eq!(
            clean(HOSTILE),
            "ok\\u{1b}]52;c;cm0gLXJmIH4=\\u{7}\\u{1b}[2J\\r\\u{9b}31m\\u{202e}gpj.exe"
        );
        assert_eq!(clean("a\nb\tc\u{7f}"), "a\\nb\\tc\\u{7f}");
    }

    #[test]
    fn broker_text_is_printed_inert_in_readable_lines() {
        let key: KeyInfo = serde_json::from_value(serde_json::json!({
            "id": "k1", "role": "service", "organizationId": HOSTILE, "name": HOSTILE,
            "prefix": "cpk_1234", "createdAt": "2026-05-01T12:00:00.000Z", "revokedAt": HOSTILE,
        }))
        .unwrap();
        let webhook: Webhook = serde_json::from_value(serde_json::json!({
            "id": "w1", "organizationId": "o", "url": format!("https://example.com/{HOSTILE}"),
            "types": [HOSTILE], "resourceType": HOSTILE, "description": HOSTILE,
            "enabled": false, "disabledReason": HOSTILE, "createdAt": "t",
        }))
        .unwrap();
        let event: Event = serde_json::from_value(serde_json::json!({
            "id": "e1", "type": "custom.a", "resourceId": HOSTILE, "resourceType": "t",
            "organizationId": "o", "workspaceId": HOSTILE, "payload": {"note": "\u{9b}31m"},
            "timestamp": "t",
        }))
        .unwrap();
        let delivery: Delivery = serde_json::from_value(serde_json::json!({
            "id": "d1", "eventId": "e1", "eventType": "custom.a", "status": "failed",
            "nextAttemptAt": HOSTILE, "createdAt": "t",
            "attempts": [{"attempt": 1, "responseStatus": null, "error": HOSTILE,
                "durationMs": 3, "attemptedAt": "t"}],
        }))
        .unwrap();
        let result: TestResult = serde_json::from_value(serde_json::json!({
            "success": false, "responseStatus": 500, "error": HOSTILE, "durationMs": 3,
        }))
        .unwrap();
        let printer = Printer::capturing();
        printer.key(&key).unwrap();
        printer.webhook(&webhook).unwrap();
        printer.event(&event).unwrap();
        printer.deleted(HOSTILE).unwrap();
        printer.delivery(&delivery).unwrap();
        printer.test_result(&result).unwrap();
        let text = printer.captured();
        assert_eq!(text.lines().count(), 6, "{text:?}");
        assert_inert(&text);
        assert!(text.contains("ok\\u{1b}]52;c;"), "{text:?}");
    }
}
