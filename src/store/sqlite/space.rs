//! Free space on the disk holding the database, and the refusal of writes when it runs low.
//!
//! The writer measures the space after each commit and after a failed one. Below what a
//! checkpoint may need (the WAL's frames, which it may copy into the database file and grow it
//! by as much) plus the reserve (`min_free_bytes`, at least [`FLOOR_BYTES`]), or once a commit
//! failed with the disk full, the store refuses writes before they reach the writer
//! (`StoreError::StorageFull`), so that what is left stays for the checkpoint: only a finished
//! checkpoint lets the WAL start again from its beginning instead of growing. While space is
//! low, the checkpointer checkpoints and truncates the WAL and measures again: writes are taken
//! again as soon as the space is back, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::WalState;

/// The least free space kept, whatever the setting: room for a checkpoint's last pages.
pub(super) const FLOOR_BYTES: u64 = 1024 * 1024;

pub(super) struct Space {
    /// The database's directory (its filesystem is the one measured).
    dir: PathBuf,
    reserve: u64,
    /// The WAL's frames: a checkpoint may grow the database by as many pages.
    wal: Arc<WalState>,
    page_size: u64,
    low: AtomicBool,
}

impl Space {
    pub(super) fn new(
        database: &Path,
        min_free_bytes: u64,
        wal: Arc<WalState>,
        page_size: u64,
    ) -> Self {
        let dir = match database.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let space = Self {
            dir,
            reserve: min_free_bytes.max(FLOOR_BYTES),
            wal,
            page_size,
            low: AtomicBool::new(false),
        };
        metrics::gauge!("cpod_store_storage_full").set(0.0);
        space
    }

    /// Whether writes are refused for want of space.
    pub(super) fn is_low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// The free space writes must leave: the reserve, and room to checkpoint the WAL.
    fn needed(&self) -> u64 {
        let frames = self.wal.pages.load(Ordering::Relaxed).max(0) as u64;
        self.reserve
            .saturating_add(frames.saturating_mul(self.page_size))
    }

    /// Measures the free space and records whether it is below what writes must leave;
    /// answers that. A measurement that fails changes nothing.
    pub(super) fn measure(&self) -> bool {
        match available_bytes(&self.dir) {
            Ok(available) => {
                let low = available < self.needed();
                self.set_low(low, available);
                low
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure the free space of the store's disk");
                self.is_low()
            }
        }
    }

    /// A write failed with the disk full: refuse writes until a measurement finds room.
    pub(super) fn mark_full(&self) {
        let available = available_bytes(&self.dir).unwrap_or(0);
        self.set_low(true, available);
    }

    fn set_low(&self, low: bool, available: u64) {
        let was = self.low.swap(low, Ordering::AcqRel);
        if low == was {
            return;
        }
        metrics::gauge!("cpod_store_storage_full").set(if low { 1.0 } else { 0.0 });
        if low {
            tracing::warn!(
                available,
                needed = self.needed(),
                dir = %self.dir.display(),
                "the store's disk is full or below its reserve: writes are refused until space is freed"
            );
        } else {
            tracing::info!(
                available,
                "the store's disk has room again: writes are taken"
            );
        }
    }
}

/// Bytes an unprivileged process may still write on the filesystem holding `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a NUL-terminated string and `stats` a writable struct of the right type;
    // statvfs only writes into it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_low_below_the_reserve_and_after_a_full_disk_until_measured_again() {
        let dir = tempfile::TempDir::new().unwrap();
        let database = dir.path().join("x.db");
        let wal = Arc::new(WalState::default());
        let roomy = Space::new(&database, 0, wal.clone(), 4096);
        assert!(
            !roomy.measure(),
            "a temporary directory has a megabyte free"
        );
        roomy.mark_full();
        assert!(roomy.is_low());
        assert!(!roomy.measure(), "a measurement with room clears it");
        assert!(!roomy.is_low());

        let greedy = Space::new(&database, u64::MAX, wal.clone(), 4096);
        assert!(greedy.measure());
        assert!(greedy.is_low());

        // A WAL larger than the disk could ever take in a checkpoint.
        wal.pages.store(i32::MAX, Ordering::Relaxed);
        let walled = Space::new(&database, 0, wal, 1 << 30);
        assert!(walled.measure(), "the WAL's checkpoint needs room too");
    }
}
