//! The settings every command runs with, from the global flags: which endpoints, how to read,
//! how to print, how long to wait.

use crate::cli::{self, GlobalOpts, OutputFormat};
use crate::exit::Error;
use omnikv_common::{Client, Consistency};
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
}

impl Context {
    pub fn new(g: &GlobalOpts) -> Self {
        Context {
            endpoints: cli::split_endpoints(&g.endpoints),
            node: g.node,
            consistency: g.consistency,
            output: g.output,
            timeout: g.timeout,
        }
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
        Ok(Client::new(&self.selected_endpoints()?, self.timeout)?)
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
    fn bad_endpoint_is_usage() {
        let c = ctx(&["--endpoints", "http://[::1"]);
        assert_eq!(c.client().err().unwrap().exit_code(), exit::USAGE);
    }
}
