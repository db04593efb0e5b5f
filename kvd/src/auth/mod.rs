//! Authentication and roles for the client API: the users of `--auth-file` (`users`), re-read
//! when the file's content changes, and what each role may do (`policy`). The HTTP side (the
//! layer that names each request's caller, the 401 and 403 answers) is `api::gate`.

pub mod policy;
pub mod users;

pub use policy::{Call, Denied};
pub use users::{Role, Unnamed, User, Users};

use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tracing::{info, warn};
use users::{LineError, MAX_FILE_BYTES};

/// How often the auth file is read to see whether its content changed.
pub const POLL: Duration = Duration::from_secs(1);

/// A changed file is read again this much later and taken only when both reads agree: a
/// file rewritten in place (`cat > users`, many editors) is for a moment empty or partial,
/// and an empty file parses, as no users at all.
const SETTLE: Duration = Duration::from_millis(100);

/// Who may use the client API: open to all (no auth file), or the users of the auth file as
/// last read successfully. Cheap to clone; every clone sees reloads.
#[derive(Clone, Default)]
pub struct Auth {
    inner: Option<Arc<Shared>>,
}

struct Shared {
    users: RwLock<Arc<Users>>,
    metrics_auth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("auth file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth file {path}: {source}")]
    Parse { path: String, source: LineError },
}

impl Auth {
    /// No auth file: every request is let through.
    pub fn open() -> Auth {
        Auth::default()
    }

    /// Authentication against `users`; with `metrics_auth`, /metrics too.
    pub fn with_users(users: Users, metrics_auth: bool) -> Auth {
        Auth {
            inner: Some(Arc::new(Shared {
                users: RwLock::new(Arc::new(users)),
                metrics_auth,
            })),
        }
    }

    /// From kvd's flags: open without `--auth-file`; else its users, the file re-read every
    /// `POLL` on the current tokio runtime for as long as a clone of the answer lives. A bad
    /// file at start is an error (kvd does not start).
    pub fn start(cfg: &Config) -> Result<Auth, AuthFileError> {
        match &cfg.auth_file {
            None => Ok(Auth::open()),
            Some(path) => Auth::from_file(path, cfg.metrics_auth),
        }
    }

    /// The users of the auth file at `path`, re-read as `start` says.
    pub fn from_file(path: &Path, metrics_auth: bool) -> Result<Auth, AuthFileError> {
        let bytes = read_bounded_sync(path).map_err(|source| AuthFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let users = Users::parse(&bytes).map_err(|source| AuthFileError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        info!(path = %path.display(), users = users.len(), metrics_auth,
              "authentication on: client requests need a listed user");
        let auth = Auth::with_users(users, metrics_auth);
        if let Some(shared) = &auth.inner {
            tokio::spawn(reload(path.to_path_buf(), Arc::downgrade(shared), bytes));
        }
        Ok(auth)
    }

    /// The users, when authentication is on.
    pub fn users(&self) -> Option<Arc<Users>> {
        let shared = self.inner.as_ref()?;
        let users = shared.users.read().unwrap_or_else(|p| p.into_inner());
        Some(users.clone())
    }

    /// Whether /metrics needs an authenticated user.
    pub fn metrics_auth(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.metrics_auth)
    }
}

/// The file's bytes, at most `MAX_FILE_BYTES + 1` of them (parsing refuses more).
fn read_bounded_sync(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

async fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    tokio::fs::File::open(path)
        .await?
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    Ok(bytes)
}

/// The file's content, or `None` while it is changing: content other than `loaded` counts
/// once a second read `SETTLE` later finds the same bytes.
async fn read_settled(path: &Path, loaded: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let first = read_bounded(path).await?;
    if first == loaded {
        return Ok(Some(first));
    }
    tokio::time::sleep(SETTLE).await;
    let second = read_bounded(path).await?;
    Ok((second == first).then_some(first))
}

/// What the last poll found, so that one problem is logged once, not every second.
#[derive(PartialEq)]
enum Polled {
    Loaded,
    Invalid(Vec<u8>),
    Unreadable(String),
}

/// Re-reads `path` every `POLL`; new content (once settled) that parses replaces the users,
/// content that does not is logged (once) and the users loaded before stay. `loaded` is the
/// content in force. Ends when every `Auth` clone is gone.
async fn reload(path: PathBuf, shared: Weak<Shared>, mut loaded: Vec<u8>) {
    let shown = path.display().to_string();
    let mut last = Polled::Loaded;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = match read_settled(&path, &loaded).await {
            Ok(None) => continue,
            Ok(Some(bytes)) if bytes == loaded => Polled::Loaded,
            Ok(Some(bytes)) => match Users::parse(&bytes) {
                Ok(users) => {
                    info!(path = %shown, users = users.len(), "auth file changed: users reloaded");
                    *shared.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
                    loaded = bytes;
                    Polled::Loaded
                }
                Err(e) => {
                    if last != Polled::Invalid(bytes.clone()) {
                        warn!(path = %shown, error = %e,
                              "auth file changed but is not valid: keeping the users loaded before");
                    }
                    Polled::Invalid(bytes)
                }
            },
            Err(e) => {
                let e = e.to_string();
                if last != Polled::Unreadable(e.clone()) {
                    warn!(path = %shown, error = %e,
                          "cannot read the auth file: keeping the users loaded before");
                }
                Polled::Unreadable(e)
            }
        };
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::users::token_line_hash;
    use super::*;

    fn line(name: &str, role: &str, token: &str) -> String {
        format!("{name} {role} token=sha256:{}\n", token_line_hash(token))
    }

    /// Whether `token` names `name` within `within`, polling.
    async fn names_within(auth: &Auth, token: &str, name: Option<&str>, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        loop {
            let users = auth.users().unwrap();
            if users.by_token(token).map(|u| u.name.as_str()) == name {
                return true;
            }
            if tokio::time::Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn the_file_is_reloaded_when_it_changes_and_a_bad_one_is_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, line("a", "read", "ta")).unwrap();
        let auth = Auth::from_file(&path, false).unwrap();
        assert!(names_within(&auth, "ta", Some("a"), Duration::ZERO).await);
        assert!(names_within(&auth, "tb", None, Duration::ZERO).await);

        // A user added: its token works within two polls.
        std::fs::write(&path, line("a", "read", "ta") + &line("b", "write", "tb")).unwrap();
        assert!(
            names_within(
                &auth,
                "tb",
                Some("b"),
                2 * POLL + Duration::from_millis(500)
            )
            .await
        );

        // A bad file (and a missing one) change nothing.
        std::fs::write(&path, "a read\nb nosuchrole\n").unwrap();
        assert!(!names_within(&auth, "tb", None, 2 * POLL + Duration::from_millis(500)).await);
        std::fs::remove_file(&path).unwrap();
        assert!(!names_within(&auth, "ta", None, 2 * POLL + Duration::from_millis(500)).await);

        // A user removed: its token stops working.
        std::fs::write(&path, line("a", "read", "ta")).unwrap();
        assert!(names_within(&auth, "tb", None, 2 * POLL + Duration::from_millis(500)).await);
        assert!(names_within(&auth, "ta", Some("a"), Duration::ZERO).await);
    }

    #[test]
    fn a_bad_file_at_start_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "a read\nb read prefix=%g0\n").unwrap();
        let e = Auth::from_file(&path, false).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!("auth file {}: line 2: ", path.display())),
            "{e}"
        );
        let e = Auth::from_file(&dir.path().join("missing"), false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(Auth::open().users().is_none());
    }
}
