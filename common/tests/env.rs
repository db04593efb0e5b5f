//! `Credentials::from_env`: the `KVCTL_*` variables the watcher reads. The one test of this
//! binary (its own process), so changing the environment races with nothing.

use omnikv_common::client::{
    Credentials, ENV_CACERT, ENV_CERT, ENV_KEY, ENV_TOKEN, ENV_TOKEN_FILE,
};
use omnikv_common::ClientError;
use std::path::PathBuf;

#[test]
fn credentials_from_the_environment() {
    for name in [ENV_CACERT, ENV_CERT, ENV_KEY, ENV_TOKEN, ENV_TOKEN_FILE] {
        std::env::remove_var(name);
    }
    assert!(Credentials::from_env().unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "okv_file\n").unwrap();
    std::env::set_var(ENV_CACERT, "/etc/omnikv/ca.crt");
    std::env::set_var(ENV_CERT, "/etc/omnikv/client.crt");
    std::env::set_var(ENV_KEY, "/etc/omnikv/client.key");
    std::env::set_var(ENV_TOKEN_FILE, &file);
    let c = Credentials::from_env().unwrap();
    assert_eq!(c.cacert, Some(PathBuf::from("/etc/omnikv/ca.crt")));
    assert_eq!(c.cert, Some(PathBuf::from("/etc/omnikv/client.crt")));
    assert_eq!(c.key, Some(PathBuf::from("/etc/omnikv/client.key")));
    assert_eq!(c.token.as_deref(), Some("okv_file"));

    // Both token sources: refused, as kvctl refuses them.
    std::env::set_var(ENV_TOKEN, " okv_env ");
    match Credentials::from_env() {
        Err(ClientError::Usage(m)) => assert!(m.contains(ENV_TOKEN_FILE), "{m}"),
        other => panic!("{other:?}"),
    }
    // Empty counts as unset.
    std::env::set_var(ENV_TOKEN_FILE, "");
    assert_eq!(
        Credentials::from_env().unwrap().token.as_deref(),
        Some("okv_env")
    );
    std::env::remove_var(ENV_TOKEN);
    std::env::set_var(ENV_TOKEN_FILE, dir.path().join("missing"));
    match Credentials::from_env() {
        Err(ClientError::Usage(m)) => assert!(m.contains("missing"), "{m}"),
        other => panic!("{other:?}"),
    }
}
