//! Watch fan-out: `--watchers` watches of one prefix (spread over the endpoints), while one
//! writer puts under that prefix at a fixed rate (open loop: a put is sent on schedule
//! whether or not the ones before were answered). Each put's value starts with its sequence
//! number, so a watcher knows when that put was sent and acknowledged: the delay from the
//! acknowledgement to the delivery, and from the send, are measured per delivered event.

use crate::conn::{Conn, Dial, Target};
use kvctl::bench::{process_cpu_time, Histogram, Outcome};
use omnikv_common::ClientError;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `omnikv-bench watch` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Watch streams, watcher i on endpoint i (mod their number).
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Puts per second of the writer.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Measured time (puts sent in it are counted), after the warmup.
    #[arg(long, default_value = "5s", value_parser = kvctl::cli::parse_timeout)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = kvctl::cli::parse_duration_or_zero)]
    pub warmup: Duration,
    /// How long watchers wait, after the last put was answered, for its events.
    #[arg(long, default_value = "5s", value_parser = kvctl::cli::parse_timeout)]
    pub drain: Duration,
    /// Size of each put's value, in bytes (at least 16: it starts with the sequence number).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// The writer's keys: PREFIX0 .. PREFIX<N-1>, in turn.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// The watched prefix.
    #[arg(long, default_value = "watch/")]
    pub prefix: String,
    /// Worker threads of the async runtime [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct DelayMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl DelayMs {
    fn of(h: &Histogram) -> DelayMs {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        DelayMs {
            p50: ms(h.quantile(0.5)),
            p90: ms(h.quantile(0.9)),
            p99: ms(h.quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// The result of a watch fan-out run (`-o json`: this object).
#[derive(Debug, Serialize)]
pub struct WatchReport {
    pub workload: &'static str,
    pub target: &'static str,
    pub watchers: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub value_size: usize,
    /// Puts sent in the measured window, and of those answered ok.
    pub puts: u64,
    pub puts_ok: u64,
    pub put_errors: u64,
    pub put_latency_ms: DelayMs,
    /// Events of the measured puts that reached a watcher, and how many should have.
    pub events: u64,
    pub events_expected: u64,
    /// Delivered events of the measured puts per second of the window.
    pub events_per_sec: f64,
    /// From the writer's acknowledgement to the delivery (an event delivered before the
    /// writer saw its acknowledgement counts 0).
    pub delay_from_ack_ms: DelayMs,
    /// Share of the events delivered before the writer saw the acknowledgement.
    pub delivered_before_ack: f64,
    /// From the put's send to the delivery.
    pub delay_from_send_ms: DelayMs,
    /// Watch streams that ended or failed before the end.
    pub watch_errors: u64,
    pub first_error: Option<String>,
    pub client_cpu_cores: f64,
}

impl WatchReport {
    pub fn text(&self) -> String {
        let d = |x: &DelayMs| {
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
                x.p50, x.p90, x.p99, x.max
            )
        };
        format!(
            "watchers:         {} ({}), writer {:.0} puts/s, {}-byte values\n\
             duration:         {:.2} s\n\
             puts:             {} (ok {}, errors {}), latency ms {}\n\
             events:           {} of {} expected, {:.1} events/s\n\
             delay from ack:   ms {} ({:.1}% before the ack)\n\
             delay from send:  ms {}\n\
             watch errors:     {}{}\n\
             client CPU:       {:.2} cores\n",
            self.watchers,
            self.target,
            self.rate,
            self.value_size,
            self.duration_s,
            self.puts,
            self.puts_ok,
            self.put_errors,
            d(&self.put_latency_ms),
            self.events,
            self.events_expected,
            self.events_per_sec,
            d(&self.delay_from_ack_ms),
            self.delivered_before_ack * 100.0,
            d(&self.delay_from_send_ms),
            self.watch_errors,
            self.first_error
                .as_ref()
                .map_or_else(String::new, |e| format!(" (first: {e})")),
            self.client_cpu_cores,
        )
    }
}

/// Nanoseconds since `base`, plus one (0 stays "not yet").
fn stamp(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
}

/// The sequence number at the start of a value, or `None`.
fn seq_of(value: &[u8]) -> Option<usize> {
    std::str::from_utf8(value.get(..16)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The value of put `seq`: its number right-aligned in 16 bytes, then `x` up to `size`.
fn value_of(seq: usize, size: usize) -> Vec<u8> {
    let mut v = format!("{seq:16}").into_bytes();
    v.resize(size.max(16), b'x');
    v
}

struct Watched {
    events: u64,
    from_ack: Histogram,
    from_send: Histogram,
    before_ack: u64,
    error: Option<String>,
}

pub async fn run(
    target: Target,
    endpoints: &[String],
    dial: &Dial,
    args: &WatchArgs,
) -> Result<WatchReport, ClientError> {
    let n = endpoints.len();
    // One connection per endpoint for the watchers (etcd: its gRPC streams share it;
    // omnikv: its pool opens one HTTP/1.1 connection per stream), one for the writer.
    let mut conns = Vec::new();
    for j in 0..n {
        let mut eps = endpoints.to_vec();
        eps.rotate_left(j);
        conns.push(Conn::connect(target, &eps, dial).await?);
    }
    let writer = Arc::new(Conn::connect(target, endpoints, dial).await?);
    let prefix = args.prefix.as_bytes();
    let mut streams = Vec::new();
    for i in 0..args.watchers {
        streams.push(conns[i % n].watch(prefix).await?);
    }

    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).ceil() as usize;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let window = (
        args.warmup.as_nanos() as u64,
        (args.warmup + args.duration).as_nanos() as u64,
    );
    // Puts answered ok, and when to give up waiting for their events (both u64::MAX until the
    // writer is done): a watcher stops once it saw that many events, or then.
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let hard_stop = base + args.warmup + args.duration + args.drain + dial.timeout;

    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let (sent, acked) = (sent.clone(), acked.clone());
            let (expected, stop_at) = (expected.clone(), stop_at.clone());
            tokio::spawn(async move {
                let mut w = Watched {
                    events: 0,
                    from_ack: Histogram::default(),
                    from_send: Histogram::default(),
                    before_ack: 0,
                    error: None,
                };
                let mut seen = 0u64;
                let mut values = Vec::new();
                while seen < expected.load(Ordering::Relaxed)
                    && stamp(base) < stop_at.load(Ordering::Relaxed)
                    && Instant::now() < hard_stop
                {
                    // Wake up now and then to see whether the run is over.
                    let next =
                        tokio::time::timeout(Duration::from_millis(100), s.next_puts(&mut values));
                    match next.await {
                        Err(_) => continue,
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            w.error = Some("the stream ended".into());
                            break;
                        }
                        Ok(Err(e)) => {
                            w.error = Some(e.to_string());
                            break;
                        }
                    }
                    let now = stamp(base);
                    for v in &values {
                        seen += 1;
                        let Some(seq) = seq_of(v).filter(|&q| q < total) else {
                            continue;
                        };
                        let at = sent[seq].load(Ordering::Relaxed);
                        if at == 0 || at <= window.0 || at > window.1 {
                            continue;
                        }
                        w.events += 1;
                        w.from_send.record(now.saturating_sub(at) / 1000);
                        let ack = acked[seq].load(Ordering::Relaxed);
                        if ack == 0 || ack > now {
                            w.before_ack += 1;
                            w.from_ack.record(0);
                        } else {
                            w.from_ack.record((now - ack) / 1000);
                        }
                    }
                }
                w
            })
        })
        .collect();

    // The writer: put `seq` at base + seq / rate.
    let cpu_before = process_cpu_time();
    let mut puts = Vec::with_capacity(total);
    for seq in 0..total {
        let at = base + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(at.into()).await;
        let key = format!("{}{}", args.prefix, seq as u64 % args.keys.max(1));
        let value = value_of(seq, args.value_size);
        let (writer, sent, acked) = (writer.clone(), sent.clone(), acked.clone());
        puts.push(tokio::spawn(async move {
            sent[seq].store(stamp(base), Ordering::Relaxed);
            let outcome = writer.put(key.as_bytes(), &value).await;
            acked[seq].store(stamp(base), Ordering::Relaxed);
            outcome
        }));
    }
    let (mut measured, mut ok, mut errors) = (0u64, 0u64, 0u64);
    let mut put_latency = Histogram::default();
    let mut ok_all = 0u64;
    for (seq, p) in puts.into_iter().enumerate() {
        let outcome = p
            .await
            .map_err(|e| ClientError::Usage(format!("writer: {e}")))?;
        let good = matches!(outcome, Outcome::Ok);
        ok_all += u64::from(good);
        let s = sent[seq].load(Ordering::Relaxed);
        if s <= window.0 || s > window.1 {
            continue;
        }
        measured += 1;
        if good {
            ok += 1;
            put_latency.record(acked[seq].load(Ordering::Relaxed).saturating_sub(s) / 1000);
        } else {
            errors += 1;
        }
    }
    expected.store(ok_all, Ordering::Relaxed);
    stop_at.store(
        stamp(base) + args.drain.as_nanos() as u64,
        Ordering::Relaxed,
    );

    let mut from_ack = Histogram::default();
    let mut from_send = Histogram::default();
    let (mut events, mut before_ack, mut watch_errors) = (0u64, 0u64, 0u64);
    let mut first_error = None;
    for w in watchers {
        let w = match w.await {
            Ok(w) => w,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        events += w.events;
        before_ack += w.before_ack;
        from_ack.merge(&w.from_ack);
        from_send.merge(&w.from_send);
        if let Some(e) = w.error {
            watch_errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let wall = base.elapsed().as_secs_f64();
    let cpu = process_cpu_time().saturating_sub(cpu_before).as_secs_f64();
    let secs = args.duration.as_secs_f64();
    Ok(WatchReport {
        workload: "watch",
        target: target.as_str(),
        watchers: args.watchers,
        rate: args.rate,
        duration_s: secs,
        value_size: args.value_size.max(16),
        puts: measured,
        puts_ok: ok,
        put_errors: errors,
        put_latency_ms: DelayMs::of(&put_latency),
        events,
        events_expected: ok * args.watchers as u64,
        events_per_sec: (events as f64 / secs * 10.0).round() / 10.0,
        delay_from_ack_ms: DelayMs::of(&from_ack),
        delivered_before_ack: if events > 0 {
            before_ack as f64 / events as f64
        } else {
            0.0
        },
        delay_from_send_ms: DelayMs::of(&from_send),
        watch_errors,
        first_error,
        client_cpu_cores: if wall > 0.0 {
            (cpu / wall * 1000.0).round() / 1000.0
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_sequence_number() {
        for (seq, size) in [(0, 100), (12345, 16), (7, 3)] {
            let v = value_of(seq, size);
            assert_eq!(v.len(), size.max(16));
            assert_eq!(seq_of(&v), Some(seq));
        }
        assert_eq!(seq_of(b"short"), None);
        assert_eq!(seq_of(b"not a number at all"), None);
    }
}
