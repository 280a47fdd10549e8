//! Shared limits without a round trip per request: a replica reserves several tokens at once
//! from the shared GCRA bucket ([`crate::tier::SharedTier::reserve`]) and spends them here.
//!
//! Why this never admits more than the limit allows, across all replicas: every request
//! admitted spends a token the bucket handed out, and each token is void once the bucket
//! could have refilled it. A grant of `n` tokens is `n` consecutive slots of the bucket's
//! schedule, `interval` apart, the last at its new theoretical arrival time (`tat`); the
//! slot `k` before the last is void from `tat - k * interval`, converted to local time from
//! the moment the request was sent (so early rather than late). The tokens all replicas still
//! hold are then slots in the future, at most `(tat - now) / interval` of them: exactly what
//! the bucket is short of a full burst. The bucket's count plus what the replicas hold never
//! exceeds what one bucket would allow, so their admissions together are what one GCRA
//! bucket could have admitted.
//!
//! How much is reserved: while the bucket holds [`BATCH_FROM`] tokens or more, Redis grants a
//! quarter of them; below that, one per request. The last tokens of a burst thus always go one
//! by one, and a burst under [`BATCH_FROM`] is exact across replicas however the requests are
//! spread (burst N means N, then 429). With a larger burst, tokens a replica holds and does not
//! spend go void slot by slot as the bucket refills, and while they are held the others still
//! get the full refill rate: what one replica holds only makes the others' burst smaller for a
//! while (by at most what it was granted), never the limit larger. At half the limit's rate a
//! full bucket's grant lasts a quarter of the burst's emission intervals and half of it is
//! spent: one round trip per `burst / 8` requests (the budget of one per ten holds from a burst
//! of 80 up).

use super::Verdict;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a replica asks for: no cap of its own beyond Redis's quarter of the bucket.
pub const WANT: u32 = 1 << 30;
pub use crate::tier::Grant;
pub use crate::tier::BATCH_FROM;

/// Grants one key keeps apart (concurrent requests that all found nothing held each bring
/// one back); more are merged.
const GRANTS: usize = 4;

/// The unspent part of one grant: `left` slots, the last void at `until`, the others one
/// interval apart before it.
#[derive(Debug, Clone, Copy)]
struct Slots {
    left: u32,
    until: Instant,
}

impl Slots {
    /// Tokens still good at `now`: unspent, and slots not yet reached.
    fn valid(&self, now: Instant, interval: Duration) -> u32 {
        let ahead = self.until.saturating_duration_since(now);
        if ahead.is_zero() || self.left == 0 {
            return 0;
        }
        let slots = ahead.as_nanos().div_ceil(interval.as_nanos().max(1));
        self.left.min(u32::try_from(slots).unwrap_or(u32::MAX))
    }
}

/// One key's reservations on this replica.
#[derive(Debug)]
struct Held {
    grants: [Option<Slots>; GRANTS],
    interval: Duration,
    /// What the bucket had left at the last grant.
    remaining: u32,
    /// When the bucket would be full again, as of the last grant.
    reset_at: Instant,
}

impl Held {
    fn valid(&self, now: Instant) -> u32 {
        self.grants
            .iter()
            .flatten()
            .map(|g| g.valid(now, self.interval))
            .sum()
    }

    /// Spends the good slot that goes void first; slots before it in its grant are void.
    fn spend(&mut self, now: Instant) -> bool {
        let interval = self.interval;
        let earliest = self
            .grants
            .iter_mut()
            .flatten()
            .filter_map(|g| {
                let valid = g.valid(now, interval);
                (valid > 0).then(|| (g.until - interval * (valid - 1), valid, g))
            })
            .min_by_key(|(first_void, _, _)| *first_void);
        match earliest {
            Some((_, valid, g)) => {
                g.left = valid - 1;
                true
            }
            None => false,
        }
    }

    /// Keeps a new grant's tokens: in place of a spent grant, or merged into the grant that
    /// goes void last. A merge keeps both counts but voids them all by the earlier bound (never
    /// more than the two grants hold at any moment).
    fn add(&mut self, fresh: Slots, now: Instant) {
        let interval = self.interval;
        if let Some(free) = self
            .grants
            .iter_mut()
            .find(|g| g.is_none_or(|g| g.valid(now, interval) == 0))
        {
            *free = Some(fresh);
            return;
        }
        if let Some(Some(last)) = self.grants.iter_mut().max_by_key(|g| g.map(|g| g.until)) {
            *last = Slots {
                left: last.valid(now, interval) + fresh.valid(now, interval),
                until: last.until.min(fresh.until),
            };
        }
    }

    fn allowed(&self, now: Instant) -> Verdict {
        Verdict::Allowed {
            remaining: self.remaining.saturating_add(self.valid(now)),
            reset: self.reset_at.saturating_duration_since(now),
        }
    }
}

/// The reservations of one shared policy, per key. Bounded; idle keys go.
pub struct Leases {
    held: moka::sync::Cache<u64, Arc<Mutex<Held>>>,
}

impl Leases {
    pub fn new(max_keys: u64) -> Self {
        Leases {
            held: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }
    }

    /// What to ask Redis for: [`WANT`], or one token while there is no room to keep a grant
    /// (what could not be kept would be lost to the bucket until its slots void).
    pub fn want(&self) -> u32 {
        let full = self
            .held
            .policy()
            .max_capacity()
            .is_some_and(|max| self.held.entry_count() >= max);
        if full {
            1
        } else {
            WANT
        }
    }

    /// Spends a held token of `key`, if one is still valid at `now`.
    pub fn spend(&self, key: u64, now: Instant) -> Option<Verdict> {
        let h = self.held.get(&key)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        h.spend(now).then(|| h.allowed(now))
    }

    /// Takes in what Redis answered to a request sent at `asked`, received at `now`; one token
    /// of a grant (its first slot) is the caller's, the rest are held.
    pub fn granted(
        &self,
        key: u64,
        g: Grant,
        interval: Duration,
        asked: Instant,
        now: Instant,
    ) -> Verdict {
        if g.granted == 0 {
            return Verdict::Limited {
                retry_after: g.retry_after,
                reset: g.reset,
            };
        }
        let until = asked + g.reset;
        let cell = self.held.get_with(key, || {
            Arc::new(Mutex::new(Held {
                grants: [None; GRANTS],
                interval,
                remaining: 0,
                reset_at: until,
            }))
        });
        let mut h = cell.lock().unwrap_or_else(|p| p.into_inner());
        h.add(
            Slots {
                left: g.granted - 1,
                until,
            },
            now,
        );
        h.remaining = g.remaining;
        h.reset_at = until;
        h.allowed(now)
    }

    /// Valid tokens held for `key` (for `explain`).
    pub fn held(&self, key: u64, now: Instant) -> u32 {
        self.held.get(&key).map_or(0, |h| {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            h.valid(now)
        })
    }

    pub fn keys(&self) -> u64 {
        self.held.entry_count()
    }

    pub fn prune(&self) {
        self.held.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn grant(granted: u32, remaining: u32, reset_ms: u64) -> Grant {
        Grant {
            granted,
            remaining,
            retry_after: Duration::ZERO,
            reset: Duration::from_millis(reset_ms),
        }
    }

    #[test]
    fn a_grant_is_spent_locally_until_it_runs_out() {
        let l = Leases::new(100);
        let t0 = Instant::now();
        assert_eq!(l.spend(1, t0), None, "nothing held yet");
        let v = l.granted(1, grant(3, 10, 60_000), SEC, t0, t0);
        assert_eq!(
            v,
            Verdict::Allowed {
                remaining: 12,
                reset: Duration::from_secs(60)
            }
        );
        assert!(matches!(
            l.spend(1, t0),
            Some(Verdict::Allowed { remaining: 11, .. })
        ));
        assert!(matches!(
            l.spend(1, t0),
            Some(Verdict::Allowed { remaining: 10, .. })
        ));
        assert_eq!(l.spend(1, t0), None, "all three spent: ask Redis again");
        assert_eq!(l.spend(2, t0), None, "another key holds nothing");
    }

    #[test]
    fn each_held_token_is_void_once_the_bucket_could_have_refilled_it() {
        let l = Leases::new(100);
        let asked = Instant::now();
        let ms = Duration::from_millis;
        // Ten slots 5 ms apart, the last void 50 ms after asking: the first is the caller's.
        l.granted(1, grant(10, 0, 50), ms(5), asked, asked);
        assert_eq!(l.held(1, asked), 9);
        assert_eq!(
            l.held(1, asked + ms(10)),
            8,
            "the slot at 10 ms is void at 10 ms"
        );
        assert!(l.spend(1, asked + ms(12)).is_some());
        assert_eq!(l.held(1, asked + ms(12)), 7);
        assert_eq!(l.held(1, asked + ms(46)), 1);
        assert!(l.spend(1, asked + ms(49)).is_some());
        assert_eq!(l.spend(1, asked + ms(49)), None, "spent");
        l.granted(1, grant(3, 0, 50), ms(5), asked, asked);
        assert_eq!(l.spend(1, asked + ms(50)), None, "void at the bucket's tat");
        assert_eq!(l.held(1, asked + ms(50)), 0);
    }

    #[test]
    fn concurrent_grants_are_all_kept_and_the_first_to_go_void_is_spent_first() {
        let l = Leases::new(100);
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        l.granted(1, grant(5, 0, 60_000), ms, t0, t0);
        l.granted(1, grant(3, 0, 1_000), ms, t0, t0);
        l.granted(1, grant(8, 0, 60_000), ms, t0, t0);
        assert_eq!(l.held(1, t0), 4 + 2 + 7);
        // The grant void at 1 s goes first.
        l.spend(1, t0);
        l.spend(1, t0);
        assert_eq!(l.held(1, t0 + Duration::from_millis(1_500)), 11);
        // A spent grant's place is taken by a new one.
        l.granted(1, grant(2, 0, 60_000), ms, t0, t0);
        assert_eq!(l.held(1, t0), 4 + 1 + 7);
        // Past four grants, a new one is merged into the last to go void, none lost.
        l.granted(1, grant(10, 0, 60_000), ms, t0, t0);
        l.granted(1, grant(6, 0, 30_000), ms, t0, t0);
        assert_eq!(l.held(1, t0), 4 + 1 + 7 + 9 + 5);
        assert_eq!(
            l.held(1, t0 + Duration::from_secs(30)),
            4 + 1 + 7,
            "the merged grant is void at the earlier bound"
        );
    }

    #[test]
    fn a_refusal_is_passed_on_and_holds_nothing() {
        let l = Leases::new(100);
        let t0 = Instant::now();
        let v = l.granted(
            1,
            Grant {
                granted: 0,
                remaining: 0,
                retry_after: Duration::from_secs(2),
                reset: Duration::from_secs(9),
            },
            SEC,
            t0,
            t0,
        );
        assert_eq!(
            v,
            Verdict::Limited {
                retry_after: Duration::from_secs(2),
                reset: Duration::from_secs(9)
            }
        );
        assert_eq!(l.spend(1, t0), None);
    }

    /// The Redis bucket, as the memory tier models it (µs).
    struct Bucket {
        interval: u64,
        burst: u64,
        tat: u64,
    }

    impl Bucket {
        fn reserve(&mut self, now: u64, want: u64) -> Grant {
            crate::tier::memory::gcra_reserve(&mut self.tat, now, self.interval, self.burst, want)
        }
    }

    /// Replicas sharing one bucket, traffic in bursts and lulls far above and below the rate,
    /// with a round trip to Redis: in no window are more admitted than the limit allows
    /// (burst + rate x window), and over the whole run nearly all the limit is used.
    #[test]
    fn replicas_holding_reservations_never_admit_more_than_the_limit() {
        for (replicas, burst, interval_us) in [(2, 5, 10_000), (4, 20, 10_000), (4, 400, 1_000)] {
            let mut bucket = Bucket {
                interval: interval_us,
                burst,
                tat: 0,
            };
            let leases: Vec<Leases> = (0..replicas).map(|_| Leases::new(10)).collect();
            let base = Instant::now();
            let at = |us: u64| base + Duration::from_micros(us);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rand = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let rtt = 300;
            let mut admitted: Vec<u64> = Vec::new();
            let mut now = 0u64;
            let end = 20_000_000u64;
            while now < end {
                // Phases of 0.5 s: 4x the rate, half the rate, or nearly idle.
                let gap = match (now / 500_000) % 3 {
                    0 => interval_us / 4,
                    1 => interval_us * 2,
                    _ => interval_us * 50,
                };
                now += 1 + rand() % (2 * gap);
                let r = (rand() % replicas as u64) as usize;
                if leases[r].spend(1, at(now)).is_some() {
                    admitted.push(now);
                    continue;
                }
                // Redis decides half way through the round trip.
                let g = bucket.reserve(now + rtt / 2, WANT as u64);
                let interval = Duration::from_micros(interval_us);
                if let Verdict::Allowed { .. } =
                    leases[r].granted(1, g, interval, at(now), at(now + rtt))
                {
                    admitted.push(now + rtt / 2);
                }
            }
            admitted.sort_unstable();
            for i in 0..admitted.len() {
                for j in i..admitted.len() {
                    let window = admitted[j] - admitted[i];
                    let allowed = burst + window / interval_us;
                    assert!(
                        (j - i + 1) as u64 <= allowed,
                        "{replicas} replicas, burst {burst}: {} admitted in {window} µs, limit {allowed}",
                        j - i + 1
                    );
                    if window > 2 * burst * interval_us + 1_000_000 {
                        break;
                    }
                }
            }
            // Only the busy phases can use the limit: a third of the time at 4x the rate.
            let busy_capacity = (end / 3) / interval_us;
            assert!(
                admitted.len() as u64 >= busy_capacity * 8 / 10,
                "{replicas} replicas, burst {burst}: {} admitted, the busy phases allow about {busy_capacity}",
                admitted.len()
            );
        }
    }

    /// At half the limit's rate, on 1, 2 and 4 replicas (the load spread evenly): at most one
    /// round trip to Redis per ten requests, and none refused.
    #[test]
    fn at_half_the_rate_one_round_trip_serves_ten_requests_or_more() {
        for replicas in [1usize, 2, 4] {
            let interval_us = 1_000;
            let mut bucket = Bucket {
                interval: interval_us,
                burst: 1_000,
                tat: 0,
            };
            let leases: Vec<Leases> = (0..replicas).map(|_| Leases::new(10)).collect();
            let base = Instant::now();
            let at = |us: u64| base + Duration::from_micros(us);
            let (mut trips, mut refused) = (0u32, 0u32);
            let requests = 20_000u64;
            for i in 0..requests {
                let now = i * 2 * interval_us;
                let r = i as usize % replicas;
                if leases[r].spend(1, at(now)).is_some() {
                    continue;
                }
                trips += 1;
                let g = bucket.reserve(now + 150, WANT as u64);
                let v = leases[r].granted(
                    1,
                    g,
                    Duration::from_micros(interval_us),
                    at(now),
                    at(now + 300),
                );
                if matches!(v, Verdict::Limited { .. }) {
                    refused += 1;
                }
            }
            assert_eq!(refused, 0, "{replicas} replicas");
            assert!(
                u64::from(trips) * 10 <= requests,
                "{replicas} replicas: {trips} round trips for {requests} requests"
            );
        }
    }

    #[test]
    fn a_full_table_asks_for_one_token_at_a_time() {
        let l = Leases::new(2);
        let t0 = Instant::now();
        assert_eq!(l.want(), WANT);
        for key in 0..4 {
            l.granted(key, grant(3, 0, 60_000), SEC, t0, t0);
        }
        l.prune();
        assert_eq!(l.want(), 1);
    }
}
