//! Percentiles of samples and median/min/max over rounds.

use serde_json::{json, Value};

/// Nearest-rank percentile `p` (0-100) of unsorted samples; sorts them.
pub fn percentile(samples: &mut [u32], p: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples.get(rank.clamp(1, samples.len()) - 1).copied()
}

/// Microseconds as milliseconds with 3 decimals.
pub fn ms(us: Option<u32>) -> Value {
    us.map_or(Value::Null, |u| json!(f64::from(u) / 1000.0))
}

/// Median (of the middle two for an even count, averaged), min and max.
pub fn summarize(values: &[f64]) -> Option<Value> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Some(json!({ "median": median, "min": v[0], "max": v[n - 1], "n": n }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut s, 50.0), Some(50));
        assert_eq!(percentile(&mut s, 99.0), Some(99));
        assert_eq!(percentile(&mut s, 100.0), Some(100));
        assert_eq!(percentile(&mut [7], 99.0), Some(7));
        assert_eq!(percentile(&mut [], 50.0), None);
    }

    #[test]
    fn median_min_max() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(s["median"], 2.0);
        assert_eq!(s["min"], 1.0);
        assert_eq!(s["max"], 3.0);
        assert_eq!(summarize(&[1.0, 2.0]).unwrap()["median"], 1.5);
    }
}
