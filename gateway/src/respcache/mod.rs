//! The response cache for GET/HEAD routes with `cache:`: bounded in bytes (moka with a
//! weigher), keyed by route, normalised path, sorted query and the route's `vary` values, with
//! request coalescing, stale-while-revalidate and stale-if-error.
//!
//! It runs after authentication and rate limits, so it never lets anyone skip them.

pub mod policy;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use moka::sync::Cache;
use policy::CacheKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a key whose upstream answer could not be stored skips coalescing ("hit for pass").
const PASS_TTL: Duration = Duration::from_secs(10);

/// A stored answer.
pub struct CachedResponse {
    pub status: u16,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub stored_at: Instant,
    pub fresh_for: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
}

impl CachedResponse {
    pub fn age(&self) -> Duration {
        self.stored_at.elapsed()
    }

    pub fn freshness(&self) -> Freshness {
        let age = self.age();
        if age < self.fresh_for {
            Freshness::Fresh
        } else if age < self.fresh_for + self.stale_while_revalidate {
            Freshness::StaleRevalidate
        } else if age < self.fresh_for + self.stale_if_error {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    pub fn usable_if_error(&self) -> bool {
        self.age() < self.fresh_for + self.stale_if_error.max(self.stale_while_revalidate)
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        u32::try_from(self.body.len() + headers + 128).unwrap_or(u32::MAX)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Servable while one request refreshes it.
    StaleRevalidate,
    /// Servable only if the upstream fails.
    StaleIfError,
    Expired,
}

/// What the response says about the cache: `X-Cache` and the metric's `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 4] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Bypass,
    ];

    pub fn header(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Bypass => "BYPASS",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Bypass => "bypass",
        }
    }
}

struct Expiry;

impl moka::Expiry<CacheKey, Arc<CachedResponse>> for Expiry {
    fn expire_after_create(
        &self,
        _k: &CacheKey,
        v: &Arc<CachedResponse>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(v.fresh_for + v.stale_while_revalidate.max(v.stale_if_error))
    }
    fn expire_after_update(
        &self,
        _k: &CacheKey,
        v: &Arc<CachedResponse>,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.fresh_for + v.stale_while_revalidate.max(v.stale_if_error))
    }
}

pub struct ResponseCache {
    entries: Cache<CacheKey, Arc<CachedResponse>>,
    /// Primary key -> the request headers the upstream said its answer varies on.
    vary: Cache<CacheKey, Arc<Vec<HeaderName>>>,
    pass: Cache<CacheKey, ()>,
    inflight: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
    pub max_entry_size: usize,
    pub max_size: u64,
}

/// Held by the one request filling a key; dropping it wakes the requests waiting for it.
pub struct FillGuard {
    cache: Arc<ResponseCache>,
    key: CacheKey,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut map = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
    }
}

pub enum Claim {
    /// This request fetches the key; others wait for it.
    Fill(FillGuard),
    /// Another request is fetching it.
    Wait(watch::Receiver<()>),
    /// The key recently proved uncacheable: just forward.
    Pass,
}

impl ResponseCache {
    pub fn new(max_size: u64, max_entry_size: u64) -> Self {
        ResponseCache {
            entries: Cache::builder()
                .max_capacity(max_size)
                .weigher(|_k: &CacheKey, v: &Arc<CachedResponse>| v.weight())
                .expire_after(Expiry)
                .build(),
            vary: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            pass: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(PASS_TTL)
                .build(),
            inflight: Mutex::new(HashMap::new()),
            max_entry_size: usize::try_from(max_entry_size).unwrap_or(usize::MAX),
            max_size,
        }
    }

    pub fn lookup(
        &self,
        primary: &CacheKey,
        headers: &http::HeaderMap,
    ) -> Option<Arc<CachedResponse>> {
        let key = match self.vary.get(primary) {
            Some(names) => policy::secondary_key(primary, &names, headers),
            None => *primary,
        };
        self.entries.get(&key)
    }

    pub fn claim(self: &Arc<Self>, primary: &CacheKey) -> Claim {
        if self.pass.contains_key(primary) {
            return Claim::Pass;
        }
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(primary) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(*primary, rx);
        Claim::Fill(FillGuard {
            cache: self.clone(),
            key: *primary,
            _done: tx,
        })
    }

    pub fn mark_uncacheable(&self, primary: &CacheKey) {
        self.pass.insert(*primary, ());
    }

    pub fn store(
        &self,
        primary: &CacheKey,
        vary: Vec<HeaderName>,
        request_headers: &http::HeaderMap,
        response: CachedResponse,
    ) {
        let key = policy::secondary_key(primary, &vary, request_headers);
        if vary.is_empty() {
            self.vary.invalidate(primary);
        } else {
            self.vary.insert(*primary, Arc::new(vary));
        }
        self.entries.insert(key, Arc::new(response));
    }

    /// Bytes held (for tests and the gauge).
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// Waits for a fill to finish, at most `limit`.
pub async fn wait(mut rx: watch::Receiver<()>, limit: Duration) {
    // The sender is dropped when the fill ends either way; `changed` then errors.
    let _ = tokio::time::timeout(limit, async { while rx.changed().await.is_ok() {} }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(body: &str, fresh_ms: u64) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: vec![],
            body: Bytes::from(body.to_string()),
            stored_at: Instant::now(),
            fresh_for: Duration::from_millis(fresh_ms),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_millis(fresh_ms * 10),
        }
    }

    #[test]
    fn size_is_bounded_in_bytes() {
        let c = ResponseCache::new(64 * 1024, 16 * 1024);
        let body = "x".repeat(8 * 1024);
        for i in 0..100u8 {
            c.store(
                &[i; 32],
                vec![],
                &http::HeaderMap::new(),
                resp(&body, 60_000),
            );
        }
        assert!(c.weighted_size() <= 64 * 1024, "{}", c.weighted_size());
    }

    #[test]
    fn freshness_moves_through_its_windows() {
        let mut r = resp("a", 1000);
        assert_eq!(r.freshness(), Freshness::Fresh);
        r.stored_at = Instant::now() - Duration::from_millis(1500);
        assert_eq!(r.freshness(), Freshness::StaleIfError);
        assert!(r.usable_if_error());
        r.stale_while_revalidate = Duration::from_secs(1);
        assert_eq!(r.freshness(), Freshness::StaleRevalidate);
        r.stored_at = Instant::now() - Duration::from_secs(20);
        assert_eq!(r.freshness(), Freshness::Expired);
    }

    #[test]
    fn one_filler_per_key() {
        let c = Arc::new(ResponseCache::new(1 << 20, 1 << 16));
        let k = [7u8; 32];
        let first = c.claim(&k);
        assert!(matches!(first, Claim::Fill(_)));
        assert!(matches!(c.claim(&k), Claim::Wait(_)));
        drop(first);
        assert!(matches!(c.claim(&k), Claim::Fill(_)));
        c.mark_uncacheable(&k);
        assert!(matches!(c.claim(&k), Claim::Pass));
    }
}
