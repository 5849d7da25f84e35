//! Shared helpers for the benchmark binaries: latency summaries.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Latency percentiles of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// Summarises `samples` (sorted in place).
pub fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            Duration::ZERO
        } else {
            samples[((samples.len() - 1) as f64 * q).round() as usize]
        }
    };
    Summary {
        count: samples.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let sum = summarize(&mut s);
        assert_eq!(sum.count, 100);
        assert_eq!(sum.p50, Duration::from_millis(51));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
    }
}
