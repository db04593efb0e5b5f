//! `status [--all]`: one replica's view of the cluster, or every endpoint's.

use crate::cli::OutputFormat;
use crate::context::Context;
use crate::exit::Error;
use crate::output::{self, EndpointStatus};
use omnikv_common::{Client, ClientError};
use std::io::Write;

/// Prints the status of the first endpoint of `client` that answers.
pub async fn run(client: &Client, format: OutputFormat, out: &mut dyn Write) -> Result<(), Error> {
    let s = client.status().await?;
    output::write_status(out, format, &s).map_err(Error::stdout)
}

/// Asks every endpoint concurrently (one client each, with the context's timeout and
/// credentials), answers in the
/// order given. A malformed endpoint is a usage error before anything is sent.
pub async fn query_all(ctx: &Context, endpoints: &[String]) -> Result<Vec<EndpointStatus>, Error> {
    let clients = endpoints
        .iter()
        .map(|ep| ctx.client_for(std::slice::from_ref(ep)))
        .collect::<Result<Vec<_>, _>>()?;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(async move { c.status().await }))
        .collect();
    let mut rows = Vec::with_capacity(tasks.len());
    for (ep, task) in endpoints.iter().zip(tasks) {
        let r = match task.await {
            Ok(r) => r.map_err(Error::Client),
            Err(e) => Err(Error::Client(ClientError::Unavailable(format!(
                "status task failed: {e}"
            )))),
        };
        rows.push((ep.clone(), r));
    }
    Ok(rows)
}

/// `status --all`: prints one row per endpoint; fails (unavailable) when none answered.
pub async fn run_all(
    ctx: &Context,
    endpoints: &[String],
    out: &mut dyn Write,
) -> Result<(), Error> {
    let rows = query_all(ctx, endpoints).await?;
    output::write_status_all(out, ctx.output, &rows).map_err(Error::stdout)?;
    if rows.iter().any(|(_, r)| r.is_ok()) {
        Ok(())
    } else if let Some((_, Err(e))) = rows
        .iter()
        .find(|(_, r)| matches!(r, Err(Error::Client(ClientError::NotPermitted(_)))))
    {
        // Refused, not down: say so (exit 7), once, rather than "none answered".
        Err(Error::Client(ClientError::NotPermitted(
            e.to_string()
                .trim_start_matches("not permitted: ")
                .to_string(),
        )))
    } else {
        Err(Error::Client(ClientError::Unavailable(format!(
            "none of {} endpoints answered",
            rows.len()
        ))))
    }
}
