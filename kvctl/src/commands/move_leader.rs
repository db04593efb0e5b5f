//! `move-leader N` (one-shot and in the shell): ask the leader to hand leadership to member
//! N; prints the leader once N leads. Exit 5 when N is not a member, 3 when the hand-off
//! could not be done in time (N unreachable, behind, or refusing).

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::{Client, MoveLeaderResult};
use std::io::Write;

/// Asks the leader among `client`'s endpoints to hand leadership to `to`, and prints the
/// outcome.
pub async fn run(
    client: &Client,
    to: u64,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let result = client.move_leader(to).await?;
    write(out, format, &result).map_err(Error::stdout)
}

/// `OK: leader 2 (was 1, moved in 23 ms)`, or `OK: leader 2 (already)`; JSON: the API's answer.
fn write(out: &mut dyn Write, format: OutputFormat, r: &MoveLeaderResult) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => output::json_line(out, r),
        OutputFormat::Text if r.previous == r.leader => {
            writeln!(out, "OK: leader {} (already)", r.leader)
        }
        OutputFormat::Text => writeln!(
            out,
            "OK: leader {} (was {}, moved in {} ms)",
            r.leader, r.previous, r.elapsed_ms
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_says_who_leads_and_from_whom() {
        let mut out = Vec::new();
        let r = MoveLeaderResult {
            leader: 2,
            previous: 1,
            config_id: 1,
            elapsed_ms: 23,
        };
        write(&mut out, OutputFormat::Text, &r).unwrap();
        assert_eq!(out, b"OK: leader 2 (was 1, moved in 23 ms)\n");
        out.clear();
        let same = MoveLeaderResult { previous: 2, ..r };
        write(&mut out, OutputFormat::Text, &same).unwrap();
        assert_eq!(out, b"OK: leader 2 (already)\n");
    }
}
