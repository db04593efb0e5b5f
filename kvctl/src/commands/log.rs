//! `log [--limit N]`: the recent decided log of the first replica that answers.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::Client;
use std::io::Write;

/// Fetches at most `limit` log entries and prints them.
pub async fn run(
    client: &Client,
    limit: usize,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let log = client.log(limit).await?;
    output::write_log(out, format, &log).map_err(Error::stdout)
}
