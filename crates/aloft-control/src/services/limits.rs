//! Limits the operator sets on the server (`aloft server --max-machines-per-app …`): per app, how
//! many machines and how many CPUs and MB of memory they may hold in total; per API token, how
//! many requests it may make (a token bucket: `rate` per second, up to `burst` at once). A
//! limit exceeded is an error naming the limit and the flag that sets it, never a crash.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Per-app totals (`None`: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppLimits {
    pub machines: Option<u32>,
    pub cpus: Option<u32>,
    pub memory_mb: Option<u32>,
}

/// What an app would hold after a change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppUsage {
    pub machines: u32,
    pub cpus: u32,
    pub memory_mb: u32,
}

/// A limit that a change would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "App {app:?} would have {wanted} machines; the operator's limit is {limit} per app \
         (--max-machines-per-app)"
    )]
    Machines {
        app: String,
        wanted: u32,
        limit: u32,
    },
    #[error(
        "App {app:?} would use {wanted} CPUs in total; the operator's limit is {limit} per app \
         (--max-cpus-per-app)"
    )]
    Cpus {
        app: String,
        wanted: u32,
        limit: u32,
    },
    #[error(
        "App {app:?} would use {wanted} MB of memory in total; the operator's limit is {limit} MB \
         per app (--max-memory-per-app)"
    )]
    Memory {
        app: String,
        wanted: u32,
        limit: u32,
    },
}

impl AppLimits {
    /// Whether `app` may hold `usage`.
    pub fn check(&self, app: &str, usage: AppUsage) -> Result<(), LimitError> {
        let app = || app.to_owned();
        if let Some(limit) = self.machines.filter(|&l| usage.machines > l) {
            return Err(LimitError::Machines {
                app: app(),
                wanted: usage.machines,
                limit,
            });
        }
        if let Some(limit) = self.cpus.filter(|&l| usage.cpus > l) {
            return Err(LimitError::Cpus {
                app: app(),
                wanted: usage.cpus,
                limit,
            });
        }
        if let Some(limit) = self.memory_mb.filter(|&l| usage.memory_mb > l) {
            return Err(LimitError::Memory {
                app: app(),
                wanted: usage.memory_mb,
                limit,
            });
        }
        Ok(())
    }
}

/// API requests per token: `per_second` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets untouched this long are full again and can be forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The operator's limits and the API's token buckets.
#[derive(Debug, Default)]
pub struct Limits {
    apps: OnceLock<AppLimits>,
    rate: OnceLock<RateLimit>,
    buckets: Mutex<HashMap<[u8; 32], Bucket>>,
}

impl Limits {
    /// Sets the limits (once, before serving).
    pub fn configure(&self, apps: AppLimits, rate: Option<RateLimit>) {
        let _ = self.apps.set(apps);
        if let Some(rate) = rate.filter(|r| r.per_second > 0.0 && r.burst > 0) {
            let _ = self.rate.set(rate);
        }
    }

    pub fn apps(&self) -> AppLimits {
        self.apps.get().copied().unwrap_or_default()
    }

    /// Takes one request from the bucket of `token` at `now`: `Err(wait)` when it is empty,
    /// with how long until it holds one again.
    pub fn take(&self, token: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate.get() else {
            return Ok(());
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 10_000 {
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < FORGET_AFTER);
        }
        let burst = f64::from(rate.burst);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / rate.per_second;
        Err(Duration::from_secs_f64(wait.min(86_400.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_app_limit_names_itself() {
        let limits = AppLimits {
            machines: Some(2),
            cpus: Some(4),
            memory_mb: Some(1024),
        };
        let ok = AppUsage {
            machines: 2,
            cpus: 4,
            memory_mb: 1024,
        };
        limits.check("web", ok).unwrap();
        let e = limits
            .check("web", AppUsage { machines: 3, ..ok })
            .unwrap_err();
        assert!(e.to_string().contains("--max-machines-per-app"), "{e}");
        let e = limits.check("web", AppUsage { cpus: 5, ..ok }).unwrap_err();
        assert!(e.to_string().contains("--max-cpus-per-app"), "{e}");
        let e = limits
            .check(
                "web",
                AppUsage {
                    memory_mb: 2048,
                    ..ok
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("--max-memory-per-app"), "{e}");
        AppLimits::default()
            .check(
                "web",
                AppUsage {
                    machines: 1000,
                    cpus: 1000,
                    memory_mb: u32::MAX,
                },
            )
            .unwrap();
    }

    #[test]
    fn a_token_bucket_allows_its_burst_then_refills_at_its_rate() {
        let limits = Limits::default();
        let t0 = Instant::now();
        assert!(limits.take("a", t0).is_ok(), "no limit configured");
        limits.configure(
            AppLimits::default(),
            Some(RateLimit {
                per_second: 2.0,
                burst: 3,
            }),
        );
        for _ in 0..3 {
            limits.take("a", t0).unwrap();
        }
        let wait = limits.take("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another token has its own bucket.
        limits.take("b", t0).unwrap();
        // Half a second later one request is back, not two.
        let t1 = t0 + Duration::from_millis(500);
        limits.take("a", t1).unwrap();
        assert!(limits.take("a", t1).is_err());
    }
}
