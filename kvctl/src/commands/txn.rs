//! `txn [FILE|-]`: a transaction from a file or stdin (JSON or etcdctl's text format, see
//! `txn_text`), printed like etcdctl's; compares that failed exit 6.

use super::txn_text;
use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::kv::{TxnRequest, MAX_TXN_BODY_BYTES};
use omnikv_common::Client;
use std::io::{Read, Write};

/// Reads a transaction of at most [`MAX_TXN_BODY_BYTES`] from `input` (named `source` in
/// errors) and parses it.
pub fn read(input: impl Read, source: &str) -> Result<TxnRequest, Error> {
    let mut bytes = Vec::new();
    input
        .take(MAX_TXN_BODY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            context: "cannot read the transaction",
            source,
        })?;
    if bytes.len() > MAX_TXN_BODY_BYTES {
        return Err(Error::usage(format!(
            "{source}: a transaction is at most {MAX_TXN_BODY_BYTES} bytes"
        )));
    }
    txn_text::parse(&bytes).map_err(|e| Error::usage(format!("{source}: {e}")))
}

/// Runs `txn`, prints its result, and fails with exit 6 when its compares did not hold.
pub async fn run(
    client: &Client,
    txn: &TxnRequest,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let r = client.txn(txn).await?;
    output::write_txn(out, format, txn, &r).map_err(Error::stdout)?;
    if r.succeeded {
        Ok(())
    } else {
        Err(Error::CompareFailed(
            "the transaction's compares did not hold: the failure operations ran".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_bounded() {
        let big = vec![b' '; MAX_TXN_BODY_BYTES + 1];
        let e = read(&big[..], "stdin").unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::USAGE);
        assert!(e.to_string().contains("at most"), "{e}");
        let e = read(&b"\nput a\n"[..], "t.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "usage: t.txt: line 2: usage: put KEY VALUE (quote a VALUE with spaces)"
        );
        assert_eq!(read(&b"\nput a 1\n"[..], "stdin").unwrap().success.len(), 1);
    }
}
