//! A histogram of fixed buckets in atomics: `observe` is a short scan of the bounds and three
//! relaxed additions, no lock (prometheus-client's own `Histogram` takes a lock per
//! observation, which the query path must not).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Bucket bounds of query, transaction and wait durations, in microseconds (100 µs to 10 s).
pub const DURATION_BUCKETS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Bucket bounds of a plugin's `decide` call, in microseconds (5 µs to 100 ms; the default
/// deadline is 10 ms).
pub const PLUGIN_LATENCY_BUCKETS_US: &[u64] =
    &[5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000];

/// Bucket bounds of the fuel one `decide` call burns (the default budget is 5 million).
pub const FUEL_BUCKETS: &[u64] =
    &[1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000, 5_000_000, 10_000_000, 50_000_000];

/// Observations counted into fixed buckets (upper bounds, inclusive, in the unit the caller
/// chose), with their sum and count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, plus one for values above the last (+Inf). Not cumulative.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
}

/// A copy of a histogram (or of several added up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// The upper bounds.
    pub bounds: &'static [u64],
    /// Counts per bucket (not cumulative), the last for +Inf.
    pub buckets: Vec<u64>,
    /// Sum of the observed values.
    pub sum: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Counts `value`.
    pub fn observe(&self, value: u64) {
        let index = self.bounds.iter().position(|&bound| value <= bound).unwrap_or(self.bounds.len());
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(value, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Counts `d` in microseconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// A copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }
}

impl HistogramSnapshot {
    /// An empty snapshot over `bounds`.
    pub fn empty(bounds: &'static [u64]) -> Self {
        HistogramSnapshot { bounds, buckets: vec![0; bounds.len() + 1], sum: 0, count: 0 }
    }

    /// Adds `other` (over the same bounds) into this one.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The buckets as (upper bound, count) pairs with the bounds divided by `divisor` (1e6 for
    /// microseconds to seconds: a division, so 2500 µs is exactly the double nearest 0.0025 and
    /// prints as such), +Inf last, as the exposition wants them.
    pub fn scaled_buckets(&self, divisor: f64) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .map(|&b| b as f64 / divisor)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_first_bucket_that_holds_them() {
        let h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![2, 2, 2]);
        assert_eq!((s.sum, s.count), (5222, 6));
        let mut total = HistogramSnapshot::empty(&[10, 100]);
        total.add(&s);
        total.add(&s);
        assert_eq!((total.buckets.clone(), total.count), (vec![4, 4, 4], 12));
        assert_eq!(total.scaled_buckets(2.0), vec![(5.0, 4), (50.0, 4), (f64::INFINITY, 4)]);
        let micros = Histogram::new(DURATION_BUCKETS_US).snapshot().scaled_buckets(1e6);
        assert_eq!((micros[0].0, micros[4].0), (0.0001, 0.0025), "bounds print as written");
    }
}
