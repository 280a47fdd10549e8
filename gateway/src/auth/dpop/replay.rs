//! Each DPoP proof is accepted once (RFC 9449 11.1): its `jti` is remembered for as long as a
//! proof with it could pass the `iat` check, in this process and, with Redis, across replicas
//! (`SET dpop:<jti> NX PX`). With Redis out of reach the local set decides alone, and that is
//! counted: a proof replayed to another replica in that time is the one thing not caught.
//!
//! The local set is two generations of hashed ids, not a cache: a cache evicts under pressure,
//! and an evicted `jti` could be replayed. At its bound it refuses new proofs (fail closed)
//! until a generation ages out.

use crate::metrics::Metrics;
use crate::tier::SharedTier;
use prometheus::IntCounter;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Ids kept at most, both generations together (16 bytes each, about 50 MB at the bound:
/// thousands of DPoP requests a second for minutes).
pub const MAX_IDS: usize = 2_000_000;

/// What the replay check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First use: the request may go on.
    Fresh,
    /// Used before, here or on another replica.
    Replayed,
    /// The local set is at its bound: the proof cannot be checked, so it is not accepted.
    Full,
}

type Id = [u8; 16];

struct Generations {
    current: HashSet<Id>,
    previous: HashSet<Id>,
    started: Instant,
    /// At least the longest lifetime asked for: an id lives one to two periods.
    period: Duration,
}

impl Generations {
    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= self.period * 2 {
            self.previous.clear();
            self.current.clear();
            self.started = now;
        } else if age >= self.period {
            self.previous = std::mem::take(&mut self.current);
            self.started = now;
        }
    }
}

pub struct ReplayGuard {
    local: Mutex<Generations>,
    max_ids: usize,
    fresh: IntCounter,
    replayed: IntCounter,
    full: IntCounter,
    local_only: IntCounter,
}

impl ReplayGuard {
    pub fn new(metrics: &Metrics) -> Self {
        Self::bounded(MAX_IDS, metrics)
    }

    pub fn bounded(max_ids: usize, metrics: &Metrics) -> Self {
        let c = |r: &str| metrics.dpop_replay_total.with_label_values(&[r]);
        ReplayGuard {
            local: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                started: Instant::now(),
                period: Duration::from_secs(1),
            }),
            max_ids,
            fresh: c("fresh"),
            replayed: c("replay"),
            full: c("full"),
            local_only: c("local_only"),
        }
    }

    /// Records `jti` as used for `ttl`, and says whether it was used before.
    pub async fn first_use(
        &self,
        jti: &str,
        ttl: Duration,
        shared: Option<&dyn SharedTier>,
    ) -> Seen {
        let seen = match self.local_first_use(jti, ttl, Instant::now()) {
            Seen::Fresh => match shared {
                Some(t) => self.shared_first_use(t, jti, ttl).await,
                None => Seen::Fresh,
            },
            other => other,
        };
        match seen {
            Seen::Fresh => self.fresh.inc(),
            Seen::Replayed => self.replayed.inc(),
            Seen::Full => self.full.inc(),
        }
        seen
    }

    fn local_first_use(&self, jti: &str, ttl: Duration, now: Instant) -> Seen {
        let id: Id = {
            let d = Sha256::digest(jti.as_bytes());
            let mut id = [0u8; 16];
            id.copy_from_slice(&d[..16]);
            id
        };
        let mut g = self.local.lock().unwrap_or_else(|p| p.into_inner());
        // A longer lifetime than any before (a reload widened a window) lengthens the period
        // from now on; ids already kept keep at least the period they were stored under.
        g.period = g.period.max(ttl);
        g.rotate(now);
        if g.current.contains(&id) || g.previous.contains(&id) {
            return Seen::Replayed;
        }
        if g.current.len() + g.previous.len() >= self.max_ids {
            return Seen::Full;
        }
        g.current.insert(id);
        Seen::Fresh
    }

    /// `SET NX` across replicas; Redis out of reach leaves the local answer, counted.
    async fn shared_first_use(&self, shared: &dyn SharedTier, jti: &str, ttl: Duration) -> Seen {
        match shared.first_use(jti, ttl).await {
            Some(true) => Seen::Fresh,
            Some(false) => Seen::Replayed,
            None => {
                self.local_only.inc();
                Seen::Fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_accepted_once_while_it_could_still_pass() {
        let m = Metrics::new();
        let g = ReplayGuard::new(&m);
        let ttl = Duration::from_secs(121);
        let t0 = Instant::now();
        assert_eq!(g.local_first_use("a", ttl, t0), Seen::Fresh);
        assert_eq!(g.local_first_use("a", ttl, t0), Seen::Replayed);
        assert_eq!(g.local_first_use("b", ttl, t0), Seen::Fresh);
        // Kept across one rotation (at least one full period)...
        let later = t0 + ttl + Duration::from_secs(1);
        assert_eq!(g.local_first_use("a", ttl, later), Seen::Replayed);
        // ...and gone after two, when no proof with it can pass the iat check any more.
        let much_later = later + ttl * 2;
        assert_eq!(g.local_first_use("a", ttl, much_later), Seen::Fresh);
    }

    #[test]
    fn at_its_bound_the_set_refuses_rather_than_forgets() {
        let m = Metrics::new();
        let g = ReplayGuard::bounded(3, &m);
        let ttl = Duration::from_secs(60);
        let t0 = Instant::now();
        for id in ["a", "b", "c"] {
            assert_eq!(g.local_first_use(id, ttl, t0), Seen::Fresh);
        }
        assert_eq!(g.local_first_use("d", ttl, t0), Seen::Full);
        assert_eq!(g.local_first_use("a", ttl, t0), Seen::Replayed);
        // Once the old ids can no longer pass, there is room again.
        assert_eq!(
            g.local_first_use("d", ttl, t0 + ttl * 2 + Duration::from_secs(1)),
            Seen::Fresh
        );
    }

    #[tokio::test]
    async fn a_proof_spent_on_one_replica_is_refused_on_another() {
        use crate::tier::memory::MemoryTier;
        let tier = MemoryTier::new(std::sync::Arc::new(crate::clock::ManualClock::default()));
        let (m1, m2) = (Metrics::new(), Metrics::new());
        let (a, b) = (ReplayGuard::new(&m1), ReplayGuard::new(&m2));
        let ttl = Duration::from_secs(120);
        assert_eq!(a.first_use("p-1", ttl, Some(&*tier)).await, Seen::Fresh);
        assert_eq!(b.first_use("p-1", ttl, Some(&*tier)).await, Seen::Replayed);
        assert_eq!(b.first_use("p-2", ttl, Some(&*tier)).await, Seen::Fresh);
        // Without the tier each replica knows only its own.
        tier.set_down(true);
        assert_eq!(a.first_use("p-3", ttl, Some(&*tier)).await, Seen::Fresh);
        assert_eq!(b.first_use("p-3", ttl, Some(&*tier)).await, Seen::Fresh);
        assert_eq!(a.first_use("p-3", ttl, Some(&*tier)).await, Seen::Replayed);
        assert_eq!(a.local_only.get(), 1);
    }
}
