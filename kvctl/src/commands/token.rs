//! `kvctl token new`: a random bearer token (`okv_` + 32 random bytes, base64url without
//! padding) for a new user line of kvd's auth file. The file stores only the token's SHA-256;
//! the token itself is handed out once, on stdout.

use crate::cli::{OutputFormat, TokenCommand, TokenRole};
use crate::commands::certs::check_user_name;
use crate::exit::Error;
use base64::Engine;
use omnikv_common::keys::encode_key;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What every token starts with (recognisable in a leak scanner).
pub const TOKEN_PREFIX: &str = "okv_";
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;
/// Longest auth file read to look for the name (kvd's file is a list of users).
const MAX_AUTH_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Runs a `token` command: the token on stdout (text: alone on its line; JSON:
/// `{"name", "role", "token"}`), and a note of what was added on stderr.
pub fn run(command: TokenCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), Error> {
    let TokenCommand::New {
        name,
        role,
        prefix,
        auth_file,
    } = command;
    let token = new(
        &name,
        role,
        prefix.as_ref().map(|p| p.as_bytes()),
        &auth_file,
    )?;
    match format {
        OutputFormat::Text => writeln!(out, "{token}"),
        OutputFormat::Json => writeln!(
            out,
            "{}",
            serde_json::json!({"name": name, "role": role_name(role), "token": token})
        ),
    }
    .map_err(Error::stdout)?;
    eprintln!(
        "added user {name} ({}) to {}; the token above is shown only now",
        role_name(role),
        auth_file.display()
    );
    Ok(())
}

/// A new random token.
pub fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The lower-hex SHA-256 of `token`, as the auth file holds it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The role's name in the auth file.
pub fn role_name(role: TokenRole) -> &'static str {
    match role {
        TokenRole::Read => "read",
        TokenRole::Write => "write",
        TokenRole::Admin => "admin",
    }
}

/// The auth file line for a user (no newline).
pub fn auth_line(name: &str, role: TokenRole, prefix: Option<&[u8]>, token: &str) -> String {
    let mut line = format!("{name} {}", role_name(role));
    if let Some(prefix) = prefix {
        line.push_str(&format!(" prefix={}", encode_key(prefix)));
    }
    line.push_str(&format!(" token=sha256:{}", token_hash(token)));
    line
}

/// Makes a token for `name`, appends its line to `auth_file` (created mode 0600) and returns
/// the token. Refuses a name the file already lists, and a prefix for admin.
pub fn new(
    name: &str,
    role: TokenRole,
    prefix: Option<&[u8]>,
    auth_file: &Path,
) -> Result<String, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    check_user_name(name)?;
    match prefix {
        Some(_) if role == TokenRole::Admin => {
            return Err(Error::usage(
                "--prefix is for read and write users (admin reaches every key)",
            ))
        }
        Some([]) => return Err(Error::usage("--prefix must not be empty")),
        _ => {}
    }
    let file_error = |e: std::io::Error| Error::usage(format!("{}: {e}", auth_file.display()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(auth_file)
        .map_err(file_error)?;
    let mut existing = Vec::new();
    (&mut file)
        .take(MAX_AUTH_FILE_BYTES + 1)
        .read_to_end(&mut existing)
        .map_err(file_error)?;
    if existing.len() as u64 > MAX_AUTH_FILE_BYTES {
        return Err(Error::usage(format!(
            "{}: larger than {MAX_AUTH_FILE_BYTES} bytes",
            auth_file.display()
        )));
    }
    let existing = String::from_utf8_lossy(&existing);
    if listed_names(&existing).any(|n| n == name) {
        return Err(Error::usage(format!(
            "user {name:?} is already in {} (remove its line first to replace its token)",
            auth_file.display()
        )));
    }
    let token = random_token();
    let mut text = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&auth_line(name, role, prefix, &token));
    text.push('\n');
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(file_error)?;
    Ok(token)
}

/// The user names an auth file lists (first word of each line that is not blank or `#`).
fn listed_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn new_appends_the_hash_of_the_printed_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth");
        let root = new("root", TokenRole::Admin, None, &file).unwrap();
        let app = new("app", TokenRole::Write, Some(b"app/x y"), &file).unwrap();
        assert_ne!(root, app);
        for token in [&root, &app] {
            let b64 = token.strip_prefix(TOKEN_PREFIX).unwrap();
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .unwrap();
            assert_eq!(raw.len(), TOKEN_BYTES);
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let hex = |t: &str| {
            Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(lines[0], format!("root admin token=sha256:{}", hex(&root)));
        assert_eq!(
            lines[1],
            format!("app write prefix=app%2Fx%20y token=sha256:{}", hex(&app))
        );
        assert!(!text.contains(&root) && !text.contains(&app));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_listed_name_is_refused_and_the_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth");
        std::fs::write(&file, "# users\n\n  dash read\nroot admin token=sha256:00").unwrap();
        for name in ["dash", "root"] {
            let e = new(name, TokenRole::Read, None, &file).unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::USAGE);
            assert!(e.to_string().contains("already"), "{e}");
        }
        new("users", TokenRole::Read, None, &file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(lines[3], "root admin token=sha256:00", "newline added");
        assert!(lines[4].starts_with("users read token=sha256:"));
    }

    #[test]
    fn bad_requests_are_usage_errors_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("auth");
        for (name, role, prefix) in [
            ("a b", TokenRole::Read, None),
            ("", TokenRole::Read, None),
            ("admin", TokenRole::Admin, Some(&b"p/"[..])),
            ("w", TokenRole::Write, Some(&b""[..])),
        ] {
            let e = new(name, role, prefix, &file).unwrap_err();
            assert_eq!(e.exit_code(), crate::exit::USAGE, "{name}");
        }
        assert!(!file.exists());
    }
}
