//! Parsers and models for the reference histories in `shared/data/` (see its README): the
//! Jepsen etcd register logs (read/write/cas) and the multi-key get/put/append histories.
//! Event times are line numbers, which preserves the logs' real-time order.

use crate::linearizability::{Model, Operation, Outcome};
use std::collections::HashMap;

/// An event of a history being assembled: an invocation waiting for its completion.
struct Pending<I> {
    call: u64,
    input: I,
    line: usize,
}

// ---------------------------------------------------------------------------------------
// Jepsen etcd: a single register with compare-and-set.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    Read,
    Write(i64),
    /// Compare-and-set: if the value is `.0`, make it `.1`.
    Cas(i64, i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    /// The value read; `None` when the register is absent (`nil`).
    Read(Option<i64>),
    Written,
    /// Whether the compare succeeded (`:ok`) or definitely failed (`:fail`).
    Cas(bool),
}

pub type RegisterOp = Operation<RegisterInput, RegisterOutput>;

/// The etcd register of the Jepsen test: starts absent; a failed cas is a real answer
/// ("the value was not A") and changes nothing.
pub struct RegisterModel;

impl Model for RegisterModel {
    type Key = ();
    type Input = RegisterInput;
    type Output = RegisterOutput;
    type State = Option<i64>;

    fn key(&self, _input: &RegisterInput) {}

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<i64>> {
        use RegisterInput as I;
        use RegisterOutput as O;
        match (*input, output.copied()) {
            (I::Read, None) => Some(*state),
            (I::Read, Some(O::Read(v))) => (v == *state).then_some(*state),
            (I::Write(v), None | Some(O::Written)) => Some(Some(v)),
            (I::Cas(from, to), None) => Some(if *state == Some(from) {
                Some(to)
            } else {
                *state
            }),
            (I::Cas(from, to), Some(O::Cas(ok))) => {
                let matches = *state == Some(from);
                (ok == matches).then_some(if matches { Some(to) } else { *state })
            }
            (input, Some(output)) => panic!("malformed operation: {input:?} -> {output:?}"),
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        *input == RegisterInput::Read
    }
}

/// Parses a Jepsen etcd log (`INFO  jepsen.util - PROC :TYPE :F VALUE`, fields separated by
/// tabs or runs of spaces). `:fail :read` ops are dropped; `:info` ops and ops still open at
/// the end get an unknown outcome.
pub fn parse_jepsen_log(text: &str) -> Result<Vec<RegisterOp>, String> {
    let mut ops = Vec::new();
    let mut open: HashMap<u64, Pending<RegisterInput>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        let err = |what: &str| format!("line {lineno}: {what}: {line:?}");
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [_level, _logger, "-", proc, kind, f, value @ ..] = fields.as_slice() else {
            return Err(err("expected `LEVEL LOGGER - PROC :TYPE :F VALUE`"));
        };
        let proc: u64 = proc.parse().map_err(|_| err("bad process"))?;
        // A cas value `[A B]` is split in two by the whitespace split.
        let value = value.join(" ");
        let time = n as u64;
        if *kind == ":invoke" {
            let input = match (*f, value.as_str()) {
                (":read", "nil") => RegisterInput::Read,
                (":write", v) => {
                    RegisterInput::Write(parse_int(v).ok_or_else(|| err("bad write"))?)
                }
                (":cas", v) => {
                    let (a, b) = parse_pair(v).ok_or_else(|| err("bad cas"))?;
                    RegisterInput::Cas(a, b)
                }
                _ => return Err(err("unknown invocation")),
            };
            let pending = Pending {
                call: time,
                input,
                line: lineno,
            };
            if let Some(prev) = open.insert(proc, pending) {
                return Err(err(&format!("process still busy with line {}", prev.line)));
            }
            continue;
        }
        let pending = open
            .remove(&proc)
            .ok_or_else(|| err("completion without an invocation"))?;
        let input = pending.input;
        let same_f = matches!(
            (*f, input),
            (":read", RegisterInput::Read)
                | (":write", RegisterInput::Write(_))
                | (":cas", RegisterInput::Cas(..))
        );
        if !same_f {
            return Err(err(&format!(
                "completes {input:?} of line {}",
                pending.line
            )));
        }
        let output = match (*kind, input, value.as_str()) {
            (":ok", RegisterInput::Read, "nil") => RegisterOutput::Read(None),
            (":ok", RegisterInput::Read, v) => {
                RegisterOutput::Read(Some(parse_int(v).ok_or_else(|| err("bad read value"))?))
            }
            (":ok", RegisterInput::Write(w), v) if parse_int(v) == Some(w) => {
                RegisterOutput::Written
            }
            (":ok" | ":fail", RegisterInput::Cas(a, b), v) if parse_pair(v) == Some((a, b)) => {
                RegisterOutput::Cas(*kind == ":ok")
            }
            // No answer: the read did not happen as far as anyone can tell.
            (":fail", RegisterInput::Read, _) => continue,
            (":info", _, _) => {
                ops.push(Operation {
                    client: proc,
                    call: pending.call,
                    input,
                    outcome: Outcome::Unknown,
                });
                continue;
            }
            _ => return Err(err("unexpected completion")),
        };
        ops.push(Operation {
            client: proc,
            call: pending.call,
            input,
            outcome: Outcome::Returned { ret: time, output },
        });
    }
    // Still open at the end: unknown outcome.
    let mut still_open: Vec<(u64, Pending<RegisterInput>)> = open.into_iter().collect();
    still_open.sort_by_key(|(_, p)| p.call);
    for (proc, p) in still_open {
        ops.push(Operation {
            client: proc,
            call: p.call,
            input: p.input,
            outcome: Outcome::Unknown,
        });
    }
    Ok(ops)
}

fn parse_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// `[A B]` -> `(A, B)`.
fn parse_pair(s: &str) -> Option<(i64, i64)> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut it = inner.split_whitespace();
    let pair = (parse_int(it.next()?)?, parse_int(it.next()?)?);
    it.next().is_none().then_some(pair)
}

// ---------------------------------------------------------------------------------------
// Multi-key get/put/append on strings.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendInput {
    Get { key: String },
    Put { key: String, value: String },
    Append { key: String, value: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutput {
    /// What a get read (`""` for an absent key).
    Read(String),
    /// A put or append was acknowledged.
    Written,
}

pub type AppendOp = Operation<AppendInput, AppendOutput>;

/// Independent string registers; absent reads as `""`, append concatenates.
pub struct AppendModel;

impl Model for AppendModel {
    type Key = String;
    type Input = AppendInput;
    type Output = AppendOutput;
    type State = String;

    fn key(&self, input: &AppendInput) -> String {
        match input {
            AppendInput::Get { key }
            | AppendInput::Put { key, .. }
            | AppendInput::Append { key, .. } => key.clone(),
        }
    }

    fn init(&self) -> String {
        String::new()
    }

    fn step(
        &self,
        state: &String,
        input: &AppendInput,
        output: Option<&AppendOutput>,
    ) -> Option<String> {
        match (input, output) {
            (AppendInput::Get { .. }, None) => Some(state.clone()),
            (AppendInput::Get { .. }, Some(AppendOutput::Read(v))) => {
                (v == state).then(|| state.clone())
            }
            (AppendInput::Put { value, .. }, None | Some(AppendOutput::Written)) => {
                Some(value.clone())
            }
            (AppendInput::Append { value, .. }, None | Some(AppendOutput::Written)) => {
                Some(format!("{state}{value}"))
            }
            (input, Some(output)) => panic!("malformed operation: {input:?} -> {output:?}"),
        }
    }

    fn is_read_only(&self, input: &AppendInput) -> bool {
        matches!(input, AppendInput::Get { .. })
    }
}

/// A value in an EDN-like event map.
#[derive(Debug, PartialEq)]
enum Edn {
    Keyword(String),
    Str(String),
    Int(i64),
    Nil,
}

/// Parses one `{:k v, :k v}` map with keyword keys and keyword, string, integer or nil
/// values (commas are whitespace, as in EDN).
fn parse_edn_map(line: &str) -> Result<HashMap<String, Edn>, String> {
    let body = line
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("not a {...} map")?;
    let mut tokens = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() || c == ',' {
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next().ok_or("unterminated string")? {
                    '"' => break,
                    '\\' => match chars.next().ok_or("unterminated string")? {
                        'n' => s.push('\n'),
                        't' => s.push('\t'),
                        other => s.push(other),
                    },
                    other => s.push(other),
                }
            }
            tokens.push(Edn::Str(s));
        } else {
            let mut atom = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ',' || c == '"' {
                    break;
                }
                atom.push(c);
                chars.next();
            }
            tokens.push(if atom == "nil" {
                Edn::Nil
            } else if let Some(k) = atom.strip_prefix(':') {
                Edn::Keyword(k.to_string())
            } else {
                Edn::Int(atom.parse().map_err(|_| format!("bad atom {atom:?}"))?)
            });
        }
    }
    if tokens.len() % 2 != 0 {
        return Err("odd number of forms in map".into());
    }
    let mut map = HashMap::new();
    let mut it = tokens.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let Edn::Keyword(k) = k else {
            return Err(format!("map key {k:?} is not a keyword"));
        };
        map.insert(k, v);
    }
    Ok(map)
}

/// Parses a kv history: one `{:process P, :type :invoke|:ok, :f :get|:put|:append,
/// :key "K", :value "V"}` event per line. Invocations never completed get an unknown
/// outcome.
pub fn parse_kv_history(text: &str) -> Result<Vec<AppendOp>, String> {
    let mut ops = Vec::new();
    let mut open: HashMap<i64, Pending<AppendInput>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |what: &str| format!("line {lineno}: {what}: {line:?}");
        let map = parse_edn_map(line).map_err(|e| err(&e))?;
        let field = |name: &str| map.get(name).ok_or_else(|| err(&format!("no :{name}")));
        let Edn::Int(proc) = *field("process")? else {
            return Err(err("bad :process"));
        };
        let (Edn::Keyword(kind), Edn::Keyword(f), Edn::Str(key)) =
            (field("type")?, field("f")?, field("key")?)
        else {
            return Err(err("bad :type, :f or :key"));
        };
        let value = field("value")?;
        let time = n as u64;
        match kind.as_str() {
            "invoke" => {
                let input = match (f.as_str(), value) {
                    ("get", Edn::Nil) => AppendInput::Get { key: key.clone() },
                    ("put", Edn::Str(v)) => AppendInput::Put {
                        key: key.clone(),
                        value: v.clone(),
                    },
                    ("append", Edn::Str(v)) => AppendInput::Append {
                        key: key.clone(),
                        value: v.clone(),
                    },
                    _ => return Err(err("unknown invocation")),
                };
                let pending = Pending {
                    call: time,
                    input,
                    line: lineno,
                };
                if let Some(prev) = open.insert(proc, pending) {
                    return Err(err(&format!("process still busy with line {}", prev.line)));
                }
            }
            "ok" => {
                let p = open
                    .remove(&proc)
                    .ok_or_else(|| err("completion without an invocation"))?;
                let output = match (&p.input, f.as_str(), value) {
                    (AppendInput::Get { key: k }, "get", Edn::Str(v)) if k == key => {
                        AppendOutput::Read(v.clone())
                    }
                    (AppendInput::Put { key: k, value: w }, "put", Edn::Str(v))
                    | (AppendInput::Append { key: k, value: w }, "append", Edn::Str(v))
                        if k == key && w == v =>
                    {
                        AppendOutput::Written
                    }
                    _ => return Err(err(&format!("does not complete line {}", p.line))),
                };
                ops.push(Operation {
                    client: proc as u64,
                    call: p.call,
                    input: p.input,
                    outcome: Outcome::Returned { ret: time, output },
                });
            }
            _ => return Err(err("unknown :type")),
        }
    }
    let mut still_open: Vec<(i64, Pending<AppendInput>)> = open.into_iter().collect();
    still_open.sort_by_key(|(_, p)| p.call);
    for (proc, p) in still_open {
        ops.push(Operation {
            client: proc as u64,
            call: p.call,
            input: p.input,
            outcome: Outcome::Unknown,
        });
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jepsen_parser_handles_tabs_spaces_info_and_failed_reads() {
        let log = "INFO  jepsen.util - 0\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 1   :invoke :cas    [3 0]\n\
                   INFO  jepsen.util - 2  :invoke :write  4\n\
                   INFO  jepsen.util - 0\t:fail\t:read\t:timed-out\n\
                   INFO  jepsen.util - 1   :fail   :cas    [3 0]\n\
                   INFO  jepsen.util - 2\t:info\t:write\t:timed-out\n\
                   INFO  jepsen.util - 3\t:invoke\t:read\tnil\n\
                   INFO  jepsen.util - 3\t:ok\t:read\t4\n\
                   INFO  jepsen.util - 4\t:invoke\t:cas\t[4 5]\n";
        let ops = parse_jepsen_log(log).unwrap();
        let summary: Vec<_> = ops
            .iter()
            .map(|o| (o.client, o.call, o.input, o.outcome.clone()))
            .collect();
        let ret = |ret, output| Outcome::Returned { ret, output };
        assert_eq!(
            summary,
            vec![
                (
                    1,
                    1,
                    RegisterInput::Cas(3, 0),
                    ret(4, RegisterOutput::Cas(false))
                ),
                (2, 2, RegisterInput::Write(4), Outcome::Unknown),
                (
                    3,
                    6,
                    RegisterInput::Read,
                    ret(7, RegisterOutput::Read(Some(4)))
                ),
                (4, 8, RegisterInput::Cas(4, 5), Outcome::Unknown),
            ]
        );
        assert!(parse_jepsen_log("INFO  jepsen.util - 0\t:ok\t:read\tnil").is_err());
    }

    #[test]
    fn kv_parser_reads_edn_events() {
        let text = "{:process 1, :type :invoke, :f :get, :key \"9\", :value nil}\n\
                    {:process 5, :type :invoke, :f :append, :key \"9\", :value \"x 5 0 y\"}\n\
                    {:process 1, :type :ok, :f :get, :key \"9\", :value \"\"}\n\
                    {:process 5, :type :ok, :f :append, :key \"9\", :value \"x 5 0 y\"}\n";
        let ops = parse_kv_history(text).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].input, AppendInput::Get { key: "9".into() });
        assert_eq!(
            ops[0].outcome,
            Outcome::Returned {
                ret: 2,
                output: AppendOutput::Read(String::new())
            }
        );
        assert_eq!(
            ops[1].input,
            AppendInput::Append {
                key: "9".into(),
                value: "x 5 0 y".into()
            }
        );
    }
}
