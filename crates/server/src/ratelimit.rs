//! Rate limits per source, so one noisy repository (or one client address)
//! cannot starve the others.
//!
//! Two keyed token buckets: exchanges per verified repository (checked
//! after the subject token's signature verified, so a forger cannot spend
//! another repository's budget), and requests per client address on every
//! endpoint (checked first, before any work). A refused request gets 429
//! with `Retry-After`. Buckets of idle keys are dropped every
//! [`RETAIN_INTERVAL`], which bounds memory by the sources active in one
//! refill window.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How often buckets of keys that are back to full are forgotten.
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// The configured limits; `0` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Exchanges per minute for one verified repository (or GitLab project,
    /// or generic subject); the bucket holds a minute's worth.
    pub exchanges_per_minute_per_repository: u32,
    /// Requests per second from one client address, on every endpoint; the
    /// bucket holds two seconds' worth.
    pub requests_per_second_per_client: u32,
}

/// The live limiters. Cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimits {
    per_repository: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    per_client: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimits {
    /// Builds the limiters the config turns on.
    pub fn new(config: RateLimitConfig) -> RateLimits {
        let per_repository = NonZeroU32::new(config.exchanges_per_minute_per_repository)
            .map(|n| Arc::new(RateLimiter::keyed(Quota::per_minute(n))));
        let per_client = NonZeroU32::new(config.requests_per_second_per_client).map(|n| {
            let burst = n.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            Arc::new(RateLimiter::keyed(Quota::per_second(n).allow_burst(burst)))
        });
        RateLimits { per_repository, per_client }
    }

    /// Takes one exchange from `source`'s bucket, or says how long to wait.
    pub fn check_repository(&self, source: &str) -> Result<(), Duration> {
        match &self.per_repository {
            Some(limiter) => check(limiter, &source.to_ascii_lowercase()),
            None => Ok(()),
        }
    }

    /// Takes one request from `client`'s bucket, or says how long to wait.
    pub fn check_client(&self, client: IpAddr) -> Result<(), Duration> {
        match &self.per_client {
            Some(limiter) => check(limiter, &client),
            None => Ok(()),
        }
    }

    /// Forgets buckets that are full again (idle keys).
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_repository {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.per_client {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// The limiter's own clock tells the wait: building a new clock (as
/// `DefaultClock::default()` does) calibrates it with `cpuid`, which in a
/// virtual machine traps to the hypervisor; done per refused request, it
/// made each 429 cost more than a served request.
fn check<K: std::hash::Hash + Eq + Clone>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Duration> {
    limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_gets_its_minute_then_waits_and_others_are_unaffected() {
        let limits = RateLimits::new(RateLimitConfig {
            exchanges_per_minute_per_repository: 3,
            requests_per_second_per_client: 0,
        });
        for _ in 0..3 {
            assert!(limits.check_repository("acme/noisy").is_ok());
        }
        let wait = limits.check_repository("ACME/Noisy").expect_err("the fourth waits, names fold case");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limits.check_repository("acme/quiet").is_ok(), "another repository keeps its budget");
        assert!(limits.check_client("127.0.0.1".parse().expect("ip")).is_ok(), "client limit is off");
    }

    #[test]
    fn a_client_address_gets_a_two_second_burst() {
        let limits = RateLimits::new(RateLimitConfig {
            exchanges_per_minute_per_repository: 0,
            requests_per_second_per_client: 5,
        });
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        for _ in 0..10 {
            assert!(limits.check_client(ip).is_ok());
        }
        assert!(limits.check_client(ip).is_err());
        assert!(limits.check_client("10.0.0.8".parse().expect("ip")).is_ok());
        assert!(limits.check_repository("anything").is_ok(), "repository limit is off");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
