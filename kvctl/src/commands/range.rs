//! `get --prefix P | --from A [--to B]` (every page to the end, or `--limit` keys) and
//! `delete --prefix P | --from A [--to B]` (one write).

use crate::cli::{OutputFormat, RangeArgs};
use crate::exit::Error;
use crate::output::{self, ListMode, Listing};
use omnikv_common::client::{KeySet, RangeOpts};
use omnikv_common::{Client, Consistency};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

/// How to list a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// At most this many keys in all.
    pub limit: Option<u64>,
    pub mode: ListMode,
    /// Keys per request (`None`: kvd's default, its maximum).
    pub page_size: Option<u64>,
}

/// The key set named by KEY or by `--prefix` / `--from [--to]` (clap has already made sure
/// exactly one is given).
pub fn key_set(key: Option<&[u8]>, r: &RangeArgs) -> Result<KeySet, Error> {
    let bytes = |s: &std::ffi::OsString| s.as_bytes().to_vec();
    match (key, &r.prefix, &r.from) {
        (Some(k), None, None) => {
            super::check_key(k)?;
            Ok(KeySet::Key(k.to_vec()))
        }
        (None, Some(p), None) => Ok(KeySet::Prefix(bytes(p))),
        (None, None, Some(a)) => Ok(KeySet::Span {
            start: bytes(a),
            end: r.to.as_ref().map(bytes),
        }),
        _ => Err(Error::usage(
            "name one key, or --prefix P, or --from A [--to B]",
        )),
    }
}

/// Reads `keys` page by page, following continuation tokens until the range ends or
/// `list.limit` keys were read, and prints them.
pub async fn get(
    client: &Client,
    keys: &KeySet,
    list: &List,
    consistency: Consistency,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let listing = read(client, keys, list, consistency).await?;
    output::write_listing(out, format, &listing, list.mode).map_err(Error::stdout)
}

/// Reads `keys` page by page, following continuation tokens until the range ends or
/// `list.limit` keys were read. Each page is read at its own revision; the listing's is the
/// first page's.
pub async fn read(
    client: &Client,
    keys: &KeySet,
    list: &List,
    consistency: Consistency,
) -> Result<Listing, Error> {
    let mut opts = RangeOpts {
        limit: None,
        keys_only: list.mode == ListMode::KeysOnly,
        count_only: list.mode == ListMode::CountOnly,
    };
    let mut listing: Option<Listing> = None;
    let mut after: Option<String> = None;
    loop {
        let read = listing.as_ref().map_or(0, |l| l.kvs.len() as u64);
        let left = list.limit.map(|l| l.saturating_sub(read));
        opts.limit = match (left, list.page_size) {
            (Some(l), Some(p)) => Some(l.min(p)),
            (l, p) => l.or(p),
        };
        let page = client
            .range_page(keys, &opts, after.as_deref(), consistency)
            .await?;
        let l = listing.get_or_insert_with(|| Listing {
            revision: page.revision,
            count: page.count,
            more: false,
            kvs: Vec::new(),
        });
        let got = page.kvs.len();
        l.kvs.extend(page.kvs);
        let full = list.limit.is_some_and(|limit| l.kvs.len() as u64 >= limit);
        match page.r#continue {
            Some(token) if page.more && got > 0 && !full && !opts.count_only => after = Some(token),
            _ => {
                l.more = page.more;
                break;
            }
        }
    }
    Ok(listing.expect("at least one page was read"))
}

/// Deletes every key of `keys` (one revision) and prints how many.
pub async fn delete(
    client: &Client,
    keys: &KeySet,
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let d = client.delete_range(keys, false).await?;
    output::write_deleted(out, format, &d).map_err(Error::stdout)
}
