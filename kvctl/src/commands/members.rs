//! `members`: the current configuration as the first replica that answers knows it.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::Client;
use std::io::Write;

pub async fn run(client: &Client, format: OutputFormat, out: &mut dyn Write) -> Result<(), Error> {
    let m = client.members().await?;
    output::write_members(out, format, &m).map_err(Error::stdout)
}
