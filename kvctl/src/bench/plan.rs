//! The validated settings of a `kvctl bench` run, from its flags.

use crate::cli::{BenchArgs, KeyOrder};
use crate::exit::Error;
use std::time::Duration;

/// The measured duration when neither `--duration` nor `--ops` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// The validated run settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub clients: usize,
    pub connections: usize,
    /// Measured duration; `None`: until `ops` operations are done.
    pub duration: Option<Duration>,
    pub ops: Option<u64>,
    pub warmup: Duration,
    pub read_ratio: f64,
    pub keys: u64,
    pub value_size: usize,
    pub key_order: KeyOrder,
}

impl Plan {
    /// Checks the flags together and fills in the defaults.
    pub fn from_args(args: &BenchArgs) -> Result<Plan, Error> {
        let clients = args.clients as usize;
        let connections = args.connections.map_or(clients, |c| c as usize);
        if connections > clients {
            return Err(Error::usage(format!(
                "--connections {connections} is more than --clients {clients}"
            )));
        }
        let duration = match (args.duration, args.ops) {
            (None, None) => Some(DEFAULT_DURATION),
            (d, _) => d,
        };
        Ok(Plan {
            clients,
            connections,
            duration,
            ops: args.ops,
            warmup: args.warmup,
            read_ratio: args.read_ratio,
            keys: args.keys,
            value_size: args.value_size,
            key_order: args.key_order,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from(["kvctl", "bench"].iter().chain(args))?;
        match cli.command {
            Command::Bench(b) => Ok(b),
            other => panic!("{other:?}"),
        }
    }

    fn plan(args: &[&str]) -> Result<Plan, Error> {
        Plan::from_args(&parse(args).unwrap())
    }

    #[test]
    fn defaults() {
        let b = parse(&[]).unwrap();
        let p = Plan::from_args(&b).unwrap();
        assert_eq!(
            p,
            Plan {
                clients: 16,
                connections: 16,
                duration: Some(Duration::from_secs(10)),
                ops: None,
                warmup: Duration::from_secs(1),
                read_ratio: 0.0,
                keys: 10_000,
                value_size: 100,
                key_order: KeyOrder::Random,
            }
        );
        assert_eq!(b.threads, None);
    }

    #[test]
    fn flags() {
        let b = parse(&[
            "--clients",
            "8",
            "--connections",
            "2",
            "--duration",
            "500ms",
            "--ops",
            "1000",
            "--warmup",
            "0",
            "--read-ratio",
            "0.25",
            "--keys",
            "7",
            "--value-size",
            "0",
            "--threads",
            "3",
            "-o",
            "json",
        ])
        .unwrap();
        let p = Plan::from_args(&b).unwrap();
        assert_eq!((p.clients, p.connections), (8, 2));
        assert_eq!(p.duration, Some(Duration::from_millis(500)));
        assert_eq!(p.ops, Some(1000));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!((p.read_ratio, p.keys, p.value_size), (0.25, 7, 0));
        assert_eq!(b.threads, Some(3));
        // --ops alone: no duration limit.
        let p = plan(&["--ops", "5"]).unwrap();
        assert_eq!((p.duration, p.ops), (None, Some(5)));
        let p = plan(&["--duration", "2m"]).unwrap();
        assert_eq!((p.duration, p.ops), (Some(Duration::from_secs(120)), None));
        // --connections defaults to --clients.
        assert_eq!(plan(&["--clients", "3"]).unwrap().connections, 3);
        for r in ["0", "1", "1.0", "0.5"] {
            assert!(parse(&["--read-ratio", r]).is_ok(), "{r}");
        }
    }

    #[test]
    fn bad_flags() {
        for args in [
            &["--clients", "0"][..],
            &["--connections", "0"],
            &["--ops", "0"],
            &["--duration", "0"],
            &["--duration", "soon"],
            &["--warmup", "-1"],
            &["--read-ratio", "1.5"],
            &["--read-ratio", "-0.1"],
            &["--read-ratio", "NaN"],
            &["--keys", "0"],
            &["--value-size", "-1"],
            &["--threads", "0"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
        let e = plan(&["--clients", "2", "--connections", "3"]).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
    }
}
