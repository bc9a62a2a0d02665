//! The command-line client run as a process against a real broker: `tail` receives what `emit`
//! posts and exits cleanly on SIGINT, `history --all` returns every event, keys and webhooks are
//! managed, and refusals print the broker's message with a non-zero exit code.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, custom, spawn_app, spawn_app_with};
use crate::receiver::Receiver;

/// `cpod-events <args>` with `CPOD_BASE_URL` and `CPOD_API_KEY` set (and nothing else).
pub fn cli(base_url: &str, key: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cpod-events"));
    command
        .env_clear()
        .env("CPOD_BASE_URL", base_url)
        .env("CPOD_API_KEY", key)
        .args(args);
    command
}

/// Runs a command to its end off the async threads (the broker under test shares them).
pub async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .unwrap()
}

pub fn stdout_json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn tail_prints_the_event_that_emit_posts_and_exits_cleanly_on_sigint() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let reader = app.key("org-a", "reader").await;
    // Resuming after a known event makes the tail's start independent of when it connects.
    let before = app.emit(&service, &custom("before")).await;
    let mut tail = cli(
        &app.address,
        &reader,
        &[
            "tail",
            "--json",
            "--types",
            "custom.*",
            "--last-event-id",
            before["id"].as_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let emitted = run(cli(
        &app.address,
        &service,
        &[
            "emit",
            "custom.cli.tested",
            "thing/t-1",
            r#"{"answer":42}"#,
            "--json",
        ],
    ))
    .await;
    assert!(emitted.status.success(), "{emitted:?}");
    let stored = &stdout_json_lines(&emitted)[0];
    assert_eq!(stored["payload"], json!({"answer": 42}));

    let line = tokio::task::spawn_blocking(move || {
        let line = lines_rx.recv_timeout(Duration::from_secs(30));
        (line, lines_rx)
    })
    .await
    .unwrap();
    let (line, lines_rx) = line;
    let received: Value = serde_json::from_str(&line.expect("tail prints within 30 s")).unwrap();
    assert_eq!(&received, stored);

    // SIGINT: the tail exits by itself, with success.
    let started = Instant::now();
    unsafe { libc::kill(tail.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(status) = tail.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "tail still runs 10 s after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(lines_rx.try_recv().is_err(), "one event, printed once");
}

#[tokio::test]
async fn emit_reads_the_payload_from_stdin_and_honours_an_idempotency_key() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let emit = |key: &str| {
        let mut command = cli(
            &app.address,
            &service,
            &[
                "emit",
                "pod.failed",
                "pod/pod-7f9c",
                "-",
                "--workspace-id",
                "ws-42",
                "--idempotency-key",
                key,
                "--json",
            ],
        );
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let send = |mut command: Command| async move {
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(br#"{"exitCode": 137, "reason": "OOMKilled"}"#)
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap()
    };
    let first = send(emit("oom-1")).await;
    assert!(first.status.success(), "{first:?}");
    let again = send(emit("oom-1")).await;
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already stored"));
    let (first, again) = (&stdout_json_lines(&first)[0], &stdout_json_lines(&again)[0]);
    assert_eq!(first, again);
    assert_eq!(first["payload"]["reason"], "OOMKilled");
    assert_eq!(first["workspaceId"], "ws-42");
    assert_eq!(app.history_all(&service, "types=pod.*").await.len(), 1);
}

#[tokio::test]
async fn history_all_follows_cursors_to_every_event() {
    let app = spawn_app().await;
    let service = app.key("org-a", "service").await;
    let body = json!({"events": (0..120).map(|i| custom(&format!("r{i}"))).collect::<Vec<_>>()});
    let response = app
        .post_json(&service, "/v1/events/batch", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);

    let output = run(cli(
        &app.address,
        &service,
        &[
            "history", "--all", "--limit", "7", "--types", "custom.*", "--json",
        ],
    ))
    .await;
    assert!(output.status.success(), "{output:?}");
    let printed = stdout_json_lines(&output);
    assert_eq!(printed, app.history_all(&service, "types=custom.*").await);
    assert_eq!(printed.len(), 120);

    // One page without --all, and a hint on stderr where the next one is.
    let output = run(cli(
        &app.address,
        &service,
        &["history", "--limit", "5", "--order", "asc"],
    ))
    .await;
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "a header and 5 events: {text}");
    assert!(
        lines[0].starts_with("TIME") && lines[0].contains("PAYLOAD"),
        "{text}"
    );
    // Oldest first: the service key's own credential.created, then the batch in order.
    assert!(lines[1].contains("credential.created"), "{text}");
    for (line, i) in lines[2..].iter().zip(0..) {
        assert!(line.contains(&format!("thing/r{i} ")), "{line}");
    }
    assert!(String::from_utf8_lossy(&output.stderr).contains("--cursor"));
}

#[tokio::test]
async fn refusals_print_the_brokers_message_and_exit_non_zero() {
    let app = spawn_app().await;
    let reader = app.key("org-a", "reader").await;
    let forbidden = run(cli(
        &app.address,
        &reader,
        &["emit", "custom.x.y", "thing/1"],
    ))
    .await;
    assert_eq!(forbidden.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&forbidden.stderr);
    assert!(stderr.contains("a reader key may not emit"), "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");

    let invalid = run(cli(
        &app.address,
        &reader,
        &["history", "--since", "yesterday"],
    ))
    .await;
    assert_eq!(invalid.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("since"));

    let wrong_key = run(cli(
        &app.address,
        "cpk_wrong_key_0123456789abcdefghijklmn",
        &["history"],
    ))
    .await;
    assert_eq!(wrong_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("unauthorized"));

    // Mistakes of the command line itself: exit code 2, nothing sent.
    let bad_resource = run(cli(
        &app.address,
        &reader,
        &["emit", "custom.x.y", "no-slash"],
    ))
    .await;
    assert_eq!(bad_resource.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_resource.stderr).contains("<resourceType>/<resourceId>"));
    let bad_payload = run(cli(
        &app.address,
        &reader,
        &["emit", "custom.x.y", "t/1", "{oops"],
    ))
    .await;
    assert_eq!(bad_payload.status.code(), Some(2));
    let mut no_key = cli(&app.address, "", &["history"]);
    no_key.env_remove("CPOD_API_KEY");
    let no_key = run(no_key).await;
    assert_eq!(no_key.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("CPOD_API_KEY"));

    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = run(cli(
        &format!("http://127.0.0.1:{port}"),
        &reader,
        &["history"],
    ))
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert!(stderr.contains("cannot reach the broker"), "{stderr}");
    // And why: the cause at the end of the error's chain.
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn keys_and_webhooks_are_managed_from_the_command_line() {
    let app = spawn_app_with(&["--webhook-allow-private", "true"]).await;
    let receiver = Receiver::start().await;
    let created = run(cli(
        &app.address,
        ADMIN_KEY,
        &[
            "keys",
            "create",
            "--role",
            "service",
            "--name",
            "ops",
            "--organization-id",
            "org-c",
            "--json",
        ],
    ))
    .await;
    assert!(created.status.success(), "{created:?}");
    let created = &stdout_json_lines(&created)[0];
    let service = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["organizationId"], "org-c");

    let listed = run(cli(&app.address, &service, &["keys", "list", "--json"])).await;
    assert_eq!(stdout_json_lines(&listed).len(), 1);

    let webhook = run(cli(
        &app.address,
        &service,
        &[
            "webhooks",
            "create",
            &format!("{}/hook", receiver.url),
            "--types",
            "custom.*,job.*",
            "--json",
        ],
    ))
    .await;
    assert!(webhook.status.success(), "{webhook:?}");
    let webhook = &stdout_json_lines(&webhook)[0];
    let id = webhook["id"].as_str().unwrap().to_owned();
    assert!(webhook["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(webhook["types"], json!(["custom.*", "job.*"]));

    let tested = run(cli(&app.address, &service, &["webhooks", "test", &id])).await;
    assert!(tested.status.success(), "{tested:?}");
    assert!(String::from_utf8_lossy(&tested.stdout).contains("success"));
    receiver.wait_for(1, Duration::from_secs(20)).await;

    app.emit(&service, &custom("hooked")).await;
    receiver.wait_for(2, Duration::from_secs(20)).await;
    let mut deliveries = Vec::new();
    for _ in 0..100 {
        let output = run(cli(
            &app.address,
            &service,
            &[
                "webhooks",
                "deliveries",
                &id,
                "--status",
                "succeeded",
                "--json",
            ],
        ))
        .await;
        deliveries = stdout_json_lines(&output);
        if !deliveries.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["eventType"], "custom.test.happened");

    let listed = run(cli(&app.address, &service, &["webhooks", "list"])).await;
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));
    let deleted = run(cli(&app.address, &service, &["webhooks", "delete", &id])).await;
    assert!(deleted.status.success());
    let missing = run(cli(&app.address, &service, &["webhooks", "delete", &id])).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not_found"));

    let revoked = run(cli(
        &app.address,
        ADMIN_KEY,
        &["keys", "revoke", created["id"].as_str().unwrap()],
    ))
    .await;
    assert!(revoked.status.success(), "{revoked:?}");
    let refused = run(cli(&app.address, &service, &["keys", "list"])).await;
    assert_eq!(refused.status.code(), Some(1));
}
