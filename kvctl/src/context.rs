//! The settings every command runs with, from the global flags: which endpoints, how to read,
//! how to print, how long to wait, what credentials to present.

use crate::cli::{self, GlobalOpts, OutputFormat};
use crate::exit::Error;
use omnikv_common::client::{read_token_file, Credentials};
use omnikv_common::{Client, Consistency};
use std::path::PathBuf;
use std::time::Duration;

/// The global settings every command runs with.
#[derive(Debug, Clone)]
pub struct Context {
    /// The whole `--endpoints` list, in order.
    pub endpoints: Vec<String>,
    /// `--node`: 1-based index into `endpoints` (not yet range-checked).
    pub node: Option<usize>,
    pub consistency: Consistency,
    pub output: OutputFormat,
    /// Overall time per command.
    pub timeout: Duration,
    /// --cacert, --cert, --key and --token (its `Debug` hides the token).
    pub credentials: Credentials,
    /// --token-file, read when a client is made (when --token is not given).
    pub token_file: Option<PathBuf>,
}

impl Context {
    pub fn new(g: &GlobalOpts) -> Self {
        Context {
            endpoints: cli::split_endpoints(&g.endpoints),
            node: g.node,
            consistency: g.consistency,
            output: g.output,
            timeout: g.timeout,
            credentials: Credentials {
                cacert: g.cacert.clone(),
                cert: g.cert.clone(),
                key: g.key.clone(),
                token: g
                    .token
                    .as_ref()
                    .map(|t| t.0.clone())
                    .filter(|t| !t.is_empty()),
            },
            token_file: g.token_file.clone(),
        }
    }

    /// The credentials to present: the flags', with the token read from --token-file when
    /// --token is not given (a usage error naming the file when it cannot be read).
    pub fn credentials(&self) -> Result<Credentials, Error> {
        let mut credentials = self.credentials.clone();
        if let (None, Some(file)) = (&credentials.token, &self.token_file) {
            credentials.token = Some(read_token_file(file)?);
        }
        Ok(credentials)
    }

    /// A client over `endpoints` with the context's timeout and credentials.
    pub fn client_for(&self, endpoints: &[String]) -> Result<Client, Error> {
        Ok(Client::with_credentials(
            endpoints,
            self.timeout,
            &self.credentials()?,
        )?)
    }

    /// The endpoints to ask: all of them, or only the `--node` one (usage error when out of
    /// range).
    pub fn selected_endpoints(&self) -> Result<Vec<String>, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::usage("no endpoints given (--endpoints)"));
        }
        match self.node {
            None => Ok(self.endpoints.clone()),
            Some(n) if n >= 1 && n <= self.endpoints.len() => {
                Ok(vec![self.endpoints[n - 1].clone()])
            }
            Some(n) => Err(Error::usage(format!(
                "--node {n} is out of range: {} endpoint(s) given, numbered from 1",
                self.endpoints.len()
            ))),
        }
    }

    /// A client over the selected endpoints.
    pub fn client(&self) -> Result<Client, Error> {
        self.client_for(&self.selected_endpoints()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::exit;
    use clap::Parser;

    fn ctx(args: &[&str]) -> Context {
        let cli = Cli::try_parse_from(["kvctl"].iter().chain(args).chain(&["status"])).unwrap();
        Context::new(&cli.global)
    }

    #[test]
    fn node_selects_one_endpoint() {
        let c = ctx(&["--endpoints", "a:1,b:2,c:3", "--node", "2"]);
        assert_eq!(c.selected_endpoints().unwrap(), ["b:2"]);
        let c = ctx(&["--endpoints", "a:1,b:2,c:3"]);
        assert_eq!(c.selected_endpoints().unwrap(), ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn node_out_of_range_is_usage() {
        for n in ["0", "4"] {
            let c = ctx(&["--endpoints", "a:1,b:2,c:3", "--node", n]);
            let e = c.selected_endpoints().unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE);
            assert!(e.to_string().contains("out of range"), "{e}");
        }
        let c = ctx(&["--endpoints", " , "]);
        assert_eq!(c.selected_endpoints().unwrap_err().exit_code(), exit::USAGE);
    }

    #[test]
    fn credentials_come_from_the_flags_and_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "okv_fromfile\n").unwrap();
        let file_arg = file.to_str().unwrap();
        let c = ctx(&[
            "--cacert",
            "ca.crt",
            "--cert",
            "c.crt",
            "--key",
            "c.key",
            "--token-file",
            file_arg,
        ]);
        let creds = c.credentials().unwrap();
        assert_eq!(
            creds.cacert.as_deref(),
            Some(std::path::Path::new("ca.crt"))
        );
        assert_eq!(creds.cert.as_deref(), Some(std::path::Path::new("c.crt")));
        assert_eq!(creds.key.as_deref(), Some(std::path::Path::new("c.key")));
        assert_eq!(creds.token.as_deref(), Some("okv_fromfile"));
        let c = ctx(&["--token", "okv_flag"]);
        assert_eq!(c.credentials().unwrap().token.as_deref(), Some("okv_flag"));
        // Neither the parsed flags nor the context show the token.
        let cli = Cli::try_parse_from(["kvctl", "--token", "okv_secret", "status"]).unwrap();
        assert!(!format!("{cli:?}").contains("okv_secret"));
        assert!(!format!("{:?}", Context::new(&cli.global)).contains("okv_secret"));
        // A missing token file is a usage error naming it.
        let missing = dir.path().join("nope");
        let c = ctx(&["--token-file", missing.to_str().unwrap()]);
        let e = c.client().err().unwrap();
        assert_eq!(e.exit_code(), exit::USAGE);
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn cert_and_key_go_together_and_one_token_source() {
        for args in [
            &["--cert", "c.crt"][..],
            &["--key", "c.key"],
            &["--token", "t", "--token-file", "f"],
        ] {
            let r = Cli::try_parse_from(["kvctl"].iter().chain(args).chain(&["status"]));
            assert!(r.is_err(), "{args:?}");
        }
    }

    /// A server answering 401 without the token and 403 with it.
    async fn refusing_server(token: &'static str) -> String {
        use axum::http::HeaderMap;
        let router = axum::Router::new().fallback(move |headers: HeaderMap| async move {
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            let (status, code) = if auth == Some(&format!("Bearer {token}")) {
                (403, "permission_denied")
            } else {
                (401, "unauthenticated")
            };
            let body = format!(r#"{{"error":{{"code":"{code}","message":"refused"}}}}"#);
            (axum::http::StatusCode::from_u16(status).unwrap(), body)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn refusals_exit_7() {
        let endpoint = refusing_server("okv_right").await;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "okv_right\n").unwrap();
        let file = file.to_str().unwrap();
        for args in [
            vec!["get", "k"],
            vec!["put", "k", "v"],
            vec!["--token", "okv_wrong", "delete", "k"],
            vec!["--token-file", file, "put", "k", "v"],
            vec!["--token-file", file, "status", "--all"],
        ] {
            let argv = ["kvctl", "--endpoints", &endpoint, "--timeout", "2s"];
            let cli = Cli::try_parse_from(argv.iter().chain(&args)).unwrap();
            assert_eq!(crate::run(cli).await, exit::NOT_PERMITTED, "{args:?}");
        }
        // The token file's token reached the server (403, not 401).
        let argv = [
            "kvctl",
            "--endpoints",
            &endpoint,
            "--token-file",
            file,
            "status",
        ];
        let cli = Cli::try_parse_from(argv).unwrap();
        let e = Context::new(&cli.global)
            .client()
            .unwrap()
            .put(b"k", b"v".to_vec())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    #[test]
    fn bad_endpoint_is_usage() {
        let c = ctx(&["--endpoints", "http://[::1"]);
        assert_eq!(c.client().err().unwrap().exit_code(), exit::USAGE);
    }
}
