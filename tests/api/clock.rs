//! Event ids and timestamps against a wall clock that goes back: across a restart with the
//! clock a day behind, and a jump back while running. The broker runs under Debian's
//! libfaketime (`LD_PRELOAD`), which moves only its clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use tempfile::TempDir;

use crate::helpers::{ADMIN_KEY, BrokerProcess, custom, eventually, json_of};

/// libfaketime's library, wherever Debian put it for this architecture.
fn libfaketime() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("faketime").join("libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|path| path.exists())
}

/// The broker's wall clock as it says in its `Date` header, in seconds behind the real one.
async fn seconds_behind(broker: &BrokerProcess) -> i64 {
    let response = reqwest::get(broker.url("/healthz")).await.unwrap();
    let date = response.headers()["date"].to_str().unwrap().to_owned();
    let theirs = DateTime::parse_from_rfc2822(&date.replace("GMT", "+0000"))
        .unwrap_or_else(|e| panic!("Date {date}: {e}"));
    Utc::now().timestamp() - theirs.timestamp()
}

async fn emit(broker: &BrokerProcess, key: &str, count: usize, tag: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let response = client
            .post(broker.url("/v1/events"))
            .bearer_auth(key)
            .json(&custom(&format!("{tag}-{i}")))
            .send()
            .await
            .unwrap();
        let event = json_of(response, StatusCode::CREATED).await;
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    ids
}

fn start_faked(dir: &Path, library: &Path, clock_file: &Path) -> BrokerProcess {
    BrokerProcess::start(
        dir,
        &[
            ("CPOD_ADMIN_KEY", ADMIN_KEY),
            ("LD_PRELOAD", library.to_str().unwrap()),
            ("FAKETIME_TIMESTAMP_FILE", clock_file.to_str().unwrap()),
            // Re-read the file every second, so the test can move the clock while it runs.
            ("FAKETIME_CACHE_DURATION", "1"),
            // Only the wall clock goes back, as when an operator or NTP steps it; timers and
            // timeouts run on the monotonic clock, which never does.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

#[tokio::test]
async fn ids_and_timestamps_never_go_back_across_a_restart_and_a_jump_with_the_clock_behind() {
    let Some(library) = libfaketime() else {
        eprintln!(
            "SKIPPED: libfaketime is not installed (Debian: apt-get install faketime libfaketime)"
        );
        return;
    };
    let dir = TempDir::new().unwrap();
    let clock_file = dir.path().join("faketime.rc");
    let mut acknowledged = Vec::new();

    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    let service = broker.key(ADMIN_KEY, "service").await;
    acknowledged.extend(emit(&broker, &service, 20, "real").await);
    drop(broker);

    // A restart with the clock a day behind.
    std::fs::write(&clock_file, "-1d\n").unwrap();
    let broker = start_faked(dir.path(), &library, &clock_file);
    let behind = seconds_behind(&broker).await;
    assert!(
        (86_300..86_500).contains(&behind),
        "the broker's clock is {behind} s behind, not a day: libfaketime is not in effect"
    );
    acknowledged.extend(emit(&broker, &service, 20, "day-behind").await);

    // A jump back by one more day while it runs.
    std::fs::write(&clock_file, "-2d\n").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            seconds_behind(&broker).await > 2 * 86_400 - 100
        })
        .await,
        "the broker's clock did not jump"
    );
    acknowledged.extend(emit(&broker, &service, 20, "two-days-behind").await);
    drop(broker);

    // And back to the real clock: two days forward.
    let broker = BrokerProcess::start(dir.path(), &[("CPOD_ADMIN_KEY", ADMIN_KEY)]);
    acknowledged.extend(emit(&broker, &service, 10, "real-again").await);

    let page = json_of(
        reqwest::Client::new()
            .get(broker.url("/v1/events?order=asc&limit=1000&types=custom.*"))
            .bearer_auth(&service)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let stored = page["data"].as_array().unwrap();
    let ids: Vec<uuid::Uuid> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let timestamps: Vec<DateTime<Utc>> = stored
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        stored
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        acknowledged,
        "history in store order is not the order the events were acknowledged in"
    );
    for (i, pair) in ids.windows(2).enumerate() {
        assert!(
            pair[0] < pair[1],
            "id {} at position {} is not greater than {} before it",
            pair[1],
            i + 1,
            pair[0]
        );
    }
    for (i, pair) in timestamps.windows(2).enumerate() {
        assert!(
            pair[0] <= pair[1],
            "timestamp {} at position {} is before {} before it",
            pair[1],
            i + 1,
            pair[0]
        );
    }
    // While the clock was behind, events kept the last timestamp given (clamped); with the
    // real clock back, time moves on.
    assert!(timestamps[20..60].iter().all(|t| *t == timestamps[19]));
    assert!(timestamps[60] > timestamps[19]);
}
