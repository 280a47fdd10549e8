//! In-process GCRA limiting with governor, keyed by a 64-bit hash of the limit key so each
//! key costs a fixed few dozen bytes, with periodic pruning and a hard cap on keys.

use super::Verdict;
use crate::config::model::RatePolicy;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DefaultKeyedStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

type Keyed = RateLimiter<u64, Store, DefaultClock, StateInformationMiddleware>;

/// governor's keyed store, shared with this module so a bucket can be read without being
/// spent (`POST /admin/explain`); governor itself only reads a bucket by taking from it.
#[derive(Clone, Default)]
pub struct Store(Arc<DefaultKeyedStateStore<u64>>);

impl StateStore for Store {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<u64> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below);
    }
    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0);
    }
    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }
    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

impl Store {
    /// A bucket's theoretical arrival time, read by a measurement that always declines to
    /// replace it.
    fn tat(&self, key: u64) -> Option<Nanos> {
        let state = self.0.get(&key)?;
        let seen = std::cell::Cell::new(None);
        let _ =
            StateStore::measure_and_replace(&*state as &InMemoryState, &NotKeyed::NonKey, |t| {
                seen.set(t);
                Err::<((), Nanos), ()>(())
            });
        seen.get()
    }
}

/// Past this many keys, new keys share one overflow bucket: a flood of distinct keys can
/// never make memory unbounded, and never makes anyone unlimited.
pub const MAX_KEYS: usize = 1_000_000;
const OVERFLOW_KEY: u64 = u64::MAX;

pub struct LocalLimiter {
    limiter: Keyed,
    store: Store,
    /// The limiter's time origin (taken as it was made), for reading buckets.
    start: <DefaultClock as Clock>::Instant,
    /// Requests judged by the shared overflow bucket because the key table was full.
    overflowed: Option<prometheus::IntCounter>,
    clock: DefaultClock,
    interval: Duration,
    burst: u32,
    max_keys: usize,
}

impl LocalLimiter {
    pub fn new(policy: &RatePolicy) -> Self {
        Self::with_max_keys(policy, MAX_KEYS)
    }

    pub fn with_max_keys(policy: &RatePolicy, max_keys: usize) -> Self {
        let interval = policy.rate.interval().max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        // with_period only refuses a zero period, which max() above rules out.
        let quota = Quota::with_period(interval).map_or_else(
            || Quota::per_second(NonZeroU32::MIN),
            |q| q.allow_burst(burst),
        );
        let clock = DefaultClock::default();
        let store = Store::default();
        let start = clock.now();
        LocalLimiter {
            limiter: RateLimiter::<u64, Store, DefaultClock>::new(
                quota,
                store.clone(),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            store,
            start,
            clock,
            interval,
            burst: burst.get(),
            max_keys,
            overflowed: None,
        }
    }

    /// Counts requests that land in the overflow bucket in `counter`, so a full key table
    /// is visible (`authgate_rate_limit_overflow_total`), never a silent change of limits.
    pub fn counting_overflow(mut self, counter: prometheus::IntCounter) -> Self {
        self.overflowed = Some(counter);
        self
    }

    pub fn check(&self, key: u64) -> Verdict {
        // governor's store cannot say whether a key is already in it, so past the cap every
        // request shares the overflow bucket until pruning frees room.
        let key = if key != OVERFLOW_KEY && self.limiter.len() >= self.max_keys {
            if let Some(c) = &self.overflowed {
                c.inc();
            }
            OVERFLOW_KEY
        } else {
            key
        };
        match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::Allowed {
                    remaining,
                    reset: self.interval * (self.burst - remaining.min(self.burst)),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict::Limited {
                    retry_after: wait,
                    reset: wait + self.interval * (self.burst - 1),
                }
            }
        }
    }

    /// How many requests `key` could make right now, without spending any.
    pub fn peek(&self, key: u64) -> u32 {
        let Some(tat) = self.store.tat(key) else {
            return self.burst;
        };
        let now = self.clock.now().duration_since(self.start).as_u64();
        let t = self.interval.as_nanos().max(1) as u64;
        let tat = tat.as_u64().max(now);
        let room = now
            .saturating_add(t.saturating_mul(u64::from(self.burst)))
            .saturating_sub(tat)
            / t;
        room.min(u64::from(self.burst)) as u32
    }

    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    /// Forgets keys whose buckets are full again and returns their memory.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::LimitKey;
    use crate::config::raw::LimitScope;

    fn policy(rate: &str, burst: u32) -> RatePolicy {
        RatePolicy {
            index: 0,
            name: "p".into(),
            rate: rate.parse().expect("rate"),
            burst,
            key: LimitKey::ClientIp,
            scope: LimitScope::Local,
            limit_header: http::HeaderValue::from(burst),
        }
    }

    #[test]
    fn past_the_key_cap_new_keys_share_a_counted_overflow_bucket() {
        let counter = prometheus::IntCounter::new("overflow", "test").expect("counter");
        let l =
            LocalLimiter::with_max_keys(&policy("1/h", 2), 2).counting_overflow(counter.clone());
        assert!(matches!(l.check(1), Verdict::Allowed { .. }));
        assert!(matches!(l.check(2), Verdict::Allowed { .. }));
        assert_eq!(counter.get(), 0);
        // Past the cap keys share one bucket (burst 2), and each use is counted: nobody is
        // unlimited, and the operator sees it.
        assert!(matches!(l.check(3), Verdict::Allowed { .. }));
        assert!(matches!(l.check(4), Verdict::Allowed { .. }));
        assert!(matches!(l.check(5), Verdict::Limited { .. }));
        assert_eq!(counter.get(), 3);
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let l = LocalLimiter::new(&policy("1/s", 3));
        for want in [2, 1, 0] {
            match l.check(7) {
                Verdict::Allowed { remaining, .. } => assert_eq!(remaining, want),
                v => panic!("expected allowed, got {v:?}"),
            }
        }
        match l.check(7) {
            Verdict::Limited { retry_after, reset } => {
                assert!(
                    retry_after <= Duration::from_secs(1)
                        && retry_after > Duration::from_millis(900)
                );
                assert!(reset > Duration::from_secs(2));
            }
            v => panic!("expected limited, got {v:?}"),
        }
        // Another key has its own bucket.
        assert!(matches!(l.check(8), Verdict::Allowed { remaining: 2, .. }));
    }

    #[test]
    fn a_bucket_can_be_read_without_spending_it() {
        let l = LocalLimiter::new(&policy("1/h", 3));
        assert_eq!(l.peek(9), 3);
        assert!(matches!(l.check(9), Verdict::Allowed { remaining: 2, .. }));
        assert_eq!(l.peek(9), 2);
        assert_eq!(l.peek(9), 2, "reading spends nothing");
        assert!(matches!(l.check(9), Verdict::Allowed { remaining: 1, .. }));
        assert!(matches!(l.check(9), Verdict::Allowed { remaining: 0, .. }));
        assert_eq!(l.peek(9), 0);
        assert_eq!(l.peek(10), 3);
    }

    #[test]
    fn key_count_is_capped() {
        let l = LocalLimiter::with_max_keys(&policy("1/m", 1), 100);
        for k in 0..1000 {
            l.check(k);
        }
        assert!(l.keys() <= 101, "{} keys", l.keys());
        // New keys past the cap share the overflow bucket, which is now spent.
        assert!(matches!(l.check(5000), Verdict::Limited { .. }));
    }
}
