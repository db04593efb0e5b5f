//! The query string of range requests, read as bytes: parameters are percent-encoded like
//! keys in paths (RFC 3986; `+` is a plus sign, not a space), so any key bytes round-trip.

use super::{err, Error};
use omnikv_common::api::ErrorCode;
use omnikv_common::keys::decode_key;
use std::collections::HashMap;

/// Decoded query parameters; a repeated parameter is refused.
pub struct QueryParams {
    params: HashMap<String, Vec<u8>>,
}

impl QueryParams {
    /// Parses `query` (the part after `?`), allowing only the names in `known`.
    pub fn parse(query: Option<&str>, known: &[&str]) -> Result<QueryParams, Error> {
        let mut params = HashMap::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            if !known.contains(&name) {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown query parameter {name:?} (known: {})",
                        known.join(", ")
                    ),
                ));
            }
            let value = decode_key(raw).ok_or_else(|| {
                err(
                    ErrorCode::InvalidRequest,
                    format!("malformed percent-encoding in parameter {name}"),
                )
            })?;
            if params.insert(name.to_string(), value).is_some() {
                return Err(err(
                    ErrorCode::InvalidRequest,
                    format!("parameter {name} given twice"),
                ));
            }
        }
        Ok(QueryParams { params })
    }

    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.params.get(name).map(Vec::as_slice)
    }

    /// A parameter that must be UTF-8 text.
    pub fn text(&self, name: &str) -> Result<Option<&str>, Error> {
        self.bytes(name)
            .map(|b| {
                std::str::from_utf8(b).map_err(|_| {
                    err(
                        ErrorCode::InvalidRequest,
                        format!("parameter {name} is not text"),
                    )
                })
            })
            .transpose()
    }

    /// `true`, `false`, or absent (false).
    pub fn flag(&self, name: &str) -> Result<bool, Error> {
        match self.text(name)? {
            None | Some("false") => Ok(false),
            Some("true") | Some("") => Ok(true),
            Some(other) => Err(err(
                ErrorCode::InvalidRequest,
                format!("parameter {name} must be true or false, not {other:?}"),
            )),
        }
    }

    pub fn u64(&self, name: &str) -> Result<Option<u64>, Error> {
        self.text(name)?
            .map(|t| {
                t.parse::<u64>().map_err(|_| {
                    err(
                        ErrorCode::InvalidRequest,
                        format!("parameter {name} must be an unsigned integer, not {t:?}"),
                    )
                })
            })
            .transpose()
    }

    /// `consistency=linearizable|local` (default linearizable): true when linearizable.
    pub fn linearizable(&self) -> Result<bool, Error> {
        match self.text("consistency")? {
            None | Some("linearizable") => Ok(true),
            Some("local") => Ok(false),
            Some(other) => Err(err(
                ErrorCode::InvalidRequest,
                format!("unknown consistency {other:?} (linearizable or local)"),
            )),
        }
    }
}
