//! The validated-token cache: tier 1 in-process (moka, bounded), tier 2 in Redis
//! (`tok:<sha256>`), shared by every replica. It holds identities, never a route's decision:
//! scopes and provider lists are checked against the cached identity on every request.

use super::fingerprint::Fingerprint;
use super::Principal;
use crate::config::model::TokenCacheSettings;
use crate::metrics::Metrics;
use crate::tier::SharedTier;
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::tier::TokenHash;

/// Where an answer came from, for metrics and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Redis,
    /// Verified by a provider just now.
    Miss,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Redis => "redis",
            Tier::Miss => "miss",
        }
    }
}

#[derive(Clone)]
pub enum Entry {
    Valid(Arc<Principal>),
    /// A definite refusal, kept for `negative_ttl` (boxed: rare, and it keeps entries small).
    Refused(Box<Refusal>),
}

/// A refusal by exactly the providers in `mask` (of configuration `generation`); routes with
/// other provider lists do not see it.
#[derive(Clone)]
pub struct Refusal {
    pub mask: u64,
    pub generation: u64,
    pub provider: usize,
    pub rejection: super::AuthError,
}

/// An entry, the fingerprint of the provider that made it, and the moment it stops being
/// served.
#[derive(Clone)]
struct Stored {
    entry: Entry,
    fingerprint: Fingerprint,
    until: Instant,
}

/// An entry never outlives its token: `min(max_ttl, valid_until - now)`.
pub fn ttl_for(p: &Principal, max_ttl: Duration) -> Duration {
    match p.valid_until {
        Some(until) => until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(max_ttl),
        None => max_ttl,
    }
}

/// The Redis form of a cached identity.
#[derive(Serialize, Deserialize)]
struct Shared {
    sub: String,
    scopes: Vec<String>,
    provider: String,
    exp: Option<u64>,
    valid_until: Option<u64>,
    cid: Option<String>,
    jti: Option<String>,
    iat: Option<u64>,
    /// Hex fingerprint of the provider that made it; entries without one are misses.
    #[serde(default)]
    fp: Option<String>,
    /// The claims kept for route rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// The DPoP key binding. Entries of a provider with `dpop` on are written with the mode
    /// in their fingerprint, so one written without this field is never read as unbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jkt: Option<String>,
}

fn secs(t: Option<SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

fn time(s: Option<u64>) -> Option<SystemTime> {
    s.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// Tier 1 is a quick_cache (CLOCK-PRO eviction, a few dozen bytes of overhead per entry);
/// expiry is checked on every read, so no entry is served past `until`.
pub struct TokenCache {
    local: Cache<TokenHash, Stored>,
    /// Refusals, apart and smaller: a flood of junk tokens evicts other junk, never the
    /// identities of real users.
    refused: Cache<TokenHash, Stored>,
    pub settings: TokenCacheSettings,
    local_hit: IntCounter,
    local_miss: IntCounter,
    redis_hit: IntCounter,
    redis_miss: IntCounter,
}

impl TokenCache {
    pub fn new(settings: &TokenCacheSettings, metrics: &Metrics) -> Self {
        let c =
            |tier: &str, result: &str| metrics.token_cache_total.with_label_values(&[tier, result]);
        TokenCache {
            local: Cache::new(usize::try_from(settings.max_entries).unwrap_or(usize::MAX)),
            refused: Cache::new(
                usize::try_from(settings.max_entries / 10)
                    .unwrap_or(usize::MAX)
                    .max(1000),
            ),
            settings: settings.clone(),
            local_hit: c("local", "hit"),
            local_miss: c("local", "miss"),
            redis_hit: c("redis", "hit"),
            redis_miss: c("redis", "miss"),
        }
    }

    pub fn get_local(&self, key: &TokenHash) -> Option<Entry> {
        self.get_local_stamped(key).map(|(e, _)| e)
    }

    /// An entry with the fingerprint of the provider that made it. Not counted: the caller
    /// knows whether it could use it ([`TokenCache::count_local`]).
    pub fn get_local_stamped(&self, key: &TokenHash) -> Option<(Entry, Fingerprint)> {
        for tier in [&self.local, &self.refused] {
            match tier.get(key) {
                Some(s) if Instant::now() < s.until => return Some((s.entry, s.fingerprint)),
                Some(_) => {
                    tier.remove(key);
                }
                None => {}
            }
        }
        None
    }

    /// `authgate_token_cache_total{tier="local"}`: a hit is an entry the request could use.
    pub fn count_local(&self, hit: bool) {
        if hit {
            &self.local_hit
        } else {
            &self.local_miss
        }
        .inc();
    }

    /// `authgate_token_cache_total{tier="redis"}`, likewise.
    pub fn count_redis(&self, hit: bool) {
        if hit {
            &self.redis_hit
        } else {
            &self.redis_miss
        }
        .inc();
    }

    pub fn put_local(&self, key: TokenHash, entry: Entry, fingerprint: Fingerprint) {
        self.put_local_within(key, entry, fingerprint, Duration::MAX);
    }

    /// [`put_local`](Self::put_local), for at most `limit` (a copy of a Redis entry keeps what
    /// that entry has left, never a fresh lifetime).
    pub fn put_local_within(
        &self,
        key: TokenHash,
        entry: Entry,
        fingerprint: Fingerprint,
        limit: Duration,
    ) {
        let ttl = match &entry {
            Entry::Valid(p) => ttl_for(p, self.settings.max_ttl),
            Entry::Refused(_) => self.settings.negative_ttl,
        }
        .min(limit);
        if ttl.is_zero() {
            return;
        }
        let tier = match &entry {
            Entry::Valid(_) => &self.local,
            Entry::Refused(_) => &self.refused,
        };
        tier.insert(
            key,
            Stored {
                entry,
                fingerprint,
                until: Instant::now() + ttl,
            },
        );
    }

    pub fn invalidate(&self, key: &TokenHash) {
        self.local.remove(key);
        self.refused.remove(key);
    }

    /// After missed revocation events (Redis reconnected), nothing cached can be trusted.
    pub fn clear(&self) {
        self.local.clear();
        self.refused.clear();
    }

    pub fn len(&self) -> u64 {
        self.local.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A shared entry with the fingerprint it was stored under and what its TTL has left.
    pub async fn get_shared(
        &self,
        tier: &dyn SharedTier,
        key: &TokenHash,
    ) -> Option<(Principal, Fingerprint, Duration)> {
        let (value, left) = tier.cached(key).await?;
        let s = serde_json::from_slice::<Shared>(&value).ok()?;
        let mut fingerprint = [0u8; 16];
        hex::decode_to_slice(s.fp.as_deref()?, &mut fingerprint).ok()?;
        let p = Principal {
            subject: s.sub,
            scopes: super::scope_set(s.scopes),
            provider: s.provider.into(),
            expires_at: time(s.exp),
            valid_until: time(s.valid_until),
            credential_id: s.cid.map(Into::into),
            jti: s.jti,
            issued_at: time(s.iat),
            claims: s.claims.map(std::sync::Arc::new),
            jkt: s.jkt.map(Into::into),
        };
        Some((p, fingerprint, left))
    }

    pub async fn put_shared(
        &self,
        tier: &dyn SharedTier,
        key: &TokenHash,
        p: &Principal,
        fingerprint: &Fingerprint,
    ) {
        let ttl = ttl_for(p, self.settings.max_ttl);
        if ttl < Duration::from_millis(1) {
            return;
        }
        let stored = Shared {
            sub: p.subject.clone(),
            scopes: p.scopes.to_vec(),
            provider: p.provider.to_string(),
            exp: secs(p.expires_at),
            valid_until: secs(p.valid_until),
            cid: p.credential_id.as_deref().map(str::to_owned),
            jti: p.jti.clone(),
            iat: secs(p.issued_at),
            fp: Some(hex::encode(fingerprint)),
            claims: p.claims.as_deref().cloned(),
            jkt: p.jkt.as_deref().map(str::to_owned),
        };
        let Ok(body) = serde_json::to_vec(&stored) else {
            return;
        };
        tier.cache(key, body, ttl).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_entries: u64) -> TokenCacheSettings {
        TokenCacheSettings {
            max_entries,
            max_ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
        }
    }

    fn refusal() -> Entry {
        Entry::Refused(Box::new(Refusal {
            mask: 1,
            generation: 1,
            provider: 0,
            rejection: super::super::AuthError::Invalid {
                code: super::super::Denial::Malformed,
                reason: "junk".into(),
            },
        }))
    }

    fn hash(i: u64) -> TokenHash {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&i.to_be_bytes());
        h
    }

    #[test]
    fn a_flood_of_refusals_never_evicts_a_real_identity() {
        let cache = TokenCache::new(&settings(100), &Metrics::new());
        let real = Arc::new(Principal::for_tests("42", &["read"]));
        for i in 0..50 {
            cache.put_local(hash(1_000_000 + i), Entry::Valid(real.clone()), [1; 16]);
        }
        for i in 0..20_000 {
            cache.put_local(hash(i), refusal(), [0; 16]);
        }
        let kept = (0..50)
            .filter(|i| {
                matches!(
                    cache.get_local_stamped(&hash(1_000_000 + i)),
                    Some((Entry::Valid(_), fp)) if fp == [1; 16]
                )
            })
            .count();
        assert_eq!(kept, 50, "every identity survives the junk");
        assert!(matches!(
            cache.get_local_stamped(&hash(19_999)),
            Some((Entry::Refused(_), _))
        ));
    }

    #[test]
    fn a_copy_never_outlives_what_it_was_given() {
        let cache = TokenCache::new(&settings(100), &Metrics::new());
        let p = Arc::new(Principal::for_tests("1", &[]));
        cache.put_local_within(hash(1), Entry::Valid(p), [0; 16], Duration::ZERO);
        assert!(
            cache.get_local_stamped(&hash(1)).is_none(),
            "no time left, not kept"
        );
    }
}
