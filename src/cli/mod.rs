//! The command-line client: `tail`, `emit`, `history`, `keys` and `webhooks`, built on the SDK
//! (`cpod-sdk`) and speaking to a broker over HTTP like any other client.
//!
//! It reads `CPOD_BASE_URL` and `CPOD_API_KEY` (or `--base-url`, `--api-key`). A refused request
//! prints the broker's message and exits with 1; a bad command line exits with 2. Output is one
//! readable line per item (coloured on a terminal), or NDJSON with `--json`.

mod output;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use cpod_sdk::keys::NewKey;
use cpod_sdk::webhooks::NewWebhook;
use cpod_sdk::{
    CpodClient, EventFormat, Filter, HistoryQuery, NewEvent, Order, StreamItem, StreamOptions,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use output::Printer;

/// The client subcommands of `cpod-events`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Follow live events (reconnects by itself; Ctrl-C stops).
    Tail(TailArgs),
    /// Emit one event.
    Emit(EmitArgs),
    /// Read stored events, newest first.
    History(HistoryArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage webhook endpoints.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
}

/// Where the broker is, with which key, and how to print.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The broker's URL.
    #[arg(long, env = "CPOD_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// The API key (`cpk_…`).
    #[arg(long, env = "CPOD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// One JSON object per line (NDJSON) instead of readable lines.
    #[arg(long)]
    pub json: bool,
}

/// The filters shared by `tail` and `history`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Type patterns, comma-separated or repeated: `pod.*,*.failed`.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    #[arg(long)]
    pub resource_type: Option<String>,
    #[arg(long)]
    pub resource_id: Option<String>,
    #[arg(long)]
    pub workspace_id: Option<String>,
    /// Admin keys: the organization, or `*` for every one.
    #[arg(long)]
    pub organization_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Replay from this ISO 8601 time first.
    #[arg(long)]
    pub since: Option<String>,
    /// Replay every event after this one first (wins over --since).
    #[arg(long)]
    pub last_event_id: Option<String>,
    /// Use the WebSocket endpoint instead of Server-Sent Events.
    #[arg(long)]
    pub ws: bool,
    /// The format the broker streams in: `cpod` or `cloudevents` (with --json, each line is
    /// then a structured CloudEvent).
    #[arg(long, default_value = "cpod", value_parser = ["cpod", "cloudevents"])]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct EmitArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The event type, e.g. `custom.report.generated`.
    #[arg(value_name = "TYPE")]
    pub event_type: String,
    /// The resource as `<resourceType>/<resourceId>`, e.g. `report/r-9`.
    pub resource: String,
    /// The payload: a JSON object, or `-` to read it from stdin. Default `{}`.
    pub payload: Option<String>,
    #[arg(long)]
    pub workspace_id: Option<String>,
    /// Admin keys: the organization.
    #[arg(long)]
    pub organization_id: Option<String>,
    /// Store the event at most once for this key (24 hours).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Send the event as a structured CloudEvent (`application/cloudevents+json`) with a new
    /// random id; its source names --organization-id (and --workspace-id), or is `cpod-cli`
    /// (the key's own organization).
    #[arg(long)]
    pub cloudevent: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// ISO 8601: events at or after it.
    #[arg(long)]
    pub since: Option<String>,
    /// ISO 8601: events before it.
    #[arg(long)]
    pub until: Option<String>,
    /// Events per page, 1 to 1000 (default 50; 1000 with --all).
    #[arg(long)]
    pub limit: Option<u32>,
    /// `desc` (newest first) or `asc`.
    #[arg(long, default_value = "desc", value_parser = ["desc", "asc"])]
    pub order: String,
    /// Continue after a previous page.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow cursors to the end.
    #[arg(long)]
    pub all: bool,
    /// The format the broker answers in: `cpod` or `cloudevents` (with --json, each line is
    /// then a structured CloudEvent).
    #[arg(long, default_value = "cpod", value_parser = ["cpod", "cloudevents"])]
    pub format: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; its secret is printed this once.
    Create {
        #[command(flatten)]
        connection: Connection,
        /// `service`, `app` or `reader`.
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        /// Admin keys: the organization.
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// List active keys.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Admin keys: only this organization's.
        #[arg(long)]
        organization_id: Option<String>,
    },
    /// Revoke a key.
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List endpoints.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Create an endpoint; its secret is printed this once.
    Create {
        #[command(flatten)]
        connection: Connection,
        url: String,
        /// Type patterns, comma-separated (default every type).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
        #[arg(long)]
        resource_type: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Deliver structured CloudEvents (`--cloudevents`), or binary-mode ones with
        /// `--content-mode binary`.
        #[arg(long)]
        cloudevents: bool,
        /// With --cloudevents: `structured` (the default) or `binary`.
        #[arg(long, requires = "cloudevents", value_parser = ["structured", "binary"])]
        content_mode: Option<String>,
    },
    /// Delete an endpoint.
    Delete {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// Send a signed test event now.
    Test {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// An endpoint's deliveries, newest first.
    Deliveries {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// `pending`, `succeeded` or `failed`.
        #[arg(long, value_parser = ["pending", "succeeded", "failed"])]
        status: Option<String>,
        /// Continue after a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// Why a client command failed, and its exit code.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Sdk(#[from] cpod_sdk::Error),
    #[error("{0}")]
    Usage(String),
    /// The broker did what was asked and the outcome is a failure (a test delivery).
    #[error("{0}")]
    Failed(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs a client command; prints what went wrong and answers the exit code.
pub async fn run(command: ClientCommand) -> ExitCode {
    match execute(command).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): not an error.
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cpod-events: {}", output::clean(&describe(&error)));
            match error {
                CliError::Usage(_) | CliError::Sdk(cpod_sdk::Error::Config(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// `error` and, after it, each cause in its chain that its own message does not already show
/// ("cannot reach the broker: error sending request …: client error (Connect): tcp connect
/// error: Connection refused (os error 111)"), as the SDK describes its own errors.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    cpod_sdk::error::with_causes(error)
}

fn client(connection: &Connection) -> Result<CpodClient, CliError> {
    let key = connection
        .api_key
        .as_deref()
        .ok_or_else(|| CliError::Usage("no API key: set CPOD_API_KEY or pass --api-key".into()))?;
    Ok(CpodClient::new(&connection.base_url, key)?)
}

async fn execute(command: ClientCommand) -> Result<(), CliError> {
    match command {
        ClientCommand::Tail(args) => tail(args).await,
        ClientCommand::Emit(args) => emit(args).await,
        ClientCommand::History(args) => history(args).await,
        ClientCommand::Keys(command) => keys(command).await,
        ClientCommand::Webhooks(command) => webhooks(command).await,
    }
}

fn filter_of(args: &FilterArgs) -> Filter {
    Filter {
        organization_id: args.organization_id.clone(),
        types: args.types.clone(),
        resource_type: args.resource_type.clone(),
        resource_id: args.resource_id.clone(),
        workspace_id: args.workspace_id.clone(),
    }
}

async fn tail(args: TailArgs) -> Result<(), CliError> {
    let client = client(&args.connection)?;
    let printer = Printer::new(args.connection.json);
    let mut options = StreamOptions::new();
    if let Some(id) = &args.last_event_id {
        options = options.last_event_id(id);
    }
    if let Some(since) = &args.since {
        options = options.since(since);
    }
    let format = EventFormat::parse(&args.format).unwrap_or_default();
    options = options.format(format);
    let filter = filter_of(&args.filter);
    let mut stream = if args.ws {
        client.events().stream_ws_with(filter, options)
    } else {
        client.events().stream_with(filter, options)
    };
    let stop = CancellationToken::new();
    tokio::spawn(crate::shutdown::cancel_on_signal(Arc::new(stop.clone())));
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            item = stream.next() => item,
        };
        match item {
            None => return Ok(()),
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(StreamItem::Event(event))) => printer.event_in(&event, format)?,
            Some(Ok(StreamItem::Reset {
                reason,
                last_event_id,
            })) => eprintln!(
                "cpod-events: cannot resume after {} ({}); following live events from here",
                output::clean(last_event_id.as_deref().unwrap_or("the given event")),
                output::clean(&reason)
            ),
            Some(Ok(StreamItem::Reconnecting { delay, error, .. })) => eprintln!(
                "cpod-events: {}; reconnecting in {:.1} s",
                output::clean(&error),
                delay.as_secs_f64()
            ),
            Some(Ok(_)) => {}
        }
    }
}

async fn emit(args: EmitArgs) -> Result<(), CliError> {
    let client = client(&args.connection)?;
    let (resource_type, resource_id) = args.resource.split_once('/').ok_or_else(|| {
        CliError::Usage(format!(
            "the resource is `<resourceType>/<resourceId>`, e.g. report/r-9, not `{}`",
            args.resource
        ))
    })?;
    let mut event = NewEvent::new(&args.event_type, resource_type, resource_id);
    let raw_payload = match args.payload.as_deref() {
        None => None,
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("cannot read the payload from stdin: {e}")))?;
            Some(text)
        }
        Some(text) => Some(text.to_owned()),
    };
    if let Some(raw) = raw_payload {
        let payload = serde_json::from_str(raw.trim())
            .map_err(|e| CliError::Usage(format!("the payload is not JSON: {e}")))?;
        event = event.payload(payload);
    }
    if let Some(workspace) = args.workspace_id {
        event = event.workspace_id(workspace);
    }
    if let Some(org) = args.organization_id {
        event = event.organization_id(org);
    }
    let printer = Printer::new(args.connection.json);
    if args.cloudevent {
        let emitted = client
            .events()
            .emit_cloudevent(&cloudevent_of(&event)?, args.idempotency_key.as_deref())
            .await?;
        if emitted.replayed {
            eprintln!("cpod-events: already stored (a repeat); nothing new stored");
        }
        printer.event_in(&emitted.event, EventFormat::CloudEvents)?;
        return Ok(());
    }
    match &args.idempotency_key {
        None => printer.event(&client.events().emit(&event).await?)?,
        Some(key) => {
            let emitted = client.events().emit_idempotent(&event, key).await?;
            if emitted.replayed {
                eprintln!(
                    "cpod-events: already stored with this idempotency key; nothing new stored"
                );
            }
            printer.event(&emitted.event)?;
        }
    }
    Ok(())
}

/// The CloudEvent `emit --cloudevent` sends for `event`: a new random id; the source names the
/// organization (and workspace) when given, else `cpod-cli` stands for the key's own.
fn cloudevent_of(event: &NewEvent) -> Result<cloudevents::Event, CliError> {
    use cloudevents::{EventBuilder, EventBuilderV10};
    let source = match (&event.organization_id, &event.workspace_id) {
        (Some(org), workspace) => cpod_proto::cloudevents::source_of(org, workspace.as_deref()),
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--cloudevent with --workspace-id needs --organization-id: the source names both"
                    .into(),
            ));
        }
        (None, None) => "cpod-cli".to_owned(),
    };
    EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .source(source)
        .ty(event.event_type.as_str())
        .subject(cpod_proto::cloudevents::subject_of(
            &event.resource_type,
            &event.resource_id,
        ))
        .data(
            cpod_proto::cloudevents::DATA_CONTENT_TYPE,
            event
                .payload
                .clone()
                .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        )
        .build()
        .map_err(|e| CliError::Usage(format!("not a CloudEvent: {e}")))
}

async fn history(args: HistoryArgs) -> Result<(), CliError> {
    let client = client(&args.connection)?;
    let printer = Printer::new(args.connection.json);
    let filter = filter_of(&args.filter);
    let query = HistoryQuery {
        organization_id: filter.organization_id,
        types: filter.types,
        resource_type: filter.resource_type,
        resource_id: filter.resource_id,
        workspace_id: filter.workspace_id,
        since: args.since,
        until: args.until,
        limit: args.limit,
        order: Some(if args.order == "asc" {
            Order::Asc
        } else {
            Order::Desc
        }),
        cursor: args.cursor,
        format: None,
    };
    let format = EventFormat::parse(&args.format).unwrap_or_default();
    if format == EventFormat::CloudEvents {
        return history_cloudevents(&client, &printer, query, args.all).await;
    }
    printer.event_header()?;
    if args.all {
        let mut events = std::pin::pin!(client.events().history(query));
        while let Some(event) = events.next().await {
            printer.event(&event?)?;
        }
        return Ok(());
    }
    let page = client.events().get_history(&query).await?;
    for event in &page.data {
        printer.event(event)?;
    }
    if let Some(cursor) = page.next_cursor.filter(|_| page.has_more) {
        eprintln!("cpod-events: more events: --cursor {cursor} (or --all)");
    }
    Ok(())
}

/// `history --format cloudevents`: pages of CloudEvents as the broker wrote them, each read back
/// into its event for the readable lines (with --json, printed as they came).
async fn history_cloudevents(
    client: &CpodClient,
    printer: &Printer,
    query: HistoryQuery,
    all: bool,
) -> Result<(), CliError> {
    let mut query = query;
    if all {
        query.limit.get_or_insert(1000);
    }
    printer.event_header()?;
    loop {
        let page = client.events().get_history_cloudevents(&query).await?;
        for cloudevent in &page.data {
            printer.cloudevent(cloudevent)?;
        }
        match page.next_cursor.filter(|_| page.has_more) {
            Some(cursor) if all => query = query.cursor(cursor),
            Some(cursor) => {
                eprintln!("cpod-events: more events: --cursor {cursor} (or --all)");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

async fn keys(command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Create {
            connection,
            role,
            name,
            organization_id,
        } => {
            let mut new = NewKey::new(role, name);
            new.organization_id = organization_id;
            let created = client(&connection)?.keys().create(&new).await?;
            Printer::new(connection.json).created_key(&created)?;
        }
        KeysCommand::List {
            connection,
            organization_id,
        } => {
            let keys = client(&connection)?
                .keys()
                .list(organization_id.as_deref())
                .await?;
            let printer = Printer::new(connection.json);
            for key in &keys {
                printer.key(key)?;
            }
        }
        KeysCommand::Revoke { connection, id } => {
            let revoked = client(&connection)?.keys().revoke(&id).await?;
            Printer::new(connection.json).key(&revoked)?;
        }
    }
    Ok(())
}

async fn webhooks(command: WebhooksCommand) -> Result<(), CliError> {
    match command {
        WebhooksCommand::List { connection } => {
            let printer = Printer::new(connection.json);
            for webhook in client(&connection)?.webhooks().list().await? {
                printer.webhook(&webhook)?;
            }
        }
        WebhooksCommand::Create {
            connection,
            url,
            types,
            resource_type,
            description,
            cloudevents,
            content_mode,
        } => {
            let mut new = NewWebhook {
                url,
                types: (!types.is_empty()).then_some(types),
                resource_type,
                description,
                ..NewWebhook::default()
            };
            if cloudevents {
                let mode = content_mode
                    .as_deref()
                    .and_then(cpod_sdk::webhooks::ContentMode::parse)
                    .unwrap_or_default();
                new = new.cloudevents(mode);
            }
            let created = client(&connection)?.webhooks().create(&new).await?;
            Printer::new(connection.json).created_webhook(&created)?;
        }
        WebhooksCommand::Delete { connection, id } => {
            client(&connection)?.webhooks().delete(&id).await?;
            Printer::new(connection.json).deleted(&id)?;
        }
        WebhooksCommand::Test { connection, id } => {
            let result = client(&connection)?.webhooks().test(&id).await?;
            Printer::new(connection.json).test_result(&result)?;
            if !result.success {
                return Err(CliError::Failed(format!(
                    "the test delivery failed: {}",
                    result
                        .error
                        .or(result.response_status.map(|s| format!("HTTP {s}")))
                        .unwrap_or_else(|| "no answer".into())
                )));
            }
        }
        WebhooksCommand::Deliveries {
            connection,
            id,
            status,
            cursor,
        } => {
            let page = client(&connection)?
                .webhooks()
                .deliveries(&id, status.as_deref(), cursor.as_deref())
                .await?;
            let printer = Printer::new(connection.json);
            for delivery in &page.data {
                printer.delivery(delivery)?;
            }
            if let Some(cursor) = page.next_cursor.filter(|_| page.has_more) {
                eprintln!("cpod-events: more deliveries: --cursor {cursor}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_is_described_down_to_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = CpodClient::new(&format!("http://127.0.0.1:{port}"), "cpk_x").unwrap();
        let error = CliError::from(client.events().get("e1").await.unwrap_err());
        let text = describe(&error);
        assert!(text.starts_with("cannot reach the broker: "), "{text}");
        // The reason, not only "error sending request".
        assert!(text.to_lowercase().contains("connection refused"), "{text}");
        // Each cause once.
        let first = error.to_string();
        assert_eq!(text.matches(first.as_str()).count(), 1, "{text}");
    }

    #[test]
    fn an_error_without_causes_is_its_message() {
        let error = CliError::Usage("no API key".into());
        assert_eq!(describe(&error), "no API key");
    }
}
