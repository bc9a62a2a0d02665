//! The cargo-fuzz targets (`fuzz/`) for a bounded time, so `cargo test` keeps what found the
//! parser bugs finding them: `fuzz/run` builds every target on nightly and runs each for
//! `CPOD_FUZZ_SECONDS` seconds (default 10) from its committed seeds. A crash fails the test
//! with the input saved under `fuzz/artifacts/`. Without a nightly toolchain the script says
//! SKIPPED; in CI (`CI` set) that is a failure.

use std::process::Command;

#[test]
fn every_fuzz_target_runs_clean_for_a_bounded_time() {
    let seconds = std::env::var("CPOD_FUZZ_SECONDS").unwrap_or_else(|_| "10".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/run");
    let output = Command::new(script)
        .arg(&seconds)
        // The fuzz crate has its own workspace and target directory; cargo's variables for
        // this test must not leak into its build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .output()
        .expect("fuzz/run starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "fuzz/run failed:\n{stdout}\n{stderr}"
    );
    if stdout.contains("SKIPPED") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fuzz, but there is no nightly toolchain:\n{stdout}"
        );
        return;
    }
    let targets = stdout.matches("fuzz: ").count();
    assert!(targets >= 8, "expected every target to run:\n{stdout}");
}
