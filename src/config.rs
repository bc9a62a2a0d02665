//! The command line and its `CPOD_*` environment variables: every setting has both, and a bad
//! value stops start-up with a message naming the setting.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::store::{PostgresUrl, SyncMode};

#[derive(Debug, Parser)]
#[command(
    name = "cpod-events",
    version,
    about = "cPod Events: a real-time event broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve` (also accepted without the subcommand).
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (the default).
    Serve(ServeConfig),
    /// The command-line client: tail, emit, history, keys, webhooks.
    #[command(flatten)]
    Client(crate::cli::ClientCommand),
}

impl Cli {
    /// The serve settings, whether or not `serve` was spelled out.
    pub fn into_serve(self) -> ServeConfig {
        match self.command {
            Some(Command::Serve(config)) => config,
            _ => self.serve,
        }
    }

    /// What to do: run the broker (also when no subcommand is given) or a client command.
    pub fn into_command(self) -> Command {
        match self.command {
            Some(command) => command,
            None => Command::Serve(self.serve),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CPOD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where events are stored: `sqlite://<path>` (one broker process), or
    /// `postgres://user@host:port/database` (also `postgresql://`, with `?sslmode=disable` or
    /// `prefer`) for any number of broker nodes sharing one PostgreSQL 14+ database.
    #[arg(
        long,
        env = "CPOD_DATABASE_URL",
        default_value = "sqlite://./data/cpod-events.db",
        value_parser = parse_database_url
    )]
    pub database_url: DatabaseUrl,

    /// The admin key (`cpk_` + at least 32 URL-safe characters). Unset on first start: one is
    /// generated and printed once.
    #[arg(long, env = "CPOD_ADMIN_KEY", hide_env_values = true, value_parser = parse_admin_key)]
    pub admin_key: Option<String>,

    /// How long events are kept, e.g. `90d`, `12h`, `30s`.
    #[arg(long, env = "CPOD_RETENTION", default_value = "90d", value_parser = parse_positive_duration)]
    pub retention: Duration,

    /// Interval of keep-alive comments (SSE) and pings (WebSocket) on idle streams.
    #[arg(long, env = "CPOD_HEARTBEAT", default_value = "15s", value_parser = parse_positive_duration)]
    pub heartbeat: Duration,

    /// Largest accepted event, as stored JSON, in bytes.
    #[arg(long, env = "CPOD_MAX_EVENT_BYTES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(256..))]
    pub max_event_bytes: u32,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CPOD_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_body_bytes: u32,

    /// How long a request body may take to arrive once its headers are in (408 beyond).
    #[arg(long, env = "CPOD_BODY_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub body_timeout: Duration,

    /// Memory, in bytes, that request bodies being read may hold together (503 beyond); one
    /// key may hold an eighth of it, or one largest body if that is more (429 beyond).
    #[arg(long, env = "CPOD_BODY_MEMORY", default_value_t = 256 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub body_memory: u64,

    /// This node's name in the cluster's registry (`cpod_cluster_nodes`), printed at start-up:
    /// up to 64 characters of `[A-Za-z0-9._:-]`. Unset: a new one is generated on each start.
    #[arg(long, env = "CPOD_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Requests per second per key (burst: one second's worth). Unset: no limit.
    #[arg(long, env = "CPOD_RATE_LIMIT")]
    pub rate_limit: Option<NonZeroU32>,

    /// Durability of a commit: `full` fsyncs every commit (survives power loss), `normal`
    /// survives a crash of the broker but not of the machine, `off` never fsyncs.
    #[arg(long, env = "CPOD_SQLITE_SYNC", value_enum, default_value = "full")]
    pub sqlite_sync: SqliteSync,

    /// Free space, in bytes, kept on the disk holding the SQLite database: below it the broker
    /// refuses writes (507 `storage_full`, `/readyz` 503) so that checkpoints always have room,
    /// and takes them again by itself once space is freed. 0 refuses writes only when the disk
    /// is full.
    #[arg(long, env = "CPOD_SQLITE_MIN_FREE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub sqlite_min_free_bytes: u64,

    /// Allow webhook URLs on private, loopback and other non-public addresses (local
    /// development and tests).
    #[arg(long, env = "CPOD_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,

    /// Delays before each webhook attempt, comma-separated; `0s,1s,2s` means three attempts.
    #[arg(
        long,
        env = "CPOD_WEBHOOK_RETRY_SCHEDULE",
        default_value = "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h",
        value_parser = parse_schedule
    )]
    pub webhook_retry_schedule: RetrySchedule,

    /// An endpoint with no success for this long is disabled when a delivery exhausts its
    /// retries.
    #[arg(long, env = "CPOD_WEBHOOK_DISABLE_AFTER", default_value = "5d", value_parser = parse_positive_duration)]
    pub webhook_disable_after: Duration,

    /// Webhook endpoints one organization may have (409 `conflict` beyond).
    #[arg(long, env = "CPOD_MAX_WEBHOOKS_PER_ORGANIZATION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_webhooks_per_organization: u32,

    /// HTTP worker threads (default: one per CPU).
    #[arg(long, env = "CPOD_WORKERS")]
    pub workers: Option<NonZeroU32>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "CPOD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// An OpenTelemetry collector's OTLP/HTTP base URL, e.g. `http://127.0.0.1:4318`: the
    /// broker's spans (ingest, commit, fan-out, webhook attempt) are exported to its
    /// `/v1/traces` (protobuf), in batches, flushed at shutdown. Unset: no exporter.
    #[arg(long, env = "CPOD_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<url::Url>,

    /// Demo mode: make a demo organization with keys (printed at start-up) and emit a steady
    /// stream of realistic platform activity into it.
    #[arg(long, env = "CPOD_DEMO")]
    pub demo: bool,

    /// Events per second emitted in demo mode (0.1 to 1000).
    #[arg(long, env = "CPOD_DEMO_RATE", default_value_t = 5.0, value_parser = parse_demo_rate)]
    pub demo_rate: f64,
}

fn parse_demo_rate(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(rate) if (0.1..=1000.0).contains(&rate) => Ok(rate),
        _ => Err("events per second, from 0.1 to 1000".into()),
    }
}

/// Exits on a command-line error; for a bad value, names the environment variable beside the
/// flag, since either may have carried it.
pub fn exit_explaining(error: clap::Error) -> ! {
    use clap::CommandFactory;
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) {
        let long = arg
            .trim_start_matches("--")
            .split([' ', '='])
            .next()
            .unwrap_or("");
        let env = Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
        if let Some(env) = env {
            eprintln!("cpod-events: bad setting {env} (--{long})");
        }
    }
    error.exit()
}

/// `CPOD_SQLITE_SYNC`'s values (see [`SyncMode`] for what each means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    Full,
    Normal,
    Off,
}

impl From<SqliteSync> for SyncMode {
    fn from(sync: SqliteSync) -> Self {
        match sync {
            SqliteSync::Full => SyncMode::Full,
            SqliteSync::Normal => SyncMode::Normal,
            SqliteSync::Off => SyncMode::Off,
        }
    }
}

/// The delays before each webhook attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

fn parse_schedule(raw: &str) -> Result<RetrySchedule, String> {
    let delays = raw
        .split(',')
        .map(|d| {
            let d = d.trim();
            if d == "0" {
                Ok(Duration::ZERO)
            } else {
                humantime::parse_duration(d).map_err(|e| format!("`{d}`: {e}"))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() || delays.len() > 50 {
        return Err("give 1 to 50 delays, e.g. 0s,5s,5m".into());
    }
    Ok(RetrySchedule(delays))
}

/// A parsed `CPOD_DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

fn parse_database_url(raw: &str) -> Result<DatabaseUrl, String> {
    if let Some(path) = raw.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("sqlite:// needs a file path, e.g. sqlite://./data/cpod-events.db".into());
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        return PostgresUrl::parse(raw).map(DatabaseUrl::Postgres);
    }
    Err("expected sqlite://<path> or postgres://user@host:port/database".into())
}

fn parse_admin_key(raw: &str) -> Result<String, String> {
    if crate::keys::is_well_formed(raw) {
        Ok(raw.to_owned())
    } else {
        Err("must be `cpk_` followed by at least 32 URL-safe characters [A-Za-z0-9_-]".into())
    }
}

fn parse_otlp_endpoint(raw: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL, e.g. http://127.0.0.1:4318".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "must be a base URL without query or fragment (`/v1/traces` is appended)".into(),
        );
    }
    Ok(url)
}

fn parse_node_id(raw: &str) -> Result<String, String> {
    let fits = |b: u8| b.is_ascii_alphanumeric() || b".-_:".contains(&b);
    if (1..=64).contains(&raw.len()) && raw.bytes().all(fits) {
        Ok(raw.to_owned())
    } else {
        Err("must be 1 to 64 characters of [A-Za-z0-9._:-]".into())
    }
}

/// A duration such as `90d`, `15s`, `1h 30m` (humantime), which must be more than zero.
pub fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(raw.trim()).map_err(|e| format!("{e} (e.g. 90d, 15s)"))?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeConfig, clap::Error> {
        let mut all = vec!["cpod-events"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(Cli::into_serve)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.retention, Duration::from_secs(90 * 86400));
        assert_eq!(config.heartbeat, Duration::from_secs(15));
        assert_eq!(config.max_event_bytes, 65_536);
        assert_eq!(config.sqlite_sync, SqliteSync::Full);
        assert_eq!(config.sqlite_min_free_bytes, 64 * 1024 * 1024);
        assert_eq!(config.webhook_retry_schedule.0.len(), 10);
        assert_eq!(config.webhook_retry_schedule.0[2], Duration::from_secs(300));
        assert!(!config.webhook_allow_private);
        assert_eq!(config.max_webhooks_per_organization, 100);
        assert_eq!(config.body_timeout, Duration::from_secs(30));
        assert_eq!(config.body_memory, 256 * 1024 * 1024);
        assert!(!config.demo);
        assert_eq!(config.demo_rate, 5.0);
        assert_eq!(config.otlp_endpoint, None);
        assert_eq!(
            config.database_url,
            DatabaseUrl::Sqlite("./data/cpod-events.db".into())
        );
    }

    #[test]
    fn serve_subcommand_takes_the_same_settings() {
        let config = parse(&["serve", "--retention", "30s", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(config.retention, Duration::from_secs(30));
        assert_eq!(config.listen.port(), 0);
    }

    #[test]
    fn demo_mode_is_a_serve_setting() {
        let config = parse(&["serve", "--demo", "--demo-rate", "20"]).unwrap();
        assert!(config.demo);
        assert_eq!(config.demo_rate, 20.0);
        assert!(parse(&["--demo"]).unwrap().demo);
    }

    #[test]
    fn client_commands_are_not_serve() {
        let cli = Cli::try_parse_from(["cpod-events", "tail", "--types", "pod.*"]).unwrap();
        assert!(matches!(cli.into_command(), Command::Client(_)));
        let cli = Cli::try_parse_from(["cpod-events"]).unwrap();
        assert!(matches!(cli.into_command(), Command::Serve(_)));
    }

    #[test]
    fn postgres_urls_are_accepted_with_the_usual_ssl_modes() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/cpod",
            "postgresql://user:secret@db.example.com/cpod?sslmode=disable",
            "postgres://user@localhost/cpod?sslmode=prefer&application_name=x",
        ] {
            let config = parse(&["--database-url", url]).unwrap();
            assert!(
                matches!(&config.database_url, DatabaseUrl::Postgres(u) if u.as_str() == url),
                "{url}"
            );
        }
        let DatabaseUrl::Postgres(url) = parse(&["--database-url", "postgres://u:hunter2@h/db"])
            .unwrap()
            .database_url
        else {
            panic!("a PostgreSQL URL");
        };
        assert!(!format!("{url:?}").contains("hunter2"));
        assert!(!url.redacted().contains("hunter2"));
        for bad in [
            "postgres://h/db?sslmode=sometimes",
            "postgres://h/db?sslmode=require",
            "postgresql://h/db?sslmode=verify-full",
            "postgres://h:notaport/db",
        ] {
            let message = parse(&["--database-url", bad]).unwrap_err().to_string();
            assert!(message.contains("--database-url"), "{bad}: {message}");
        }
    }

    #[test]
    fn the_otlp_endpoint_is_an_http_base_url() {
        let config = parse(&["--otlp-endpoint", "http://127.0.0.1:4318"]).unwrap();
        assert_eq!(
            config.otlp_endpoint.unwrap().as_str(),
            "http://127.0.0.1:4318/"
        );
        for bad in [
            "127.0.0.1:4318",
            "grpc://collector:4317",
            "http://h:4318/?x=1",
            "soon",
        ] {
            let message = parse(&["--otlp-endpoint", bad]).unwrap_err().to_string();
            assert!(message.contains("--otlp-endpoint"), "{bad}: {message}");
        }
    }

    #[test]
    fn bad_settings_are_named_in_the_error() {
        for (args, name) in [
            (&["--retention", "soon"][..], "--retention"),
            (&["--retention", "0s"][..], "--retention"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--database-url", "mysql://x"][..], "--database-url"),
            (&["--admin-key", "cpk_short"][..], "--admin-key"),
            (&["--max-event-bytes", "10"][..], "--max-event-bytes"),
            (
                &["--sqlite-min-free-bytes", "lots"][..],
                "--sqlite-min-free-bytes",
            ),
            (
                &["--webhook-retry-schedule", "0s,soon"][..],
                "--webhook-retry-schedule",
            ),
            (
                &["--webhook-allow-private", "maybe"][..],
                "--webhook-allow-private",
            ),
            (&["--demo-rate", "0"][..], "--demo-rate"),
            (&["--body-timeout", "0s"][..], "--body-timeout"),
            (&["--body-memory", "lots"][..], "--body-memory"),
            (
                &["--max-webhooks-per-organization", "0"][..],
                "--max-webhooks-per-organization",
            ),
            (&["serve", "--demo-rate", "fast"][..], "--demo-rate"),
        ] {
            let message = parse(args).unwrap_err().to_string();
            assert!(message.contains(name), "{args:?}: {message}");
        }
    }
}
