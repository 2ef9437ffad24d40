//! Latency summaries and number formatting.

use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    pub(crate) count: usize,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) min: f64,
    pub(crate) mean: f64,
}

impl Latency {
    /// Summarise `samples` (any order). Percentiles use the nearest-rank method.
    pub(crate) fn from_samples(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let idx = ((p / 100.0) * ms.len() as f64).ceil() as usize;
            ms[idx.clamp(1, ms.len()) - 1]
        };
        Self {
            count: ms.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: ms[ms.len() - 1],
            min: ms[0],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "min_ms": round3(self.min),
            "mean_ms": round3(self.mean),
            "p50_ms": round3(self.p50),
            "p90_ms": round3(self.p90),
            "p99_ms": round3(self.p99),
            "max_ms": round3(self.max),
        })
    }
}

/// Round to three decimals (for JSON output).
pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `1234567` → `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in ms with a precision that suits its size.
pub(crate) fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::from_samples(&samples);
        assert_eq!(l.count, 100);
        assert!((l.p50 - 50.0).abs() < 1e-9);
        assert!((l.p90 - 90.0).abs() < 1e-9);
        assert!((l.p99 - 99.0).abs() < 1e-9);
        assert!((l.max - 100.0).abs() < 1e-9);
        assert!((l.mean - 50.5).abs() < 1e-9);
        let one = Latency::from_samples(&[Duration::from_millis(7)]);
        assert!((one.p99 - 7.0).abs() < 1e-9);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
