//! Summaries of samples (percentiles) and the number formats of the report.

use std::time::Duration;

/// Percentiles of a set of samples, all in the same unit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no samples.
    pub(crate) fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Summary {
            n: v.len(),
            min: v[0],
            p50: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            p99: percentile(&v, 99.0),
            max: v[v.len() - 1],
        })
    }

    /// Summary of durations, in milliseconds.
    pub(crate) fn of_ms(values: &[Duration]) -> Option<Summary> {
        Summary::of(&values.iter().map(|d| ms(*d)).collect::<Vec<_>>())
    }
}

/// The `p`-th percentile of sorted values, interpolated linearly between the closest ranks
/// (numpy's default), so a median of an even count is the mean of the middle two.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds with a precision that suits their size: `850 µs`, `4.21 ms`, `38.5 ms`,
/// `412 ms`, `1.24 s`.
pub(crate) fn fmt_ms(ms: f64) -> String {
    if ms < 0.0 {
        format!("−{}", fmt_ms(-ms))
    } else if !ms.is_finite() {
        "n/a".into()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

/// Microseconds, for latencies and CPU per event.
pub(crate) fn fmt_us(us: f64) -> String {
    if us < 0.0 {
        format!("−{}", fmt_us(-us))
    } else if !us.is_finite() {
        "n/a".into()
    } else if us >= 1000.0 {
        fmt_ms(us / 1000.0)
    } else if us >= 10.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// KiB as MiB.
pub(crate) fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A signed difference of KiB as MiB (`+3.2 MiB`).
pub(crate) fn fmt_kib_delta(after: u64, before: u64) -> String {
    let d = after as f64 - before as f64;
    format!("{:+.1} MiB", d / 1024.0)
}

/// A rate with thousands separators: `184,213`.
pub(crate) fn fmt_count(n: f64) -> String {
    if !n.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

/// `a / b` as `×1.03`, or `n/a` when `b` is zero.
pub(crate) fn fmt_ratio(a: f64, b: f64) -> String {
    if b == 0.0 || !a.is_finite() || !b.is_finite() {
        "n/a".into()
    } else {
        format!("×{:.2}", a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 4.0);
        let s = Summary::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.min, s.p50, s.max), (3, 1.0, 3.0, 5.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn numbers_are_formatted_for_reading() {
        assert_eq!(fmt_count(1_234_567.4), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_ms(0.85), "850 µs");
        assert_eq!(fmt_ms(412.3), "412 ms");
        assert_eq!(fmt_ms(1240.0), "1.24 s");
        assert_eq!(fmt_us(3.456), "3.46 µs");
        assert_eq!(fmt_us(-15_609.1), "−15.6 ms");
        assert_eq!(fmt_ratio(1.0, 0.0), "n/a");
        assert_eq!(fmt_ratio(103.0, 100.0), "×1.03");
    }
}
