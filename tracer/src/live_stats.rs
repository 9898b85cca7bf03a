//! The few running figures the recorder's status line shows (service-latency
//! p50/p99 so far). Kept here, small and approximate, so the tracer needs
//! nothing of the analyzer: the report computes the exact figures later.

/// Sub-buckets per power of two: values are kept to within 1/16 (about 6%).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A log-linear latency histogram of nanosecond values, fixed size.
#[derive(Debug, Clone)]
pub struct LiveLatency {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for LiveLatency {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = ns.ilog2();
    let sub = (ns >> (msb - SUB_BITS)) as usize & (SUB - 1);
    (msb - SUB_BITS + 1) as usize * SUB + sub
}

/// The smallest value that falls in bucket `b`.
fn bucket_floor(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let group = (b / SUB) as u32 - 1 + SUB_BITS;
    let sub = (b % SUB) as u64;
    (1u64 << group) | (sub << (group - SUB_BITS))
}

impl LiveLatency {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
        self.total += 1;
    }

    /// The value at quantile `q` (0..=1) in microseconds, as the floor of its
    /// bucket; `None` before the first sample.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_floor(b) as f64 / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            15,
            16,
            17,
            100,
            1_000,
            123_456,
            10_000_000_000,
            u64::MAX,
        ] {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns}");
            last = b;
            let floor = bucket_floor(b);
            assert!(floor <= ns, "{ns}: floor {floor}");
            assert!(ns - floor <= ns / 16, "{ns}: floor {floor} too far");
        }
    }

    #[test]
    fn quantiles_of_a_known_set() {
        let mut h = LiveLatency::default();
        assert_eq!(h.quantile_us(0.5), None);
        for us in 1..=100u64 {
            h.record(us * 1000);
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((47.0..=50.0).contains(&p50), "{p50}");
        assert!((93.0..=99.0).contains(&p99), "{p99}");
    }
}
