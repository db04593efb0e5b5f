//! Progress of a long operation on stderr: an indicatif bar on a terminal, a plain line every
//! two seconds otherwise (logs, CI). Used by `snapshot save` and `wait-serving`.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How progress is shown.
pub enum Progress {
    Bar(ProgressBar),
    Lines {
        what: &'static str,
        every: Duration,
        last: Instant,
    },
}

impl Progress {
    /// Progress of `what` (the plain lines' prefix) over `total` keys, if known.
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total.unwrap_or(0));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} keys {msg}",
                )
                .expect("a valid template"),
            );
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                what,
                every: Duration::from_secs(2),
                last: Instant::now(),
            }
        }
    }

    /// `keys` of `total` done; `msg` says the rest (bytes, rate).
    pub fn update(&mut self, keys: u64, total: u64, msg: String) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total.max(keys));
                bar.set_position(keys);
                bar.set_message(msg);
            }
            Progress::Lines { what, every, last } if last.elapsed() >= *every => {
                *last = Instant::now();
                eprintln!("{what}: {keys}/{total} keys, {msg}");
            }
            Progress::Lines { .. } => {}
        }
    }

    /// Removes the bar.
    pub fn done(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
