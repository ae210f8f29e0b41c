//! Admission: the decisions that answer 429 before a request costs anything. This module alone
//! decides 429s.
//!
//! - Per tenant: `rate_per_second` sustained with `burst` (GCRA, with governor), checked before
//!   the tenant's connection queue. Over the limit, `Retry-After` is governor's earliest time
//!   the request would be allowed. In cluster mode each replica enforces its share (rate and
//!   burst divided by the live replicas, rounded up), re-divided when membership changes: the
//!   sum is the tenant's rate when the load balancer spreads requests evenly.
//! - Per client address: failed authentications (`auth_failures_per_minute`, 10 by default).
//!   Past that, every request from the address gets 429 — a valid key too, so a guess that
//!   happens to be right cannot be told from one that is wrong — until the limit recovers.
//!   IPv6 addresses count by /64 (one host's whole prefix). Memory stays bounded: stale
//!   entries are dropped, and past [`MAX_TRACKED_ADDRESSES`] new addresses share one budget.
//! - Per end user: `rate_per_second_per_subject`, keyed by the token's `sub` (a digest of it,
//!   so memory per subject is fixed whatever the claim's length), after the tenant's limit.
//!   Bounded like the addresses: past [`MAX_TRACKED_SUBJECTS`] new subjects share one budget.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// Addresses tracked individually before new ones share one budget.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// One tenant's request rate.
pub struct TenantRate {
    /// Rebuilt when the number of replicas sharing the rate changes (a fresh bucket: the
    /// change may let one share's burst through).
    limiter: arc_swap::ArcSwap<DefaultDirectRateLimiter>,
    clock: DefaultClock,
    rate_per_second: u32,
    burst: u32,
    /// Replicas the rate is divided among now (1 outside cluster mode).
    replicas: AtomicUsize,
}

fn direct_limiter(rate_per_second: u32, burst: u32) -> DefaultDirectRateLimiter {
    let rate = NonZeroU32::new(rate_per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    DefaultDirectRateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
}

impl TenantRate {
    pub fn new(rate_per_second: u32, burst: u32) -> TenantRate {
        TenantRate {
            limiter: arc_swap::ArcSwap::from_pointee(direct_limiter(rate_per_second, burst)),
            clock: DefaultClock::default(),
            rate_per_second,
            burst,
            replicas: AtomicUsize::new(1),
        }
    }

    /// `Err(wait)` when the request is over the tenant's rate.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_among(1)
    }

    /// `Err(wait)` when the request is over this replica's share of the tenant's rate, the
    /// rate being divided among `replicas` (0 counts as 1).
    pub fn check_among(&self, replicas: usize) -> Result<(), Duration> {
        let replicas = replicas.max(1);
        if self.replicas.swap(replicas, Ordering::Relaxed) != replicas {
            let n = u32::try_from(replicas).unwrap_or(u32::MAX);
            self.limiter.store(std::sync::Arc::new(direct_limiter(
                self.rate_per_second.div_ceil(n),
                self.burst.div_ceil(n),
            )));
        }
        self.limiter
            .load()
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// This replica's share now: (rate per second, burst).
    pub fn share(&self) -> (u32, u32) {
        let n = u32::try_from(self.replicas.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        (self.rate_per_second.div_ceil(n), self.burst.div_ceil(n))
    }
}

/// The address key: IPv4 addresses whole, IPv6 by /64 prefix, and one shared key for the
/// overflow when too many addresses are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AddressKey {
    V4(u32),
    V6Prefix(u64),
    Overflow,
}

impl AddressKey {
    fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4.into()),
                None => AddressKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Failed authentications per client address.
pub struct AuthFailures {
    failures: DefaultKeyedRateLimiter<AddressKey>,
    clock: DefaultClock,
    // std Mutex: touched only on failures and for addresses that are blocked; never held
    // across an await.
    blocked: Mutex<HashMap<AddressKey, Instant>>,
    /// Entries in `blocked`, readable without the lock: zero on the hot path.
    blocked_count: AtomicUsize,
    /// When stale entries were last swept out of `failures` (a sweep walks them all).
    last_sweep: Mutex<Instant>,
}

impl AuthFailures {
    pub fn new(per_minute: u32) -> AuthFailures {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        AuthFailures {
            failures: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            blocked: Mutex::new(HashMap::new()),
            blocked_count: AtomicUsize::new(0),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// `Some(wait)` while `ip` is blocked after too many failures.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        if self.blocked_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let key = AddressKey::of(ip);
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = blocked
            .get(&key)
            .or_else(|| blocked.get(&AddressKey::Overflow))
            .copied()?;
        if until > now {
            return Some(until - now);
        }
        blocked.retain(|_, until| *until > now);
        self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        None
    }

    /// Counts a failed authentication from `ip`; `Some(wait)` if the address is now blocked.
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let mut key = AddressKey::of(ip);
        if self.failures.len() >= MAX_TRACKED_ADDRESSES {
            self.sweep();
            if self.failures.len() >= MAX_TRACKED_ADDRESSES {
                key = AddressKey::Overflow;
            }
        }
        let not_until = self.failures.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.len() >= MAX_TRACKED_ADDRESSES {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= MAX_TRACKED_ADDRESSES {
                key = AddressKey::Overflow;
            }
        }
        blocked.insert(key, Instant::now() + wait);
        self.blocked_count.store(blocked.len(), Ordering::Relaxed);
        Some(wait)
    }

    /// Drops addresses whose failures have all been forgiven, at most once a second.
    fn sweep(&self) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(1) {
            *last = Instant::now();
            self.failures.retain_recent();
            self.failures.shrink_to_fit();
        }
    }

    /// Addresses currently tracked (the bound's unit test).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.failures.len()
    }
}

/// Subjects tracked individually before new ones share one budget.
pub const MAX_TRACKED_SUBJECTS: usize = 65_536;

/// Requests per end user (token subject) of one tenant.
pub struct SubjectRates {
    limiter: DefaultKeyedRateLimiter<[u8; 16]>,
    clock: DefaultClock,
    /// When stale subjects were last swept out (a sweep walks them all).
    // std Mutex: held for a comparison, never across an await.
    last_sweep: Mutex<Instant>,
}

impl SubjectRates {
    pub fn new(rate_per_second: u32) -> SubjectRates {
        let rate = NonZeroU32::new(rate_per_second).unwrap_or(NonZeroU32::MIN);
        SubjectRates {
            // A burst of one second's worth: a page load's handful of parallel queries passes.
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)),
            clock: DefaultClock::default(),
            last_sweep: Mutex::new(Instant::now()),
        }
    }

    /// `Err(wait)` when `subject` is over its rate.
    pub fn check(&self, subject: &str) -> Result<(), Duration> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(subject.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        if self.limiter.len() >= MAX_TRACKED_SUBJECTS {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(1) {
                *last = Instant::now();
                self.limiter.retain_recent();
                self.limiter.shrink_to_fit();
            }
            if self.limiter.len() >= MAX_TRACKED_SUBJECTS {
                key = [0xff; 16];
            }
        }
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_over_its_rate_is_told_when_to_retry() {
        let rate = TenantRate::new(10, 2);
        assert!(rate.check().is_ok());
        assert!(rate.check().is_ok());
        let wait = rate.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
    }

    #[test]
    fn a_tenant_rate_is_divided_among_replicas_and_redivided_when_they_change() {
        let rate = TenantRate::new(10, 3);
        // Three replicas: a burst of 1 each, a fourth of the sustained rate rounded up.
        assert!(rate.check_among(3).is_ok());
        assert!(rate.check_among(3).is_err());
        assert_eq!(rate.share(), (4, 1));
        // Back to one: the whole burst again.
        for _ in 0..3 {
            assert!(rate.check_among(1).is_ok());
        }
        assert!(rate.check_among(1).is_err());
        assert_eq!(rate.share(), (10, 3));
        // Unknown membership (0) counts as one replica.
        assert_eq!(TenantRate::new(5, 5).check_among(0), Ok(()));
    }

    #[test]
    fn an_address_is_blocked_after_too_many_failures_and_only_that_one() {
        let failures = AuthFailures::new(3);
        let attacker: IpAddr = "203.0.113.7".parse().unwrap();
        let neighbour: IpAddr = "203.0.113.8".parse().unwrap();
        assert_eq!(failures.blocked_for(attacker), None);
        for _ in 0..3 {
            assert_eq!(failures.record_failure(attacker), None);
        }
        let wait = failures
            .record_failure(attacker)
            .expect("blocked on the fourth failure");
        assert!(wait <= Duration::from_secs(20));
        assert!(failures.blocked_for(attacker).is_some());
        assert_eq!(failures.blocked_for(neighbour), None);
    }

    #[test]
    fn each_subject_has_its_own_rate() {
        let rates = SubjectRates::new(2);
        assert!(rates.check("alice").is_ok());
        assert!(rates.check("alice").is_ok());
        let wait = rates.check("alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(rates.check("bob").is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_prefix() {
        let failures = AuthFailures::new(1);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(failures.record_failure(a), None);
        assert!(failures.record_failure(b).is_some(), "same /64");
        assert_eq!(failures.record_failure(other), None);
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let failures = AuthFailures::new(1);
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 5_000) {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            failures.record_failure(ip);
        }
        assert!(
            failures.tracked() <= MAX_TRACKED_ADDRESSES + 1,
            "{}",
            failures.tracked()
        );
        // Past the bound, new addresses share one budget: the second newcomer is blocked.
        let late = IpAddr::V4(0x0b00_0001.into());
        let later = IpAddr::V4(0x0b00_0002.into());
        failures.record_failure(late);
        assert!(failures.record_failure(later).is_some());
    }
}
