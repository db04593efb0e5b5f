//! `get KEY`: prints a value (in JSON with its revisions); a missing key is an error
//! (exit 1), unlike etcdctl. Ranges (`get --prefix`) are `range.rs`.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::{Client, ClientError, Consistency};
use std::io::Write;

/// Reads `key` at `consistency` and prints its value.
pub async fn run(
    client: &Client,
    key: &[u8],
    consistency: Consistency,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    super::check_key(key)?;
    let read = client.get_kv(key, consistency).await.map_err(|e| match e {
        ClientError::NotFound => Error::KeyNotFound(key.to_vec()),
        e => Error::Client(e),
    })?;
    output::write_value(out, format, key, &read).map_err(Error::stdout)
}
