//! Is the gateway's memory flat? The run is cut into thirds by time. The first third is warm-up
//! (connection pools, SQLite's page caches, the allocator's arenas and the key cache fill up) and
//! is not judged. Two numbers are judged, both from the resident set:
//!
//! - growth: the median of the last third minus the median of the second third. Medians, so
//!   that one sample taken in the middle of a burst of allocations does not decide;
//! - slope: a least-squares line through every sample after warm-up, in MiB per minute, so that
//!   a slow steady leak shows even when it is small next to the jitter between two samples.
//!
//! Memory is flat when both stay within their limits (`Limits`, chosen in `scripts/soak`'s
//! defaults and explained in the report).

use serde::Serialize;

/// One measurement: seconds since the load started, resident set in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub seconds: f64,
    pub rss_kib: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    pub max_growth_mib: f64,
    pub max_slope_mib_per_minute: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryVerdict {
    pub warmup_ends_at_seconds: f64,
    pub second_third_median_mib: Option<f64>,
    pub last_third_median_mib: Option<f64>,
    pub growth_mib: Option<f64>,
    pub slope_mib_per_minute: Option<f64>,
    /// The slope's standard error: a slope within about two of these of zero is noise.
    pub slope_standard_error: Option<f64>,
    /// The slope over the last third alone: not judged, it tells a climb that is levelling off
    /// (a cache or pool reaching its size) from one that keeps going.
    pub last_third_slope_mib_per_minute: Option<f64>,
    pub samples_after_warmup: usize,
    pub limits: Limits,
    pub flat: bool,
    /// Why it is or is not flat, in one sentence.
    pub reason: String,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Least-squares slope of y over x and its standard error (how much the slope moves from noise
/// alone; `None` with fewer than three points, where no noise can be estimated). `None` with
/// fewer than two distinct x.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, Option<f64>)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let spread: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if spread == 0.0 {
        return None;
    }
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = covariance / spread;
    let standard_error = (points.len() > 2).then(|| {
        let residuals: f64 = points.iter().map(|p| (p.1 - (mean_y + slope * (p.0 - mean_x))).powi(2)).sum();
        (residuals / (n - 2.0) / spread).sqrt()
    });
    Some((slope, standard_error))
}

/// Judges the samples of a run that lasted `duration_seconds`.
pub fn judge_memory(points: &[Point], duration_seconds: f64, limits: Limits) -> MemoryVerdict {
    let warmup_ends = duration_seconds / 3.0;
    let last_third_starts = duration_seconds * 2.0 / 3.0;
    let in_range = |from: f64, to: f64| -> Vec<f64> {
        points.iter().filter(|p| p.seconds >= from && p.seconds < to).map(|p| mib(p.rss_kib)).collect()
    };
    let second = median(&in_range(warmup_ends, last_third_starts));
    // The last third includes the final sample, taken at the very end.
    let last = median(&in_range(last_third_starts, f64::INFINITY));
    let after_warmup: Vec<(f64, f64)> =
        points.iter().filter(|p| p.seconds >= warmup_ends).map(|p| (p.seconds / 60.0, mib(p.rss_kib))).collect();
    let (slope, slope_standard_error) = match fit(&after_warmup) {
        Some((slope, error)) => (Some(slope), error),
        None => (None, None),
    };
    let last_third: Vec<(f64, f64)> = after_warmup.iter().copied().filter(|(minutes, _)| *minutes * 60.0 >= last_third_starts).collect();
    let last_third_slope = fit(&last_third).map(|(slope, _)| slope);
    let growth = second.zip(last).map(|(second, last)| last - second);

    let (flat, reason) = match (growth, slope) {
        (Some(growth), Some(slope)) => {
            let growth_ok = growth <= limits.max_growth_mib;
            let slope_ok = slope <= limits.max_slope_mib_per_minute;
            let reason = format!(
                "growth {growth:+.2} MiB (limit {:.1}) {}, slope {slope:+.3} ± {:.3} MiB/min (limit {:.2}) {}",
                limits.max_growth_mib,
                if growth_ok { "within" } else { "OVER" },
                slope_standard_error.unwrap_or(f64::NAN),
                limits.max_slope_mib_per_minute,
                if slope_ok { "within" } else { "OVER" },
            );
            (growth_ok && slope_ok, reason)
        }
        _ => (false, "too few samples after warm-up to judge (run longer or sample more often)".to_owned()),
    };
    MemoryVerdict {
        warmup_ends_at_seconds: warmup_ends,
        second_third_median_mib: second,
        last_third_median_mib: last,
        growth_mib: growth,
        slope_mib_per_minute: slope,
        slope_standard_error,
        last_third_slope_mib_per_minute: last_third_slope,
        samples_after_warmup: after_warmup.len(),
        limits,
        flat,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_growth_mib: 2.0, max_slope_mib_per_minute: 0.5 };

    /// A sample every 10 s over 600 s, with RSS from `rss_mib(seconds)`.
    fn run(rss_mib: impl Fn(f64) -> f64) -> Vec<Point> {
        (0..=60).map(|i| f64::from(i) * 10.0).map(|s| Point { seconds: s, rss_kib: (rss_mib(s) * 1024.0) as u64 }).collect()
    }

    #[test]
    fn medians_and_slopes() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(fit(&[(0.0, 1.0)]), None);
        assert_eq!(fit(&[(1.0, 1.0), (1.0, 5.0)]), None);
        assert_eq!(fit(&[(0.0, 1.0), (1.0, 3.0)]), Some((2.0, None)));
        let line: Vec<(f64, f64)> = (0..10).map(|x| (f64::from(x), 3.0 + 0.25 * f64::from(x))).collect();
        let (slope, error) = fit(&line).unwrap();
        assert!((slope - 0.25).abs() < 1e-9);
        assert!(error.unwrap() < 1e-9, "a perfect line has no noise");
    }

    #[test]
    fn a_warm_up_climb_then_a_plateau_with_jitter_is_flat() {
        // Climbs 10 MiB in the first two minutes, then jitters by ±0.5 MiB around 30 MiB.
        let points = run(|s| if s < 120.0 { 20.0 + s / 12.0 } else { 30.0 + if (s as u64 / 10).is_multiple_of(2) { 0.5 } else { -0.5 } });
        let verdict = judge_memory(&points, 600.0, LIMITS);
        assert!(verdict.flat, "{}", verdict.reason);
        assert!(verdict.growth_mib.unwrap().abs() < 1.0);
        assert!(verdict.slope_mib_per_minute.unwrap().abs() < 0.2);
        // ±0.5 MiB of jitter over 6.7 minutes moves a fitted slope by only a few hundredths.
        let error = verdict.slope_standard_error.unwrap();
        assert!(error > 0.0 && error < 0.1, "{error}");
        assert!(verdict.last_third_slope_mib_per_minute.unwrap().abs() < 0.5);
    }

    #[test]
    fn a_steady_leak_is_not_flat_even_when_small_per_sample() {
        // 1 MiB a minute: 0.17 MiB between samples, well inside their jitter, but 6.7 MiB after warm-up.
        let points = run(|s| 30.0 + s / 60.0);
        let verdict = judge_memory(&points, 600.0, LIMITS);
        assert!(!verdict.flat);
        assert!((verdict.slope_mib_per_minute.unwrap() - 1.0).abs() < 0.01);
        assert!((verdict.last_third_slope_mib_per_minute.unwrap() - 1.0).abs() < 0.01, "it keeps going");
        assert!(verdict.reason.contains("OVER"));
    }

    #[test]
    fn one_spike_at_the_end_moves_neither_median_much() {
        let mut points = run(|_| 30.0);
        if let Some(last) = points.last_mut() {
            last.rss_kib = 60 * 1024;
        }
        let verdict = judge_memory(&points, 600.0, LIMITS);
        assert_eq!(verdict.growth_mib, Some(0.0));
        // The slope does see it: a spike that stays would be growth.
        assert!(verdict.slope_mib_per_minute.unwrap() > 0.0);
    }

    #[test]
    fn too_few_samples_are_no_verdict_of_flat() {
        let points = vec![Point { seconds: 0.0, rss_kib: 1000 }, Point { seconds: 10.0, rss_kib: 1000 }];
        let verdict = judge_memory(&points, 60.0, LIMITS);
        assert!(!verdict.flat);
        assert!(verdict.reason.contains("too few samples"));
    }
}
