//! Revocation: tokens (by hash), `jti`s and subjects refused from a point on, on this replica
//! at once and on every replica through Redis (keys for late joiners, pub/sub for the rest).

use super::cache::{TokenCache, TokenHash};
use super::Principal;
use crate::redis_link::{RedisLink, RedisOp};
use crate::tier::SharedTier;
use arc_swap::ArcSwapOption;
use moka::sync::Cache;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How long a revocation is kept when the token's own expiry is unknown, until the
/// configuration says (`auth.revocation_ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_ENTRIES: u64 = 1_000_000;

/// How long a revocation of this identity must last: as long as the token could still be
/// accepted (its `exp` plus the provider's leeway), or `unknown` when it has no expiry.
pub fn ttl_for(p: &Principal, unknown: Duration) -> Duration {
    match p.valid_until {
        Some(until) => until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1)),
        None => unknown,
    }
}

pub use crate::tier::Revocation;

#[derive(Clone)]
struct Held {
    ttl: Duration,
    not_before_ms: u64,
}

struct HeldExpiry;

impl<K> moka::Expiry<K, Held> for HeldExpiry {
    fn expire_after_create(&self, _k: &K, v: &Held, _now: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &K,
        v: &Held,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl)
    }
}

fn held_cache<K: std::hash::Hash + Eq + Send + Sync + 'static>() -> Cache<K, Held> {
    Cache::builder()
        .max_capacity(MAX_ENTRIES)
        // LRU, not TinyLFU: a new revocation is always admitted (TinyLFU may refuse an entry
        // it has not seen often, which would silently let a revoked token through).
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .expire_after(HeldExpiry)
        .build()
}

pub struct Revocations {
    tokens: Cache<TokenHash, Held>,
    jtis: Cache<String, Held>,
    subjects: Cache<String, Held>,
    /// Set by the first revocation ever seen, so that until then a check costs one load.
    any: AtomicBool,
    /// The token cache in use, whose entries a revocation removes.
    cache: ArcSwapOption<TokenCache>,
    /// `auth.revocation_ttl` of the running configuration, in ms.
    default_ttl_ms: std::sync::atomic::AtomicU64,
    /// Revocations applied here that Redis has not confirmed yet, oldest first. Kept until it
    /// has (retried by [`retry_outbox`]), so a Redis outage never loses one.
    outbox: std::sync::Mutex<std::collections::VecDeque<Revocation>>,
    /// One flush at a time: the request that revoked and the retry task may both try.
    flushing: tokio::sync::Mutex<()>,
}

/// How far a revocation has reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Stored in Redis and published: every replica refuses it.
    All,
    /// Applied here; Redis has not confirmed yet and it will be retried until it does.
    Pending,
    /// There is no Redis: this replica only.
    ThisReplica,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Default for Revocations {
    fn default() -> Self {
        Self::new()
    }
}

impl Revocations {
    pub fn new() -> Self {
        Revocations {
            tokens: held_cache(),
            jtis: held_cache(),
            subjects: held_cache(),
            any: AtomicBool::new(false),
            cache: ArcSwapOption::empty(),
            default_ttl_ms: std::sync::atomic::AtomicU64::new(DEFAULT_TTL.as_millis() as u64),
            outbox: std::sync::Mutex::new(std::collections::VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Revocations not yet confirmed by Redis.
    pub fn pending(&self) -> usize {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `auth.revocation_ttl` of the configuration being installed.
    pub fn set_default_ttl(&self, ttl: Duration) {
        self.default_ttl_ms
            .store(ttl.as_millis() as u64, Ordering::Release);
    }

    /// How long a revocation without a known expiry lasts.
    pub fn default_ttl(&self) -> Duration {
        Duration::from_millis(self.default_ttl_ms.load(Ordering::Acquire))
    }

    pub fn use_cache(&self, cache: &Arc<TokenCache>) {
        self.cache.store(Some(cache.clone()));
    }

    fn clear_cache(&self) {
        if let Some(c) = self.cache.load_full() {
            c.clear();
        }
    }

    fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    pub fn token_revoked(&self, hash: &TokenHash) -> bool {
        self.any() && self.tokens.contains_key(hash)
    }

    /// Whether the identity is refused by a `jti` or subject revocation.
    pub fn principal_revoked(&self, p: &Principal) -> bool {
        if !self.any() {
            return false;
        }
        if p.jti.as_deref().is_some_and(|j| self.jtis.contains_key(j)) {
            return true;
        }
        match self.subjects.get(p.subject.as_str()) {
            Some(h) => issued_ms(p).is_none_or(|iat| iat < h.not_before_ms),
            None => false,
        }
    }

    /// Applies a revocation to this replica.
    pub fn apply(&self, r: &Revocation) {
        let held = |ttl_ms: u64, not_before_ms: u64| Held {
            ttl: Duration::from_millis(ttl_ms.max(1)),
            not_before_ms,
        };
        match r {
            Revocation::Token { id, ttl_ms } => {
                let Some(hash) = hex::decode(id)
                    .ok()
                    .and_then(|b| <TokenHash>::try_from(b).ok())
                else {
                    return;
                };
                self.tokens.insert(hash, held(*ttl_ms, 0));
                if let Some(c) = self.cache.load_full() {
                    c.invalidate(&hash);
                }
            }
            Revocation::Jti { id, ttl_ms } => self.jtis.insert(id.clone(), held(*ttl_ms, 0)),
            Revocation::Subject {
                id,
                not_before_ms,
                ttl_ms,
            } => self
                .subjects
                .insert(id.clone(), held(*ttl_ms, *not_before_ms)),
        }
        self.any.store(true, Ordering::Release);
    }

    /// Applies locally at once, then stores in Redis with its TTL and tells the other
    /// replicas; while Redis does not answer it waits in the outbox and is retried.
    pub async fn revoke(&self, r: Revocation, shared: Option<&dyn SharedTier>) -> Reach {
        self.apply(&r);
        let Some(shared) = shared else {
            return Reach::ThisReplica;
        };
        self.outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(r);
        if self.flush(shared).await {
            Reach::All
        } else {
            Reach::Pending
        }
    }

    /// Sends the outbox to Redis, oldest first; `true` once it is empty. Stops at the first
    /// revocation Redis does not confirm (order is kept: nothing is skipped).
    pub async fn flush(&self, shared: &dyn SharedTier) -> bool {
        let _one = self.flushing.lock().await;
        loop {
            let next = self
                .outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .front()
                .cloned();
            let Some(r) = next else { return true };
            if shared.revoke(&r).await.is_none() {
                return false;
            }
            self.outbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front();
        }
    }

    /// For an identity just verified (not from a cache): whether another replica revoked it
    /// before this one started listening. One round trip.
    pub async fn revoked_in_shared(
        &self,
        shared: &dyn SharedTier,
        hash: &TokenHash,
        p: &Principal,
    ) -> bool {
        let Some(found) = shared.revocations(hash, p.jti.as_deref(), &p.subject).await else {
            return false;
        };
        let (token_revoked, jti_revoked, subject_nbf) =
            (found.token, found.jti, found.subject_not_before_ms);
        // Local copies of what the shared tier holds: as long as the token could pass, at least.
        let ttl_ms = ttl_for(p, self.default_ttl()).as_millis() as u64;
        if token_revoked {
            self.apply(&Revocation::Token {
                id: hex::encode(hash),
                ttl_ms,
            });
        }
        let subject_revoked =
            subject_nbf.is_some_and(|nbf| issued_ms(p).is_none_or(|iat| iat < nbf));
        if let Some(nbf) = subject_nbf {
            self.apply(&Revocation::Subject {
                id: p.subject.clone(),
                not_before_ms: nbf,
                ttl_ms: self.default_ttl().as_millis() as u64,
            });
        }
        token_revoked || jti_revoked || subject_revoked
    }

    pub fn subject_now(subject: &str, ttl: Duration) -> Revocation {
        Revocation::Subject {
            id: subject.to_string(),
            not_before_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }
}

fn issued_ms(p: &Principal) -> Option<u64> {
    p.issued_at
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
}

/// Retries the outbox while it holds revocations Redis has not confirmed, for as long as the
/// link lives.
pub async fn retry_outbox(link: Weak<RedisLink>, revocations: Weak<Revocations>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (Some(l), Some(r)) = (link.upgrade(), revocations.upgrade()) else {
            return;
        };
        if r.pending() > 0 && r.flush(&*l).await {
            tracing::info!("pending revocations stored in Redis and published");
        }
    }
}

/// How often the subscription is pinged, and how long a ping may take: a connection that a
/// NAT or a failover silently dropped is noticed within about this.
const LIVENESS: Duration = Duration::from_secs(2);

/// Listens on `<prefix>events` and applies what other replicas revoke, reconnecting as
/// needed. The subscription is pinged every [`LIVENESS`]; a ping that fails or goes
/// unanswered ends it. After any gap the local token cache is cleared: events may have been
/// missed.
pub async fn listen(link: Weak<RedisLink>, revocations: Weak<Revocations>) {
    use futures_util::StreamExt;
    let mut first = true;
    loop {
        let Some(l) = link.upgrade() else { return };
        let channel = format!("{}events", l.prefix);
        let client = l.pubsub_client();
        drop(l);
        let subscribed = match client {
            Some(c) => c.get_async_pubsub().await,
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no node to subscribe on",
            ))),
        };
        match subscribed {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    if !first {
                        if let Some(r) = revocations.upgrade() {
                            r.clear_cache();
                        }
                        tracing::info!("revocation events: resubscribed; token cache cleared");
                    }
                    let (mut sink, mut stream) = pubsub.split();
                    let mut ping = tokio::time::interval(LIVENESS);
                    ping.tick().await;
                    loop {
                        tokio::select! {
                            msg = stream.next() => {
                                let Some(msg) = msg else { break };
                                let Some(r) = revocations.upgrade() else {
                                    return;
                                };
                                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                                match serde_json::from_slice::<Revocation>(&payload) {
                                    Ok(event) => r.apply(&event),
                                    Err(_) => tracing::warn!("ignoring a malformed revocation event"),
                                }
                            }
                            _ = ping.tick() => {
                                let alive = tokio::time::timeout(LIVENESS, sink.ping::<redis::Value>()).await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    tracing::warn!("revocation events: the subscription stopped answering; reconnecting");
                                    if let Some(l) = link.upgrade() {
                                        l.count_error(RedisOp::Subscribe);
                                    }
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(_) => {
                if let Some(l) = link.upgrade() {
                    l.count_error(RedisOp::Subscribe);
                }
            }
        }
        // Gone or never there: whatever arrives later, the cache is stale from here.
        first = false;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
