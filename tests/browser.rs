//! The dashboard and the browser SDK, end to end in headless Chromium: runs
//! `tests/browser/dashboard.test.mjs` (playwright-core driving Debian's `chromium`) against the
//! real `cpod-events` binary, which the script starts, kills and restarts on a temporary
//! database.
//!
//! What is missing is installed first: `chromium` (apt-get), Node.js (apt-get) and the npm
//! packages pinned by `tests/browser/package-lock.json` (`npm ci`). When that is impossible the
//! test fails with a message saying what to install; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole browser suite; a run takes about half a minute.
const SUITE_TIMEOUT: Duration = Duration::from_secs(240);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium_path() -> PathBuf {
    std::env::var_os("CPOD_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Runs a command to completion; answers its combined output on failure.
fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get install -y`, with an `apt-get update` first if the package lists are stale.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    install().or_else(|_| {
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        install()
    })
}

fn ensure_installed() {
    let chromium = chromium_path();
    if !chromium.exists() {
        apt_install(&["chromium"]).unwrap_or_else(|e| {
            panic!(
                "{} is missing and `apt-get install -y chromium` failed; install Chromium (or set \
                 CPOD_CHROMIUM to a Chromium binary) to run the browser tests.\n{e}",
                chromium.display()
            )
        });
        assert!(
            chromium.exists(),
            "chromium was installed but {} does not exist",
            chromium.display()
        );
    }
    if !on_path("node") || !on_path("npm") {
        apt_install(&["nodejs", "npm"]).unwrap_or_else(|e| {
            panic!("Node.js is missing and `apt-get install -y nodejs npm` failed; install Node.js 18 or later.\n{e}")
        });
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(browser_dir()))
        .unwrap_or_else(|e| {
            panic!("`npm ci` in tests/browser failed (it needs the npm registry).\n{e}")
        });
    }
}

#[test]
fn the_dashboard_and_the_browser_sdk_work_in_headless_chromium() {
    ensure_installed();
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("screenshots");
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("browser-tests.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("node")
        .arg("dashboard.test.mjs")
        .current_dir(browser_dir())
        .env("CPOD_BIN", env!("CARGO_BIN_EXE_cpod-events"))
        .env("CPOD_CHROMIUM", chromium_path())
        .env("CPOD_SCREENSHOT_DIR", &screenshots)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("node starts");
    let deadline = Instant::now() + SUITE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            // SIGTERM first: the script then kills its broker and Chromium on the way out.
            // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(3));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    println!("{output}");
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("the browser tests failed ({status}):\n{output}"),
        None => panic!("the browser tests did not finish within {SUITE_TIMEOUT:?}:\n{output}"),
    }
}
