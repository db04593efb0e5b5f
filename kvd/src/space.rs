//! The free-space guard: writes are refused before RocksDB runs out of disk (etcd's NOSPACE
//! alarm). Reads go on; writes resume by themselves once space is freed. If RocksDB fails
//! anyway, the loop panics, the process exits, and a restart loses no acknowledged write.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the free space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(250);

pub struct SpaceGuard {
    dir: PathBuf,
    min_free: u64,
    free: Option<u64>,
    next_check: Instant,
}

/// Bytes available to this process on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated string and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

impl SpaceGuard {
    /// A guard of `dir` keeping `min_free` bytes (0: none), first measured at `now`.
    pub fn new(dir: PathBuf, min_free: u64, now: Instant) -> SpaceGuard {
        SpaceGuard {
            dir,
            min_free,
            free: None,
            next_check: now,
        }
    }

    /// Measures again when due. Returns the new state when it changed (true = low).
    pub fn refresh(&mut self, now: Instant) -> Option<bool> {
        if self.min_free == 0 || now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_EVERY;
        let was_low = self.is_low();
        self.free = free_bytes(&self.dir).ok();
        (self.is_low() != was_low).then_some(self.is_low())
    }

    pub fn is_low(&self) -> bool {
        self.min_free > 0 && self.free.is_some_and(|f| f < self.min_free)
    }

    pub fn free(&self) -> Option<u64> {
        self.free
    }

    /// Why writes are refused.
    pub fn message(&self) -> String {
        format!(
            "no space: {} MiB free on the data dir's filesystem, below KVD_MIN_FREE_BYTES ({} MiB); \
             writes are refused until space is freed (reads still work)",
            self.free.unwrap_or(0) / (1024 * 1024),
            self.min_free / (1024 * 1024)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_the_filesystem_and_trips_below_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        let mut ok = SpaceGuard::new(dir.path().to_path_buf(), 1, Instant::now());
        assert_eq!(ok.refresh(Instant::now()), None, "never low: no change");
        assert!(!ok.is_low());
        let mut low = SpaceGuard::new(dir.path().to_path_buf(), u64::MAX, Instant::now());
        assert_eq!(low.refresh(Instant::now()), Some(true));
        assert!(low.message().starts_with("no space: "), "{}", low.message());
        let mut off = SpaceGuard::new(dir.path().to_path_buf(), 0, Instant::now());
        assert_eq!(off.refresh(Instant::now()), None);
        assert!(!off.is_low());
    }
}
