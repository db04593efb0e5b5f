//! The auth file (`--auth-file`): one user per line, `NAME ROLE [prefix=PREFIX]
//! [token=sha256:HEX]`, `#` comments and blank lines ignored. Tokens are never stored: a
//! line holds the SHA-256 of its user's token, and a presented token is hashed and looked up.
//! Error messages name the line and never repeat a token, a hash or any field that could be
//! one.

use omnikv_common::api::MAX_KEY_BYTES;
use omnikv_common::keys::decode_key;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Largest auth file read, in bytes.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Longest user name, in bytes.
const MAX_NAME_BYTES: usize = 64;
/// What a line looks like, for error messages.
const FORM: &str = "NAME ROLE [prefix=PREFIX] [token=sha256:HEX]";

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: keys, ranges, watch, lease list and time-to-live, status, log, members.
    Read,
    /// Read, plus writes: put, delete, txn, lease grant, keepalive and revoke.
    Write,
    /// Everything, including reconfigure, move-leader and snapshot.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user of the auth file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// Every key this user names starts with it (read and write users only); `None`: all keys.
    pub prefix: Option<Vec<u8>>,
}

/// The SHA-256 of a token.
type TokenHash = [u8; 32];

/// The users of one auth file, by name and by token hash.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    by_token: HashMap<TokenHash, Arc<User>>,
}

/// What is wrong with an auth file: a line that is not a user, a comment or blank (`line`
/// from 1), or the whole file (`line` 0: too large).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.message),
            n => write!(f, "line {n}: {}", self.message),
        }
    }
}

impl std::error::Error for LineError {}

/// Why a call names no user of the file (`Users::identify`); each front door words it.
#[derive(Debug, PartialEq, Eq)]
pub enum Unnamed {
    /// Neither a token nor a client certificate.
    NoUser,
    /// A token no user of the file has.
    BadToken,
    /// A client certificate whose common name is not a user of the file.
    UnlistedCert(String),
}

impl Users {
    /// Parses an auth file's bytes: UTF-8 text, at most `MAX_FILE_BYTES`.
    pub fn parse(bytes: &[u8]) -> Result<Users, LineError> {
        if bytes.len() > MAX_FILE_BYTES {
            return Err(LineError {
                line: 0,
                message: format!("the file is over {MAX_FILE_BYTES} bytes"),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| LineError {
            line: 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count(),
            message: "not UTF-8 text".into(),
        })?;
        let mut users = Users::default();
        for (i, line) in text.lines().enumerate() {
            let at = |message: String| LineError {
                line: i + 1,
                message,
            };
            let Some((user, token)) = parse_line(line).map_err(at)? else {
                continue;
            };
            if users.by_name.contains_key(&user.name) {
                return Err(at(format!("user {} is listed twice", user.name)));
            }
            let user = Arc::new(user);
            if let Some(hash) = token {
                if let Some(other) = users.by_token.insert(hash, user.clone()) {
                    return Err(at(format!(
                        "user {} has the same token as user {} (a token names one user)",
                        user.name, other.name
                    )));
                }
            }
            users.by_name.insert(user.name.clone(), user);
        }
        Ok(users)
    }

    /// The user whose token is `token`.
    pub fn by_token(&self, token: &str) -> Option<&Arc<User>> {
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        self.by_token.get(&hash)
    }

    /// The user named `name` (a client certificate's common name).
    pub fn by_name(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    /// The user a call authenticates as, on either front door: its token's when it sent one
    /// (a token that names no user is refused even with a certificate), else the user its
    /// verified client certificate's common name names.
    pub fn identify(
        &self,
        token: Option<&str>,
        cert_user: Option<&str>,
    ) -> Result<Arc<User>, Unnamed> {
        match (token, cert_user) {
            (Some(token), _) => self.by_token(token).cloned().ok_or(Unnamed::BadToken),
            (None, Some(name)) => self
                .by_name(name)
                .cloned()
                .ok_or_else(|| Unnamed::UnlistedCert(name.to_string())),
            (None, None) => Err(Unnamed::NoUser),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// One line: `None` for a blank or comment line. A field starting with `#` starts a comment.
fn parse_line(line: &str) -> Result<Option<(User, Option<TokenHash>)>, String> {
    let fields: Vec<&str> = line
        .split_whitespace()
        .take_while(|f| !f.starts_with('#'))
        .collect();
    let Some((name, rest)) = fields.split_first() else {
        return Ok(None);
    };
    if !valid_name(name) {
        // Not repeated: a token pasted at the start of a line lands here.
        return Err(format!(
            "the user name must be 1 to {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ @ - (want {FORM})"
        ));
    }
    let Some((role, options)) = rest.split_first() else {
        // The name is not repeated: a token pasted alone on a line looks like a name.
        return Err(format!("a name without a role (want {FORM})"));
    };
    let role = Role::parse(role).ok_or_else(|| {
        format!("user {name}: the role must be read, write or admin (want {FORM})")
    })?;
    let mut prefix = None;
    let mut token = None;
    for (n, field) in options.iter().enumerate() {
        let position = n + 3;
        match field.split_once('=') {
            Some(("prefix", raw)) => {
                if prefix.is_some() {
                    return Err(format!("user {name}: prefix given twice"));
                }
                prefix = Some(parse_prefix(name, role, raw)?);
            }
            Some(("token", raw)) => {
                if token.is_some() {
                    return Err(format!("user {name}: token given twice"));
                }
                token = Some(parse_token(raw).ok_or_else(|| {
                    format!(
                        "user {name}: the token must be sha256: and the 64 hex digits of the \
                         token's SHA-256 (the token itself is never written here)"
                    )
                })?);
            }
            // The field is not repeated: it may be a token written in the wrong place.
            _ => {
                return Err(format!(
                    "user {name}: field {position} is neither prefix=PREFIX nor \
                     token=sha256:HEX (want {FORM})"
                ))
            }
        }
    }
    let user = User {
        name: name.to_string(),
        role,
        prefix,
    };
    Ok(Some((user, token)))
}

fn parse_prefix(name: &str, role: Role, raw: &str) -> Result<Vec<u8>, String> {
    if role == Role::Admin {
        return Err(format!(
            "user {name}: a prefix limits read and write users only (an admin has every key)"
        ));
    }
    let prefix = decode_key(raw).ok_or_else(|| {
        format!(
            "user {name}: malformed percent-encoding in prefix {raw:?} (% takes two hex digits)"
        )
    })?;
    if prefix.is_empty() {
        return Err(format!(
            "user {name}: empty prefix (leave prefix= out for every key)"
        ));
    }
    if prefix.len() > MAX_KEY_BYTES {
        return Err(format!(
            "user {name}: the prefix is over the {MAX_KEY_BYTES}-byte key limit"
        ));
    }
    Ok(prefix)
}

/// `sha256:` and 64 hex digits (either case).
fn parse_token(raw: &str) -> Option<TokenHash> {
    let hex = raw.strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(hash)
}

#[cfg(test)]
pub(crate) fn token_line_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(token: &str) -> String {
        format!("sha256:{}", token_line_hash(token))
    }

    #[test]
    fn a_good_file_names_its_users_by_name_and_token() {
        let text = format!(
            "# users\n\nroot admin token={}\n  app   write prefix=app%2F token={}  # the app\n\
             dash read\nbin read prefix=%FF%00x token={}\n",
            hash("root-token"),
            hash("app-token").to_uppercase().replace("SHA256", "sha256"),
            hash("bin-token"),
        );
        let users = Users::parse(text.as_bytes()).unwrap();
        assert_eq!(users.len(), 4);
        let root = users.by_token("root-token").unwrap();
        assert_eq!(
            (root.name.as_str(), root.role, &root.prefix),
            ("root", Role::Admin, &None)
        );
        let app = users.by_token("app-token").unwrap();
        assert_eq!(app.name, "app");
        assert_eq!(app.role, Role::Write);
        assert_eq!(app.prefix.as_deref(), Some(&b"app/"[..]));
        assert_eq!(
            users.by_token("bin-token").unwrap().prefix.as_deref(),
            Some(&b"\xff\x00x"[..])
        );
        let dash = users.by_name("dash").unwrap();
        assert_eq!((dash.role, &dash.prefix), (Role::Read, &None));
        assert!(users.by_token("dash").is_none());
        assert!(users.by_token("").is_none());
        assert!(users.by_token("root-token ").is_none());
        assert!(users.by_name("nobody").is_none());
        assert!(Users::parse(b"").unwrap().is_empty());
        assert!(Users::parse(b"# nobody\n\n").unwrap().is_empty());
    }

    /// Each kind of bad line is refused with its line number and a message saying what is
    /// wrong, never repeating the token, its hash or a field that could be one.
    #[test]
    fn bad_lines_are_refused_with_their_line_number() {
        let good = hash("t");
        let secret = "okv_c2VjcmV0LXRva2VuLXZhbHVlLW5vdC10by1iZS1sb2dnZWQ";
        let cases: Vec<(String, &str)> = vec![
            (format!("{secret}\n"), "a name without a role"),
            (format!("{secret}= read\n"), "user name must be"),
            ("a b c\n".into(), "role must be"),
            (format!("app {secret}\n"), "role must be"),
            ("app\n".into(), "a name without a role"),
            ("app superuser\n".into(), "role must be"),
            (format!("app write {secret}\n"), "field 3 is neither"),
            (
                format!("app write token={secret}\n"),
                "token must be sha256:",
            ),
            (
                "app write token=sha256:abcd\n".into(),
                "token must be sha256:",
            ),
            (
                format!("app write token={}\n", good.replace('a', "g")),
                "token must be sha256:",
            ),
            (
                format!("app write token={good} token={good}\n"),
                "token given twice",
            ),
            ("app write prefix=a prefix=b\n".into(), "prefix given twice"),
            ("app write prefix=\n".into(), "empty prefix"),
            (
                "app write prefix=%zz\n".into(),
                "malformed percent-encoding",
            ),
            (
                "app write prefix=a%4\n".into(),
                "malformed percent-encoding",
            ),
            ("root admin prefix=a/\n".into(), "read and write users only"),
            (
                format!("app write prefix={}\n", "k".repeat(MAX_KEY_BYTES + 1)),
                "key limit",
            ),
            (format!("{} read\n", "n".repeat(65)), "user name must be"),
            ("bad/name read\n".into(), "user name must be"),
            ("app write frobnicate=1\n".into(), "field 3 is neither"),
        ];
        for (line, want) in cases {
            let text = format!("# header\nok read\n{line}");
            let e = Users::parse(text.as_bytes()).unwrap_err();
            assert_eq!(e.line, 3, "{line:?}: {e}");
            assert!(e.message.contains(want), "{line:?}: {e}");
            assert!(
                !e.to_string().contains(secret),
                "{line:?} leaks the token: {e}"
            );
            assert!(
                !e.to_string().contains(&good[7..]),
                "{line:?} leaks a hash: {e}"
            );
        }
    }

    #[test]
    fn duplicate_names_and_shared_tokens_are_refused() {
        let e = Users::parse(b"app read\nother read\napp write\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("user app is listed twice"), "{e}");
        let t = hash("same");
        let text = format!("a read token={t}\nb write token={t}\n");
        let e = Users::parse(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("same token as user a"), "{e}");
    }

    #[test]
    fn non_text_and_oversized_files_are_refused() {
        let e = Users::parse(b"a read\nb read\nc \xff read\n").unwrap_err();
        assert_eq!((e.line, e.message.as_str()), (3, "not UTF-8 text"));
        let big = vec![b'#'; MAX_FILE_BYTES + 1];
        let e = Users::parse(&big).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("the file is over {MAX_FILE_BYTES} bytes")
        );
    }
}
