//! A full disk under write pressure: the broker (a separate process) keeps its database on a
//! small tmpfs, writers fill it back to back, another file takes the last bytes; writes must
//! answer 507 `storage_full`, `/readyz` 503, reads go on, and once space is freed the broker
//! recovers by itself with every acknowledged event readable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{ADMIN_KEY, BrokerProcess, eventually, json_of};

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount` takes it: `48m`), or says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process being torn down): detach it now, freed when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes zeros to `path` until `bytes` are written or the disk is full; answers how many.
fn fill(path: &Path, bytes: Option<usize>) -> usize {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while bytes.is_none_or(|b| written < b) {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n,
        }
    }
    let _ = file.sync_all();
    written
}

/// What the writers saw.
#[derive(Default)]
struct Tally {
    acknowledged: Vec<String>,
    storage_full: usize,
    other: Vec<String>,
}

fn batch(tag: &str, n: usize) -> Value {
    let filler = "f".repeat(2000);
    json!({"events": (0..n).map(|i| json!({
        "type": "custom.disk.filled", "resourceId": format!("{tag}-{i}"),
        "resourceType": "disk", "payload": {"filler": filler},
    })).collect::<Vec<_>>()})
}

/// Posts one batch and records the answer: the ids of a 201, a counted 507 (checked to be the
/// contract's error, with `Retry-After`), or anything else verbatim.
async fn post_batch(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    tally: &Mutex<Tally>,
) -> StatusCode {
    let response = match client.post(url).bearer_auth(key).json(body).send().await {
        Ok(response) => response,
        Err(e) => {
            tally.lock().unwrap().other.push(format!("transport: {e}"));
            return StatusCode::BAD_GATEWAY;
        }
    };
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let text = response.text().await.unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or_default();
    let mut tally = tally.lock().unwrap();
    match status {
        StatusCode::CREATED => tally.acknowledged.extend(
            json["data"]
                .as_array()
                .expect("a batch answer")
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        ),
        StatusCode::INSUFFICIENT_STORAGE
            if json["error"]["code"] == "storage_full" && retry_after =>
        {
            tally.storage_full += 1
        }
        _ => tally.other.push(format!("{status}: {text}")),
    }
    status
}

/// The last lines the broker logged about the store.
fn log_tail(broker: &BrokerProcess) -> String {
    let log = broker.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| !l.contains("request")).collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn readyz(broker: &BrokerProcess) -> StatusCode {
    reqwest::get(broker.url("/readyz")).await.unwrap().status()
}

#[tokio::test]
async fn a_full_disk_answers_507_and_not_ready_then_recovers_without_a_restart_losing_nothing() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    }
    let tmpfs = match Tmpfs::mount("48m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs: {why}");
            return;
        }
    };
    // Declared after the mount, so dropped (killed) before it is unmounted.
    let logs = TempDir::new().unwrap();
    let database = tmpfs.path().join("events.db");
    let url = format!("sqlite://{}", database.display());
    let broker = BrokerProcess::start(
        logs.path(),
        &[
            ("CPOD_ADMIN_KEY", ADMIN_KEY),
            ("CPOD_DATABASE_URL", &url),
            ("CPOD_SQLITE_MIN_FREE_BYTES", "8388608"),
            ("RUST_LOG", "info,cpod_events::store=debug"),
        ],
    );
    let service = broker.key(ADMIN_KEY, "service").await;
    // Two files stand for other things on the disk: one is deleted later, one stays.
    let filler: PathBuf = tmpfs.path().join("filler");
    fill(&filler, Some(4 * 1024 * 1024));
    fill(&tmpfs.path().join("stays"), Some(8 * 1024 * 1024));

    // Back-to-back writers, until the broker has refused a good many writes.
    let client = reqwest::Client::new();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let events_url = broker.url("/v1/events/batch");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let writers = (0..4).map(|w| {
        let (client, tally, url, key) = (
            client.clone(),
            tally.clone(),
            events_url.clone(),
            service.clone(),
        );
        async move {
            for i in 0.. {
                post_batch(
                    &client,
                    &url,
                    &key,
                    &batch(&format!("w{w}-{i}"), 50),
                    &tally,
                )
                .await;
                let t = tally.lock().unwrap();
                if t.storage_full + t.other.len() >= 40 || std::time::Instant::now() > deadline {
                    return;
                }
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let (acknowledged_while_filling, refused_while_filling, other_while_filling) = {
        let t = tally.lock().unwrap();
        (t.acknowledged.len(), t.storage_full, t.other.clone())
    };

    // Another process takes the last bytes.
    let last_bytes = tmpfs.path().join("last-bytes");
    fill(&last_bytes, None);
    let ready_when_full = readyz(&broker).await;
    let write_when_full =
        post_batch(&client, &events_url, &service, &batch("full", 1), &tally).await;
    let read_when_full = client
        .get(broker.url("/v1/events?limit=5"))
        .bearer_auth(&service)
        .send()
        .await
        .unwrap()
        .status();

    // Some space comes back (4 MiB, and what the other process took): the broker recovers by
    // itself, under the same back-to-back pressure (each writer retries at once until 10 of its
    // batches are taken). Without a reserve, the writers would take the freed bytes for the WAL
    // before a checkpoint could use them, and fail on.
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&last_bytes).unwrap();
    let freed = std::time::Instant::now();
    let deadline = freed + Duration::from_secs(30);
    let writers = (0..4).map(|w| {
        let (client, tally, url, key) = (
            client.clone(),
            tally.clone(),
            events_url.clone(),
            service.clone(),
        );
        async move {
            let mut refused = 0;
            let mut taken = 0;
            while taken < 10 && std::time::Instant::now() < deadline {
                let body = batch(&format!("after-w{w}-{taken}"), 10);
                match post_batch(&client, &url, &key, &body, &tally).await {
                    StatusCode::CREATED => taken += 1,
                    _ => refused += 1,
                }
            }
            (taken, refused)
        }
    });
    let after: Vec<(usize, usize)> = futures_util::future::join_all(writers).await;
    let recovered_in = freed.elapsed();
    // What they wrote (~1 MB) leaves the disk above its reserve.
    let ready_again = eventually(Duration::from_secs(10), || async {
        readyz(&broker).await == StatusCode::OK
    })
    .await;
    let wal_after = std::fs::metadata(tmpfs.path().join("events.db-wal")).map_or(0, |m| m.len());

    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let stored: Vec<String> = {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = json_of(
                client
                    .get(broker.url(&format!(
                        "/v1/events?order=asc&limit=1000&types=custom.*{cursor}"
                    )))
                    .bearer_auth(&service)
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await;
            ids.extend(
                page["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned()),
            );
            match page["nextCursor"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break ids,
            }
        }
    };
    eprintln!(
        "filling: {acknowledged_while_filling} events acknowledged, {refused_while_filling} writes \
         refused 507, {} other answers; with the last bytes gone: readyz {ready_when_full}, write \
         {write_when_full}, read {read_when_full}; space freed: (taken, refused) per writer \
         {after:?} in {recovered_in:?}, ready again {ready_again}, WAL {wal_after} bytes; {} \
         acknowledged, {} stored",
        other_while_filling.len(),
        tally.acknowledged.len(),
        stored.len(),
    );
    assert!(
        other_while_filling.is_empty(),
        "answers other than 201 and 507 storage_full: {:#?}",
        &other_while_filling[..other_while_filling.len().min(5)]
    );
    assert!(refused_while_filling > 0, "the disk never filled");
    assert_eq!(ready_when_full, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(write_when_full, StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(read_when_full, StatusCode::OK, "reads must go on");
    assert!(
        after.iter().all(|(taken, _)| *taken == 10),
        "writes did not recover under pressure: {after:?}; the broker's log ends:\n{}",
        log_tail(&broker)
    );
    assert!(
        ready_again,
        "/readyz did not recover once space was freed; the broker's log ends:\n{}",
        log_tail(&broker)
    );
    let stored_set: std::collections::HashSet<&String> = stored.iter().collect();
    let lost = tally
        .acknowledged
        .iter()
        .filter(|id| !stored_set.contains(id))
        .count();
    assert_eq!(lost, 0, "acknowledged events lost");
    assert_eq!(
        stored.len(),
        tally.acknowledged.len(),
        "unacknowledged events stored"
    );
    drop(broker);
}
