//! The source clock against the destination's, from the messages themselves
//! (NTP-style; ARCHITECTURE.md, "Clock alignment and the three sub-stages").
//!
//! θ(t) = source clock − destination clock at destination time t, modelled
//! as θ₀ + ρ·(t − origin). A request sent at destination time `a` and
//! received at source time `b` gives `b − a = d₁ + θ(a)` with d₁ ≥ 0: an
//! *upper* sample (θ ≤ b − a). A page sent at source time `c` and placed at
//! destination time `e` gives `e − c = d₂ − θ(e)`: a *lower* sample
//! (θ ≥ c − e). Every (θ₀, ρ) that keeps every delay non-negative is
//! consistent with the records; for a fixed ρ that set of θ₀ is the interval
//! [L(ρ), U(ρ)], U the least upper sample and L the greatest lower one (each
//! corrected by ρ), so U − L is concave in ρ and the consistent drifts form
//! one interval.
//!
//! The drift is the least-squares slope of the per-window interval
//! midpoints (clamped into the consistent drifts); the offset is the middle
//! of [L, U] at that drift; the bound is the farthest any consistent (θ₀, ρ)
//! puts θ₀ from it, so it contains the truth whenever the delays are
//! non-negative and the drift linear. When no (θ₀, ρ) is consistent (a
//! mismatched sample, a clock step), the estimate says so: the offset is the
//! middle at the least-contradicted drift and the bound the half-gap.

/// One-way sample: the destination time it was taken at and its value, ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at: u64,
    pub value: i64,
}

/// Drifts searched, ± this many ppm (crystals are within ±100 ppm; NTP
/// refuses more than 500).
pub const MAX_DRIFT_PPM: f64 = 500.0;
/// Steps of the searches over ρ (each halves or thirds the interval).
const SEARCH_STEPS: usize = 100;

/// The clock estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    /// θ at `origin`, ns.
    pub offset_ns: f64,
    /// How far the truth can be from `offset_ns`, ns; `None` when not measured (an override).
    pub bound_ns: Option<f64>,
    /// ρ in ppm; `None` when not measured.
    pub drift_ppm: Option<f64>,
    /// The destination time the offset is stated at: the middle of the
    /// samples' span for an estimate.
    pub origin: u64,
    /// Upper (request) and lower (page) samples it rests on.
    pub requests: u64,
    pub pages: u64,
    /// The samples contradict every linear clock: by this much, ns.
    pub contradiction_ns: Option<f64>,
    /// Given by the user (`--source-offset-us`), not estimated.
    pub overridden: bool,
}

impl Clock {
    /// A clock the user gave: `offset_ns`, no drift.
    pub fn given(offset_ns: f64, origin: u64, requests: u64, pages: u64) -> Self {
        Self {
            offset_ns,
            bound_ns: None,
            drift_ppm: None,
            origin,
            requests,
            pages,
            contradiction_ns: None,
            overridden: true,
        }
    }

    /// θ at destination time `t`, ns.
    pub fn theta(&self, t: u64) -> f64 {
        let rho = self.drift_ppm.unwrap_or(0.0) * 1e-6;
        self.offset_ns + rho * (t as f64 - self.origin as f64)
    }

    /// A source timestamp on the destination's clock.
    pub fn to_dest(&self, source_ts: u64) -> f64 {
        // t = s − θ(t), solved once: θ varies by ρ·θ over the step, far below a ns.
        let guess = source_ts as f64 - self.offset_ns;
        source_ts as f64 - self.theta(guess.max(0.0) as u64)
    }
}

struct Samples<'a> {
    upper: &'a [Sample],
    lower: &'a [Sample],
    origin: f64,
}

impl Samples<'_> {
    fn corrected(&self, s: &Sample, rho: f64) -> f64 {
        s.value as f64 - rho * (s.at as f64 - self.origin)
    }
    /// U(ρ).
    fn upper(&self, rho: f64) -> f64 {
        self.upper
            .iter()
            .map(|s| self.corrected(s, rho))
            .fold(f64::INFINITY, f64::min)
    }
    /// L(ρ).
    fn lower(&self, rho: f64) -> f64 {
        self.lower
            .iter()
            .map(|s| self.corrected(s, rho))
            .fold(f64::NEG_INFINITY, f64::max)
    }
    fn width(&self, rho: f64) -> f64 {
        self.upper(rho) - self.lower(rho)
    }
}

/// The maximum of a concave (or minimum of a convex, with `sign` −1)
/// function over [lo, hi], by ternary search; returns its argument.
fn ternary(lo: f64, hi: f64, sign: f64, f: impl Fn(f64) -> f64) -> f64 {
    let (mut a, mut b) = (lo, hi);
    for _ in 0..SEARCH_STEPS {
        let m1 = a + (b - a) / 3.0;
        let m2 = b - (b - a) / 3.0;
        if sign * f(m1) < sign * f(m2) {
            a = m1;
        } else {
            b = m2;
        }
    }
    f64::midpoint(a, b)
}

/// The edge of {ρ : width(ρ) ≥ 0} between `inside` (consistent) and `outside`.
fn edge(s: &Samples<'_>, mut inside: f64, mut outside: f64) -> f64 {
    for _ in 0..SEARCH_STEPS {
        let mid = f64::midpoint(inside, outside);
        if s.width(mid) >= 0.0 {
            inside = mid;
        } else {
            outside = mid;
        }
    }
    inside
}

/// The drift each direction's samples give on their own: the line that
/// hugs the samples from the delay side (under the request samples, over the
/// page samples) with the least total gap, found as the ρ that maximizes
/// U (minimizes L) stated at the mean sample time — the linear-programming
/// skew estimate of Moon, Skelly and Towsley (1999). Their mean; `None`
/// when both directions' samples span no time.
fn envelope_slope(s: &Samples<'_>, means: (f64, f64), max: f64) -> Option<f64> {
    let spans = |v: &[Sample]| v.iter().any(|x| x.at != v[0].at);
    let up = Samples {
        upper: s.upper,
        lower: &[],
        origin: means.0,
    };
    let lo = Samples {
        upper: &[],
        lower: s.lower,
        origin: means.1,
    };
    let slopes: Vec<f64> = [
        spans(s.upper).then(|| ternary(-max, max, 1.0, |r| up.upper(r))),
        spans(s.lower).then(|| ternary(-max, max, -1.0, |r| lo.lower(r))),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!slopes.is_empty()).then(|| slopes.iter().sum::<f64>() / slopes.len() as f64)
}

/// The samples that can decide a minimum (`below`) or maximum of
/// `value − ρ·at` for some ρ: the lower (upper) convex hull of the points
/// (at, value). Every search then costs the hull's size, not the samples'.
fn hull(samples: &[Sample], below: bool) -> Vec<Sample> {
    let mut pts: Vec<Sample> = samples.to_vec();
    pts.sort_by_key(|p| (p.at, if below { p.value } else { -p.value }));
    pts.dedup_by_key(|p| p.at);
    let sign = if below { 1.0 } else { -1.0 };
    let cross = |o: &Sample, a: &Sample, b: &Sample| {
        let (ax, ay) = (a.at as f64 - o.at as f64, a.value as f64 - o.value as f64);
        let (bx, by) = (b.at as f64 - o.at as f64, b.value as f64 - o.value as f64);
        sign * (ax * by - ay * bx)
    };
    let mut out: Vec<Sample> = Vec::new();
    for p in pts {
        while let [.., o, a] = out.as_slice() {
            if cross(o, a, &p) > 0.0 {
                break;
            }
            out.pop();
        }
        out.push(p);
    }
    out
}

fn mean_at(v: &[Sample]) -> f64 {
    v.iter().map(|x| x.at as f64).sum::<f64>() / v.len() as f64
}

/// The estimate from request (upper) and page (lower) samples, stated at
/// the middle of their span; `None` without at least one of each (the
/// offset is then unbounded on one side).
pub fn estimate(upper: &[Sample], lower: &[Sample]) -> Option<Clock> {
    let all = || upper.iter().chain(lower).map(|s| s.at);
    let origin = all().min()? / 2 + all().max()? / 2;
    if upper.is_empty() || lower.is_empty() {
        return None;
    }
    let means = (mean_at(upper), mean_at(lower));
    let (upper_hull, lower_hull) = (hull(upper, true), hull(lower, false));
    let s = Samples {
        upper: &upper_hull,
        lower: &lower_hull,
        origin: origin as f64,
    };
    let max = MAX_DRIFT_PPM * 1e-6;
    let best = ternary(-max, max, 1.0, |r| s.width(r));
    let mut clock = Clock {
        offset_ns: 0.0,
        bound_ns: None,
        drift_ppm: None,
        origin,
        requests: upper.len() as u64,
        pages: lower.len() as u64,
        contradiction_ns: None,
        overridden: false,
    };
    if s.width(best) < 0.0 {
        clock.offset_ns = f64::midpoint(s.upper(best), s.lower(best));
        clock.bound_ns = Some(-s.width(best) / 2.0);
        clock.drift_ppm = Some(best * 1e6);
        clock.contradiction_ns = Some(-s.width(best));
        return Some(clock);
    }
    let (rlo, rhi) = (edge(&s, best, -max), edge(&s, best, max));
    let rho = envelope_slope(&s, means, max).map_or(best, |r| r.clamp(rlo, rhi));
    clock.offset_ns = f64::midpoint(s.upper(rho), s.lower(rho));
    clock.drift_ppm = Some(rho * 1e6);
    // Over the consistent drifts, the lowest L and the highest U (L is
    // convex and U concave in ρ).
    let lowest = s.lower(ternary(rlo, rhi, -1.0, |r| s.lower(r)));
    let highest = s.upper(ternary(rlo, rhi, 1.0, |r| s.upper(r)));
    clock.bound_ns = Some((clock.offset_ns - lowest).max(highest - clock.offset_ns));
    Some(clock)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples of a clock θ₀ + ρ·t with one-way delays in [d, d + 40 µs].
    fn samples(theta0: f64, ppm: f64, d: i64) -> (Vec<Sample>, Vec<Sample>) {
        let theta = |t: u64| theta0 + ppm * 1e-6 * t as f64;
        let mut up = Vec::new();
        let mut lo = Vec::new();
        for i in 0..400u64 {
            let t = i * 5_000_000;
            let jitter = ((i * 7919) % 40_000) as i64;
            up.push(Sample {
                at: t,
                value: (d + jitter) + theta(t).round() as i64,
            });
            let t2 = t + 1_000_000;
            lo.push(Sample {
                at: t2,
                value: -(d + (jitter * 3) % 40_000) + theta(t2).round() as i64,
            });
        }
        (up, lo)
    }

    #[test]
    fn recovers_offset_and_drift_within_its_bound() {
        for theta0 in [0.0, 1_500.0, -2_000_000.0, 7_300_000.0] {
            for ppm in [0.0, 50.0, -50.0] {
                let (up, lo) = samples(theta0, ppm, 20_000);
                let c = estimate(&up, &lo).unwrap();
                let theta0 = theta0 + ppm * 1e-6 * c.origin as f64;
                let bound = c.bound_ns.unwrap();
                assert!(c.contradiction_ns.is_none());
                assert!(
                    (c.offset_ns - theta0).abs() <= bound,
                    "θ₀ {theta0} ppm {ppm}: {c:?}"
                );
                assert!(bound < 25_000.0, "{c:?}");
                assert!((c.drift_ppm.unwrap() - ppm).abs() < 10.0, "{c:?}");
            }
        }
    }

    #[test]
    fn the_hulls_keep_every_sample_that_can_decide() {
        let (up, lo) = samples(-3_000.0, 20.0, 10_000);
        let (hu, hl) = (hull(&up, true), hull(&lo, false));
        assert!(hu.len() < up.len() / 4 && hl.len() < lo.len() / 4);
        for rho in [-4e-4, -5e-5, 0.0, 3e-5, 4e-4] {
            let full = Samples {
                upper: &up,
                lower: &lo,
                origin: 7e8,
            };
            let cut = Samples {
                upper: &hu,
                lower: &hl,
                origin: 7e8,
            };
            assert!((full.upper(rho) - cut.upper(rho)).abs() < 1e-6);
            assert!((full.lower(rho) - cut.lower(rho)).abs() < 1e-6);
        }
    }

    #[test]
    fn contradicting_samples_are_named_not_hidden() {
        let up = [
            Sample { at: 0, value: -100 },
            Sample {
                at: 1_000_000_000,
                value: -100,
            },
        ];
        let lo = [Sample {
            at: 500_000_000,
            value: 100,
        }];
        let c = estimate(&up, &lo).unwrap();
        assert!(c.contradiction_ns.unwrap() > 0.0, "{c:?}");
        assert!(estimate(&up, &[]).is_none());
    }
}
