//! The `kvd restore` command line: the source (a snapshot file, or a survivor's data dir
//! behind the loud `--force-new-cluster`), then the same flags and env kvd itself takes,
//! naming the member to seed. Exit codes follow kvctl's table: 0 ok, 2 usage or a local I/O
//! error, 5 a refused snapshot (corrupt, truncated, inconsistent, unknown format), 1 a
//! storage failure.

use super::restore::{restore, Restored, Source};
use crate::config::Config;
use clap::Parser;
use std::path::PathBuf;
use tracing::{error, info, warn};

/// What `--from-data-dir` without `--force-new-cluster` is told.
const FORCE_WARNING: &str = "\
rebuilding a cluster from one replica's data dir is for a majority lost for good, and can \
lose data: an acknowledged write the survivor never received is gone, and writes it had \
accepted without learning the outcome are applied (their clients were told \
`indeterminate`). The old members must never come back into service (the new cluster has a \
new cluster id and refuses them). Stop the survivor's kvd first. If that is what you want, \
add --force-new-cluster.";

/// kvd restore: seed the data dir of one member of a NEW cluster (new cluster id, same keys,
/// revisions, dedup records and leases) from a snapshot file, or from a surviving replica's
/// data dir with --force-new-cluster. Run it once per member with the same source and the
/// flags/env that member's kvd will run with (PID, NODES, KVD_DATA_DIR, KVD_PEERS...), then
/// start kvd on the seeded dirs.
#[derive(Parser, Debug)]
#[command(name = "kvd restore", bin_name = "kvd restore", version)]
pub struct RestoreArgs {
    /// The snapshot file (from `kvctl snapshot save`).
    #[arg(conflicts_with = "from_data_dir")]
    pub file: Option<PathBuf>,

    /// DISASTER RECOVERY ONLY: take the state from this stopped replica's data dir instead of
    /// a snapshot file (when the majority is gone for good). Needs --force-new-cluster.
    #[arg(long, env = "KVD_RESTORE_FROM_DATA_DIR")]
    pub from_data_dir: Option<PathBuf>,

    /// Acknowledge that --from-data-dir makes a new cluster out of one replica alone:
    /// acknowledged writes it never received are lost.
    #[arg(long)]
    pub force_new_cluster: bool,

    #[command(flatten)]
    pub kvd: Config,
}

impl RestoreArgs {
    fn source(&self) -> Result<Source, String> {
        match (&self.file, &self.from_data_dir, self.force_new_cluster) {
            (Some(f), None, false) => Ok(Source::File(f.clone())),
            (None, Some(d), true) => Ok(Source::DataDir(d.clone())),
            (None, Some(_), false) => Err(format!("refusing --from-data-dir: {FORCE_WARNING}")),
            (_, None, true) => Err("--force-new-cluster goes with --from-data-dir DIR".into()),
            _ => Err(
                "name a snapshot FILE (or, for disaster recovery, --from-data-dir DIR \
                      --force-new-cluster)"
                    .into(),
            ),
        }
    }
}

/// Runs `kvd restore` with `args` (the program name first) and returns the exit code. What it
/// did and why it refused go to the log (stderr), like everything kvd says.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    crate::logging::init();
    let args = match RestoreArgs::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let source = match args.source() {
        Ok(s) => s,
        Err(msg) => {
            error!("{msg}");
            return 2;
        }
    };
    if let Source::DataDir(dir) = &source {
        warn!(
            "--force-new-cluster: building a new cluster from {} alone; writes it never \
             received are lost",
            dir.display()
        );
    }
    match restore(&source, &args.kvd) {
        Ok(r) => {
            log_summary(&r);
            0
        }
        Err(e) => {
            error!("{e}");
            e.exit_code()
        }
    }
}

fn log_summary(r: &Restored) {
    let counts: Vec<String> = r.counts.iter().map(|(n, c)| format!("{n}={c}")).collect();
    info!(
        "restored pid {} into {}: cluster {:016x} (from {:016x}), revision {}, {} keys, \
         state hash {:016x}, items {}",
        r.pid,
        r.data_dir.display(),
        r.cluster_id,
        r.source_cluster_id,
        r.revision,
        r.keys,
        r.state_hash,
        counts.join(" ")
    );
    if r.tail_applied > 0 || r.undecided_applied > 0 {
        info!(
            "survivor's log: {} entries it knew decided and {} it had only accepted applied \
             on top of its state",
            r.tail_applied, r.undecided_applied
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(extra: &[&str]) -> Result<RestoreArgs, clap::Error> {
        let base = ["kvd restore", "--pid", "1", "--nodes", "1,2,3"];
        RestoreArgs::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn a_file_or_a_forced_data_dir_and_nothing_else() {
        RestoreArgs::command().debug_assert();
        assert!(matches!(
            parse(&["backup.snap"]).unwrap().source(),
            Ok(Source::File(_))
        ));
        assert!(matches!(
            parse(&["--from-data-dir", "d", "--force-new-cluster"])
                .unwrap()
                .source(),
            Ok(Source::DataDir(_))
        ));
        let unforced = parse(&["--from-data-dir", "d"])
            .unwrap()
            .source()
            .unwrap_err();
        assert!(unforced.contains("--force-new-cluster"), "{unforced}");
        assert!(parse(&["--force-new-cluster"]).unwrap().source().is_err());
        assert!(parse(&[]).unwrap().source().is_err());
        assert!(parse(&["f.snap", "--from-data-dir", "d"]).is_err());
    }
}
