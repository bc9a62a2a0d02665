//! How the client prints: one readable line per item (coloured when stdout is a terminal and
//! `NO_COLOR` is unset), or the item's JSON on one line (`--json`, NDJSON).

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use cpod_sdk::Event;
use cpod_sdk::keys::{CreatedKey, KeyInfo};
use cpod_sdk::webhooks::{CreatedWebhook, Delivery, TestResult, Webhook};
use serde::Serialize;

/// A payload longer than this is cut in readable lines (never in `--json`).
const MAX_PAYLOAD_CHARS: usize = 160;
/// Column widths of event lines: time, type, resource, workspace (longer values overflow).
const WIDTHS: [usize; 4] = [24, 24, 28, 12];

/// `text` padded with spaces to `width` characters.
fn pad(text: &str, width: usize) -> String {
    format!("{text:<width$}")
}

pub struct Printer {
    json: bool,
    color: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        let color = !json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { json, color }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    fn line(&self, text: &str) -> std::io::Result<()> {
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
        let mut payload = serde_json::to_string(&event.payload).expect("JSON serializes");
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
            key.id,
            key.role,
            key.organization_id.as_deref().unwrap_or("*"),
            self.paint(Style::new().bold(), &key.name),
            self.paint(Style::new().dimmed(), &key.created_at),
            key.revoked_at
                .as_deref()
                .map(|t| format!("  revoked {t}"))
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
            self.paint(Style::new().bold(), &created.key)
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
                    webhook.disabled_reason.as_deref().unwrap_or("by request")
                ),
            )
        };
        self.line(&format!(
            "{}  {}  types {}{}  {}{}",
            webhook.id,
            self.paint(Style::new().bold(), &webhook.url),
            webhook.types.join(","),
            webhook
                .resource_type
                .as_deref()
                .map(|r| format!("  resourceType {r}"))
                .unwrap_or_default(),
            state,
            webhook
                .description
                .as_deref()
                .map(|d| format!("  {d}"))
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
            self.paint(Style::new().bold(), &created.secret)
        ))
    }

    pub fn deleted(&self, id: &str) -> std::io::Result<()> {
        if self.json {
            return self.json_line(&serde_json::json!({"id": id, "deleted": true}));
        }
        self.line(&format!("deleted {id}"))
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
                .map(|e| format!("  {e}"))
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
                a.attempted_at,
                a.error.clone().unwrap_or_else(|| a
                    .response_status
                    .map_or_else(|| "-".to_owned(), |s| format!("HTTP {s}")))
            )
        });
        self.line(&format!(
            "{}  {:<9}  {:<24}  event {}  {} attempts{}{}",
            delivery.id,
            self.paint(status_style, &delivery.status),
            delivery.event_type,
            delivery.event_id,
            delivery.attempts.len(),
            last.unwrap_or_default(),
            delivery
                .next_attempt_at
                .as_deref()
                .map(|t| format!("  next {t}"))
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
