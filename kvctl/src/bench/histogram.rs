//! The latency histogram of `kvctl bench`: one per logical client, merged at the end.

/// Latency histogram in microseconds: exact below 512 µs, then 256 linear sub-buckets per
/// power of two (relative error under 0.4%), up to 2^36 µs (about 19 hours; longer values
/// are clamped). Recording is a few integer operations, no allocation.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum_us: u128,
    max_us: u64,
}

const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
const MAX_BIT: u32 = 36;
const BUCKETS: usize = (2 * SUB + (MAX_BIT - SUB_BITS - 1) as u64 * SUB) as usize;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum_us: 0,
            max_us: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        let v = v.min((1 << MAX_BIT) - 1);
        if v < 2 * SUB {
            return v as usize;
        }
        let bit = 63 - v.leading_zeros();
        let shift = bit - SUB_BITS;
        (2 * SUB + u64::from(bit - SUB_BITS - 1) * SUB + ((v >> shift) - SUB)) as usize
    }

    /// The largest value that falls in bucket `i`.
    fn bucket_high(i: usize) -> u64 {
        let i = i as u64;
        if i < 2 * SUB {
            return i;
        }
        let j = i - 2 * SUB;
        let shift = j / SUB + 1;
        let m = j % SUB + SUB;
        ((m + 1) << shift) - 1
    }

    pub fn record(&mut self, us: u64) {
        self.counts[Self::index(us)] += 1;
        self.total += 1;
        self.sum_us += u128::from(us);
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max_us
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.sum_us as f64 / self.total as f64
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value (to the bucket's
    /// precision, rounded up) with at least `q` of the values at or below it. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::bucket_high(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::rng::Rng;

    #[test]
    fn percentiles_exact_for_small_values() {
        let mut h = Histogram::default();
        assert_eq!((h.quantile(0.5), h.max(), h.mean()), (0, 0, 0.0));
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.max(), 100);
        assert_eq!(h.mean(), 50.5);
        let mut one = Histogram::default();
        one.record(7);
        assert_eq!((one.quantile(0.5), one.quantile(0.99)), (7, 7));
    }

    #[test]
    fn percentiles_close_to_exact_and_merge() {
        // Values over many orders of magnitude, spread over several histograms then merged,
        // against the exact percentile of the sorted values.
        let mut rng = Rng::new(42);
        let mut all = Vec::new();
        let mut parts = vec![Histogram::default(); 4];
        for i in 0..20_000 {
            let bits = 1 + rng.below(30);
            let v = rng.below(1 << bits);
            all.push(v);
            parts[i % 4].record(v);
        }
        let mut h = Histogram::default();
        for p in &parts {
            h.merge(p);
        }
        all.sort_unstable();
        assert_eq!(h.count(), all.len() as u64);
        assert_eq!(h.max(), *all.last().unwrap());
        for q in [0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * all.len() as f64).ceil() as usize).max(1);
            let exact = all[rank - 1];
            let got = h.quantile(q);
            assert!(got >= exact, "q={q}: {got} < {exact}");
            assert!(
                got - exact <= exact / 256 + 1,
                "q={q}: {got} vs exact {exact}"
            );
        }
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
        assert!((h.mean() - mean).abs() < 1e-6 * mean);
    }

    #[test]
    fn buckets_are_contiguous() {
        // Every value maps to a bucket whose upper bound is at or above it, and the bucket
        // before ends just below it.
        for v in (0..5000).chain([1 << 20, (1 << 20) + 12345, (1 << 36) - 1]) {
            let i = Histogram::index(v);
            assert!(Histogram::bucket_high(i) >= v, "{v}");
            if i > 0 {
                assert!(Histogram::bucket_high(i - 1) < v, "{v}");
            }
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
        assert_eq!(Histogram::bucket_high(BUCKETS - 1), (1 << 36) - 1);
    }
}
