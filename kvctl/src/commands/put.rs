//! `put KEY VALUE`: writes a value; `-` as VALUE reads it from stdin.

use crate::cli::OutputFormat;
use crate::exit::Error;
use crate::output;
use omnikv_common::Client;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;

/// Reads all of `r`, byte for byte (no trimming).
pub fn read_value(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

/// The value named by a command-line VALUE: its bytes, or all of `stdin` when it is `-`.
pub fn value_from_arg(arg: &OsStr, stdin: impl Read) -> Result<Vec<u8>, Error> {
    if arg == "-" {
        read_value(stdin).map_err(|source| Error::Io {
            context: "cannot read the value from stdin",
            source,
        })
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

/// Writes `value` under `key` and prints the result.
pub async fn run(
    client: &Client,
    key: &[u8],
    value: Vec<u8>,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    super::check_key(key)?;
    let w = client.put(key, value).await?;
    output::write_write_result(out, format, &w, false).map_err(Error::stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_stdin_exactly() {
        let bytes = b"  line one\nline two\n\n\xff\x00 \r\n".to_vec();
        assert_eq!(read_value(Cursor::new(bytes.clone())).unwrap(), bytes);
        assert_eq!(read_value(Cursor::new(Vec::new())).unwrap(), b"");
    }

    #[test]
    fn dash_means_stdin() {
        let stdin = Cursor::new(b"from stdin\n".to_vec());
        assert_eq!(
            value_from_arg(OsStr::new("-"), stdin).unwrap(),
            b"from stdin\n"
        );
        let unused = Cursor::new(b"ignored".to_vec());
        assert_eq!(value_from_arg(OsStr::new("v 1"), unused).unwrap(), b"v 1");
    }

    #[test]
    fn non_utf8_args_are_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let arg = std::ffi::OsString::from_vec(b"\xff\xfe".to_vec());
        assert_eq!(value_from_arg(&arg, std::io::empty()).unwrap(), b"\xff\xfe");
    }
}
