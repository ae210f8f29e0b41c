//! The latency histograms of every request ([`LatencyHistogram`]): request duration and queue
//! wait, observed once each per request. `prometheus_client`'s `Histogram` takes a lock and
//! writes its sum, count and bucket on lines that every worker thread's requests write, moved
//! between cores on each request; this one keeps a shard per thread (`crate::shard`), each on
//! lines of its own, and sums them when scraped. It is encoded exactly as the classic
//! histogram (`_sum`, `_count`, cumulative `_bucket`s up to `+Inf`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds: 0.5 ms doubling to ~33 s (17 bounds), then `+Inf`.
const FINITE_BOUNDS: usize = 17;
const BUCKETS: usize = FINITE_BOUNDS + 1;

fn upper_bound(bucket: usize) -> f64 {
    if bucket < FINITE_BOUNDS {
        0.0005 * (1u64 << bucket) as f64
    } else {
        f64::INFINITY
    }
}

/// A histogram of seconds; clones share it.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<[Shard]>);

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    /// An f64's bits: written only by this shard's thread (or, rarely, one sharing it).
    sum: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(
            (0..crate::shard::count())
                .map(|_| Shard::default())
                .collect(),
        )
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sum, count, _) = self.snapshot();
        f.debug_struct("LatencyHistogram")
            .field("sum", &sum)
            .field("count", &count)
            .finish()
    }
}

impl LatencyHistogram {
    pub fn observe(&self, seconds: f64) {
        let shard = &self.0[crate::shard::index() % self.0.len()];
        // The first bound at or above the value; NaN, like a value past every bound, is
        // counted in `+Inf` (as prometheus_client does).
        let bucket = (0..FINITE_BOUNDS)
            .find(|&b| upper_bound(b) >= seconds)
            .unwrap_or(FINITE_BOUNDS);
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.count.fetch_add(1, Ordering::Relaxed);
        // Uncontended but for threads sharing a shard: a compare-and-swap of the f64's bits.
        let _ = shard
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    /// Sum, count and per-bucket counts (upper bound, observations in that bucket), over the
    /// shards.
    fn snapshot(&self) -> (f64, u64, [(f64, u64); BUCKETS]) {
        let mut buckets: [(f64, u64); BUCKETS] = std::array::from_fn(|b| (upper_bound(b), 0));
        let (mut sum, mut count) = (0.0, 0);
        for shard in self.0.iter() {
            sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            count += shard.count.load(Ordering::Relaxed);
            for (total, observed) in buckets.iter_mut().zip(&shard.buckets) {
                total.1 += observed.load(Ordering::Relaxed);
            }
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
    use prometheus_client::registry::Registry;

    fn encoded(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    /// The same observations, from several threads, encode exactly as prometheus_client's
    /// own histogram with the bounds it replaced.
    #[test]
    fn it_encodes_as_the_classic_histogram_with_the_same_bounds() {
        let values: Vec<f64> = (0..2_000)
            .map(|i| f64::from(i) * 0.000_37)
            .chain([0.0005, 0.001, 40.0, 1e6])
            .collect();
        let ours = LatencyHistogram::default();
        let theirs = Histogram::new(exponential_buckets(0.0005, 2.0, 17));
        std::thread::scope(|scope| {
            for chunk in values.chunks(500) {
                let ours = &ours;
                scope.spawn(move || chunk.iter().for_each(|&v| ours.observe(v)));
            }
        });
        values.iter().for_each(|&v| theirs.observe(v));
        let name = "sluice_test_seconds";
        let ours = encoded(|r| r.register(name, "a histogram", ours));
        let theirs = encoded(|r| r.register(name, "a histogram", theirs));
        // The sums differ in their last digits with the order of the additions.
        let without_sum = |text: &str| {
            text.lines()
                .filter(|l| !l.contains("_sum"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without_sum(&ours), without_sum(&theirs));
        let sum = |text: &str| -> f64 {
            let line = text.lines().find(|l| l.contains("_sum")).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let (a, b) = (sum(&ours), sum(&theirs));
        assert!((a - b).abs() <= b.abs() * 1e-9, "{a} vs {b}");
    }
}
