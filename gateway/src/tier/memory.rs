//! The shared tier in memory, for unit tests: Redis's semantics (TTLs, `SET NX`, the GCRA
//! script's arithmetic) on a [`Clock`], shared by as many "replicas" as a test builds, and a
//! switch that makes it stop answering as Redis does when it goes away.

use super::{kind, Bucket, Grant, Revocation, Revoked, SharedTier, TokenHash, BATCH_FROM};
use crate::clock::Clock;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct MemoryTier {
    clock: Arc<dyn Clock>,
    origin: Instant,
    keys: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
    /// Each bucket's theoretical arrival time, in µs since `origin`.
    buckets: Mutex<HashMap<String, u64>>,
    down: AtomicBool,
    /// Revocations announced, in order (the events channel).
    pub published: Mutex<Vec<Revocation>>,
    /// Calls answered or refused, of every kind.
    pub calls: AtomicUsize,
}

impl MemoryTier {
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        let origin = clock.now();
        Arc::new(MemoryTier {
            clock,
            origin,
            keys: Mutex::default(),
            buckets: Mutex::default(),
            down: AtomicBool::new(false),
            published: Mutex::default(),
            calls: AtomicUsize::new(0),
        })
    }

    /// From now on every call answers `None` (`true`), or answers again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Counts the call; `None` while down.
    fn up(&self) -> Option<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (!self.down.load(Ordering::SeqCst)).then_some(())
    }

    fn get(&self, key: &str) -> Option<(Vec<u8>, Duration)> {
        let now = self.clock.now();
        let mut keys = self.keys.lock().expect("lock");
        match keys.get(key) {
            Some((v, until)) if *until > now => Some((v.clone(), *until - now)),
            Some(_) => {
                keys.remove(key);
                None
            }
            None => None,
        }
    }

    fn set(&self, key: String, value: Vec<u8>, ttl: Duration) {
        let until = self.clock.now() + ttl.max(Duration::from_millis(1));
        self.keys.lock().expect("lock").insert(key, (value, until));
    }

    /// The key of `id` under `kind` (what Redis spells after its prefix).
    pub fn key(kind: &str, id: &str) -> String {
        format!("{kind}:{id}")
    }

    /// Whether `key` is held now.
    pub fn holds(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn now_us(&self) -> u64 {
        self.clock.since(self.origin).as_micros() as u64
    }
}

/// The GCRA script of `redis_link::gcra`, in µs: a model of the Redis bucket.
pub fn gcra_reserve(tat: &mut u64, now: u64, interval: u64, burst: u64, want: u64) -> Grant {
    let tau = interval * burst;
    let t = (*tat).max(now);
    let room = (now + tau).saturating_sub(t) / interval;
    if room < 1 {
        return Grant {
            granted: 0,
            remaining: 0,
            retry_after: Duration::from_micros((t + interval).saturating_sub(tau + now)),
            reset: Duration::from_micros(t - now),
        };
    }
    let n = if room >= u64::from(BATCH_FROM) {
        room / 4
    } else {
        1
    }
    .min(want.max(1));
    *tat = t + n * interval;
    Grant {
        granted: n as u32,
        remaining: (room - n) as u32,
        retry_after: Duration::ZERO,
        reset: Duration::from_micros(*tat - now),
    }
}

#[async_trait]
impl SharedTier for MemoryTier {
    async fn cached(&self, token: &TokenHash) -> Option<(Vec<u8>, Duration)> {
        self.up()?;
        self.get(&Self::key(kind::CACHED, &hex::encode(token)))
    }

    async fn cache(&self, token: &TokenHash, value: Vec<u8>, ttl: Duration) {
        if self.up().is_some() {
            self.set(Self::key(kind::CACHED, &hex::encode(token)), value, ttl);
        }
    }

    async fn revoke(&self, r: &Revocation) -> Option<()> {
        self.up()?;
        let stored = r.stored();
        self.set(
            Self::key(stored.kind, stored.id),
            stored.value.into_bytes(),
            stored.ttl,
        );
        if let Revocation::Token { id, .. } = r {
            self.keys
                .lock()
                .expect("lock")
                .remove(&Self::key(kind::CACHED, id));
        }
        self.published.lock().expect("lock").push(r.clone());
        Some(())
    }

    async fn revocations(
        &self,
        token: &TokenHash,
        jti: Option<&str>,
        subject: &str,
    ) -> Option<Revoked> {
        self.up()?;
        Some(Revoked {
            token: self.holds(&Self::key(kind::REVOKED, &hex::encode(token))),
            jti: jti.is_some_and(|j| self.holds(&Self::key(kind::REVOKED, j))),
            subject_not_before_ms: self
                .get(&Self::key(kind::REVOKED_SUBJECT, subject))
                .and_then(|(v, _)| String::from_utf8(v).ok()?.parse().ok()),
        })
    }

    async fn reserve(&self, bucket: Bucket<'_>, want: u32) -> Option<Grant> {
        self.up()?;
        let now = self.now_us();
        let interval = bucket.interval.as_micros().max(1) as u64;
        let mut buckets = self.buckets.lock().expect("lock");
        let tat = buckets.entry(bucket.name.to_string()).or_insert(now);
        Some(gcra_reserve(
            tat,
            now,
            interval,
            u64::from(bucket.burst),
            u64::from(want),
        ))
    }

    async fn peek(&self, bucket: Bucket<'_>) -> Option<u32> {
        self.up()?;
        let now = self.now_us();
        let interval = bucket.interval.as_micros().max(1) as u64;
        let tat = self
            .buckets
            .lock()
            .expect("in memory")
            .get(bucket.name)
            .copied()
            .unwrap_or(now)
            .max(now);
        let room = (now + interval * u64::from(bucket.burst)).saturating_sub(tat) / interval;
        Some(room.min(u64::from(bucket.burst)) as u32)
    }

    async fn first_use(&self, jti: &str, ttl: Duration) -> Option<bool> {
        self.up()?;
        let key = Self::key(kind::DPOP_PROOF, jti);
        if self.holds(&key) {
            return Some(false);
        }
        self.set(key, b"1".to_vec(), ttl);
        Some(true)
    }
}
