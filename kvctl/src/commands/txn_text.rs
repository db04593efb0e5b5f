//! `kvctl txn` input: the API's JSON body as is, or etcdctl's text format, read into a
//! `TxnRequest`. The text format, one item per line:
//!
//! ```text
//! mod("cfg/leader") = "0"          compares: val|value, mod|m, create|c, version|ver
//! val("cfg/mode") != "off"         with = (==), !=, <, >; operands quoted or bare
//!                                  a blank line
//! put cfg/leader "node 1"          success operations: put K V, del K [END] [--prefix],
//! get cfg/ --prefix --keys-only    get K [END] [--prefix] [--limit N] [--keys-only] [--count-only]
//!                                  a blank line
//! get cfg/leader                   failure operations
//! ```
//!
//! Quoted strings take Go-style escapes (`\"`, `\\`, `\n`, `\t`, `\r`, `\0`, `\xHH`). Errors
//! name the line.

use omnikv_common::kv::{
    Bytes64, Compare, CompareOp, CompareTarget, DeleteOp, GetOp, PutOp, RangeSpec, TxnOp,
    TxnRequest,
};

/// Parses a transaction: JSON when its first non-blank byte is `{`, else the text format.
pub fn parse(input: &[u8]) -> Result<TxnRequest, String> {
    if input.trim_ascii_start().starts_with(b"{") {
        return serde_json::from_slice(input).map_err(|e| format!("bad transaction JSON: {e}"));
    }
    parse_text(input)
}

/// Parses etcdctl's text format (module docs).
pub fn parse_text(input: &[u8]) -> Result<TxnRequest, String> {
    let mut txn = TxnRequest::default();
    let mut section = 0;
    let mut last_text_line = 0;
    let mut lines: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
    if input.ends_with(b"\n") {
        lines.pop();
    }
    for (i, line) in lines.into_iter().enumerate() {
        let n = i + 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            section += 1;
            continue;
        }
        let at = |e: String| format!("line {n}: {e}");
        match section {
            0 => txn.compare.push(compare(line).map_err(at)?),
            1 => txn.success.push(op(line).map_err(at)?),
            2 => txn.failure.push(op(line).map_err(at)?),
            _ => {
                return Err(at(format!(
                    "text after the failure operations (line {last_text_line} ended them with \
                     the blank line after it)"
                )))
            }
        }
        last_text_line = n;
    }
    Ok(txn)
}

/// A line cut into tokens: bare words and quoted strings (as bytes), and the punctuation of
/// compares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Open,
    Close,
    Op(CompareOp, &'static str),
}

fn tokens(line: &[u8], punctuation: bool) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b == b'"' {
            let (s, next) = quoted(line, i + 1)?;
            out.push(Token::Quoted(s));
            i = next;
        } else if punctuation && (b == b'(' || b == b')') {
            out.push(if b == b'(' { Token::Open } else { Token::Close });
            i += 1;
        } else if punctuation && matches!(b, b'=' | b'!' | b'<' | b'>') {
            let two = line.get(i..i + 2).unwrap_or_default();
            let (op, text, len) = match (b, two) {
                (_, b"==") => (CompareOp::Equal, "==", 2),
                (_, b"!=") => (CompareOp::NotEqual, "!=", 2),
                (b'=', _) => (CompareOp::Equal, "=", 1),
                (b'<', _) => (CompareOp::Less, "<", 1),
                (b'>', _) => (CompareOp::Greater, ">", 1),
                _ => return Err("`!` must be followed by `=`".into()),
            };
            out.push(Token::Op(op, text));
            i += len;
        } else {
            let start = i;
            while i < line.len()
                && !line[i].is_ascii_whitespace()
                && line[i] != b'"'
                && !(punctuation && b"()=!<>".contains(&line[i]))
            {
                i += 1;
            }
            out.push(Token::Word(line[start..i].to_vec()));
        }
    }
    Ok(out)
}

/// The string opened by a quote before `start`, unescaped, and the index after its closing
/// quote.
fn quoted(line: &[u8], start: usize) -> Result<(Vec<u8>, usize), String> {
    let mut s = Vec::new();
    let mut i = start;
    loop {
        match line.get(i) {
            None => return Err("a quoted string is not closed".into()),
            Some(b'"') => return Ok((s, i + 1)),
            Some(b'\\') => {
                let esc = *line.get(i + 1).ok_or("a line ends inside an escape")?;
                i += 2;
                s.push(match esc {
                    b'"' | b'\\' | b'\'' => esc,
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'0' => 0,
                    b'x' => {
                        let hex = line
                            .get(i..i + 2)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or("\\x takes two hex digits")?;
                        i += 2;
                        hex
                    }
                    other => {
                        return Err(format!(
                            "unknown escape \\{} in a quoted string",
                            char::from(other).escape_default()
                        ))
                    }
                });
            }
            Some(&b) => {
                s.push(b);
                i += 1;
            }
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn number(b: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{:?} is not a number", text(b)))
}

fn key(b: Vec<u8>) -> Result<Bytes64, String> {
    if b.is_empty() {
        return Err("the key must not be empty".into());
    }
    Ok(Bytes64(b))
}

/// `target("key") op operand`.
fn compare(line: &[u8]) -> Result<Compare, String> {
    let usage = "a compare is TARGET(\"KEY\") OP VALUE, e.g. mod(\"k\") > \"0\" \
                 (TARGET: val, mod, create, version; OP: =, !=, <, >)";
    let t = tokens(line, true)?;
    let [Token::Word(target), Token::Open, k, Token::Close, Token::Op(op, _), operand] = &t[..]
    else {
        return Err(usage.into());
    };
    let (Token::Word(k) | Token::Quoted(k)) = k else {
        return Err(usage.into());
    };
    let (Token::Word(operand) | Token::Quoted(operand)) = operand else {
        return Err(usage.into());
    };
    let target = match target.as_slice() {
        b"val" | b"value" => CompareTarget::Value(Bytes64(operand.clone())),
        b"mod" | b"m" => CompareTarget::ModRevision(number(operand)?),
        b"create" | b"c" => CompareTarget::CreateRevision(number(operand)?),
        b"version" | b"ver" => CompareTarget::Version(number(operand)?),
        other => return Err(format!("unknown compare target {:?}; {usage}", text(other))),
    };
    Ok(Compare {
        key: key(k.clone())?,
        op: *op,
        target,
    })
}

/// The flags and positional words of an operation, after its name.
struct OpArgs {
    words: Vec<Vec<u8>>,
    prefix: bool,
    prev: bool,
    keys_only: bool,
    count_only: bool,
    limit: Option<u64>,
}

fn op_args(name: &str, rest: Vec<Token>, allowed: &[&str]) -> Result<OpArgs, String> {
    let mut a = OpArgs {
        words: Vec::new(),
        prefix: false,
        prev: false,
        keys_only: false,
        count_only: false,
        limit: None,
    };
    let mut rest = rest.into_iter();
    while let Some(t) = rest.next() {
        let word = match t {
            Token::Quoted(w) => {
                a.words.push(w);
                continue;
            }
            Token::Word(w) => w,
            _ => unreachable!("no punctuation tokens in operations"),
        };
        let Some(flag) = word.strip_prefix(b"--") else {
            a.words.push(word);
            continue;
        };
        let flag = text(flag);
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.as_bytes().to_vec())),
            None => (flag, None),
        };
        if !allowed.contains(&flag.as_str()) {
            return Err(format!(
                "{name} takes no --{flag} (its flags: {})",
                allowed
                    .iter()
                    .map(|f| format!("--{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match flag.as_str() {
            "prefix" => a.prefix = true,
            "prev-kv" => a.prev = true,
            "keys-only" => a.keys_only = true,
            "count-only" => a.count_only = true,
            "limit" => {
                let v = match inline {
                    Some(v) => v,
                    None => match rest.next() {
                        Some(Token::Word(v) | Token::Quoted(v)) => v,
                        _ => return Err("--limit takes a number".into()),
                    },
                };
                a.limit = Some(number(&v)?);
            }
            _ => unreachable!("every allowed flag is handled"),
        }
    }
    Ok(a)
}

/// A range from `KEY [END] [--prefix]`.
fn range(name: &str, a: &mut OpArgs) -> Result<RangeSpec, String> {
    let usage = || format!("usage: {name} KEY [END] [--prefix]");
    let mut words = std::mem::take(&mut a.words).into_iter();
    let k = key(words.next().ok_or_else(usage)?)?;
    let end = words.next().map(Bytes64);
    if words.next().is_some() {
        return Err(usage());
    }
    if end.is_some() && a.prefix {
        return Err(format!("{name}: END and --prefix exclude each other"));
    }
    Ok(RangeSpec {
        key: k,
        end,
        prefix: a.prefix,
    })
}

/// `put K V [--prev-kv]`, `del K [END] [--prefix] [--prev-kv]`, `get K [END] [--prefix]
/// [--limit N] [--keys-only] [--count-only]`.
fn op(line: &[u8]) -> Result<TxnOp, String> {
    let mut t = tokens(line, false)?.into_iter();
    let name = match t.next() {
        Some(Token::Word(w)) => text(&w),
        _ => return Err("an operation starts with put, del or get".into()),
    };
    let rest: Vec<Token> = t.collect();
    match name.as_str() {
        "put" => {
            let a = op_args("put", rest, &["prev-kv"])?;
            let [k, v] = <[Vec<u8>; 2]>::try_from(a.words)
                .map_err(|_| "usage: put KEY VALUE (quote a VALUE with spaces)".to_string())?;
            Ok(TxnOp::Put(PutOp {
                key: key(k)?,
                value: Bytes64(v),
                prev: a.prev,
                lease: 0,
            }))
        }
        "del" | "delete" => {
            let mut a = op_args("del", rest, &["prefix", "prev-kv"])?;
            Ok(TxnOp::Delete(DeleteOp {
                range: range("del", &mut a)?,
                prev: a.prev,
            }))
        }
        "get" => {
            let mut a = op_args("get", rest, &["prefix", "limit", "keys-only", "count-only"])?;
            if a.keys_only && a.count_only {
                return Err("get: --keys-only and --count-only exclude each other".into());
            }
            Ok(TxnOp::Get(GetOp {
                range: range("get", &mut a)?,
                limit: a.limit,
                keys_only: a.keys_only,
                count_only: a.count_only,
            }))
        }
        other => Err(format!("unknown operation {other:?} (put, del or get)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(k: &str, prefix: bool) -> TxnOp {
        TxnOp::Get(GetOp {
            range: RangeSpec {
                key: k.into(),
                end: None,
                prefix,
            },
            limit: None,
            keys_only: false,
            count_only: false,
        })
    }

    #[test]
    fn etcdctl_example() {
        let t = parse(
            b"mod(\"key1\") > \"0\"\n\
              val(\"key1\") = \"overwrote-key1\"\n\
              version(\"k 2\") != 3\r\n\
              create(\"k\")<\"9\"\n\
              \n\
              put key1 \"overwrote \\\"key1\\\"\\x21\"\n\
              get key1 --prefix\n\
              del key1 key9\n\
              \n\
              put key2 \"some extra key\" --prev-kv\n\
              get cfg/ --prefix --limit 2 --keys-only\n",
        )
        .unwrap();
        assert_eq!(
            t.compare,
            vec![
                Compare {
                    key: "key1".into(),
                    op: CompareOp::Greater,
                    target: CompareTarget::ModRevision(0)
                },
                Compare {
                    key: "key1".into(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value("overwrote-key1".into())
                },
                Compare {
                    key: "k 2".into(),
                    op: CompareOp::NotEqual,
                    target: CompareTarget::Version(3)
                },
                Compare {
                    key: "k".into(),
                    op: CompareOp::Less,
                    target: CompareTarget::CreateRevision(9)
                },
            ]
        );
        assert_eq!(
            t.success,
            vec![
                TxnOp::Put(PutOp {
                    key: "key1".into(),
                    value: "overwrote \"key1\"!".into(),
                    prev: false,
                    lease: 0,
                }),
                get("key1", true),
                TxnOp::Delete(DeleteOp {
                    range: RangeSpec {
                        key: "key1".into(),
                        end: Some("key9".into()),
                        prefix: false
                    },
                    prev: false
                }),
            ]
        );
        assert_eq!(
            t.failure,
            vec![
                TxnOp::Put(PutOp {
                    key: "key2".into(),
                    value: "some extra key".into(),
                    prev: true,
                    lease: 0,
                }),
                TxnOp::Get(GetOp {
                    range: RangeSpec {
                        key: "cfg/".into(),
                        end: None,
                        prefix: true
                    },
                    limit: Some(2),
                    keys_only: true,
                    count_only: false
                }),
            ]
        );
    }

    #[test]
    fn sections_may_be_empty() {
        let t = parse(b"\nput a 1\n").unwrap();
        assert!(t.compare.is_empty() && t.failure.is_empty());
        assert_eq!(t.success.len(), 1);
        let t = parse(b"\n\nget a\n\n\n").unwrap();
        assert_eq!(t.failure, vec![get("a", false)]);
        assert_eq!(parse(b"").unwrap(), TxnRequest::default());
    }

    #[test]
    fn json_is_taken_as_is() {
        let t = parse(br#"  {"compare": [{"key": "YQ==", "exists": false}], "success": [{"put": {"key": "YQ==", "value": "MQ=="}}]}"#).unwrap();
        assert_eq!(t.compare[0].target, CompareTarget::Exists(false));
        assert_eq!(t.success.len(), 1);
        assert!(parse(b"{\"compare\": 3}")
            .unwrap_err()
            .starts_with("bad transaction JSON"));
    }

    #[test]
    fn errors_name_the_line() {
        for (input, line, what) in [
            (&b"mod(\"k\") > x\n"[..], 1, "not a number"),
            (b"mod(\"k\") >> 1\n", 1, "a compare is"),
            (b"lease(\"k\") = 1\n", 1, "unknown compare target"),
            (b"val(\"\") = \"x\"\n", 1, "must not be empty"),
            (b"val(\"k\") = \"x\n", 1, "not closed"),
            (b"val(\"k\") = \"\\q\"\n", 1, "unknown escape"),
            (b"val(\"k\") ! \"x\"\n", 1, "`!` must be followed"),
            (b"\nput a\n", 2, "usage: put KEY VALUE"),
            (b"\nput a b c\n", 2, "usage: put KEY VALUE"),
            (b"\nfrob a\n", 2, "unknown operation"),
            (b"\nget a --limit\n", 2, "--limit takes a number"),
            (b"\nget a --limit x\n", 2, "not a number"),
            (
                b"\nget a --keys-only --count-only\n",
                2,
                "exclude each other",
            ),
            (b"\nget a b --prefix\n", 2, "exclude each other"),
            (b"\nget a b c\n", 2, "usage: get KEY"),
            (b"\nput a 1 --prefix\n", 2, "put takes no --prefix"),
            (b"\ndel a --limit 3\n", 2, "del takes no --limit"),
            (
                b"\n\nget a\n\nget b\n",
                5,
                "text after the failure operations",
            ),
        ] {
            let e = parse(input).unwrap_err();
            assert!(e.starts_with(&format!("line {line}: ")), "{input:?}: {e}");
            assert!(e.contains(what), "{input:?}: {e}");
        }
    }
}
