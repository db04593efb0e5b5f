//! `delete KEY`: deleting a missing key succeeds (`existed: false`), like etcd.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::Client;
use std::io::Write;

/// Deletes `key` and prints the result.
pub async fn run(
    client: &Client,
    key: &[u8],
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    super::check_key(key)?;
    let w = client.delete(key).await?;
    output::write_write_result(out, format, &w, true).map_err(Error::stdout)
}
