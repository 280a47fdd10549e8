//! A JWKS key store per provider, shared by every worker thread: fetched at start, refreshed
//! in the background, re-fetched on an unknown `kid` at most once per `MIN_REFETCH`, and the
//! last good set kept when a fetch fails.

use super::keys::VerifyKey;
use crate::clock::{Clock, SystemClock};
use crate::config::compile::KeyFamily;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Fewest seconds between two fetches triggered by tokens unless `jwks_min_refetch` says
/// otherwise (never under a second, which config enforces), so a flood of random `kid`s
/// cannot hammer the issuer.
pub const MIN_REFETCH: Duration = Duration::from_secs(5);
/// How long a `kid` that stayed unknown after a fetch is not looked for again.
const NEGATIVE_TTL: Duration = Duration::from_secs(30);
const NEGATIVE_MAX: usize = 10_000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Retry interval while the endpoint is failing.
const RETRY: Duration = Duration::from_secs(5);

/// Where a store's documents (a JWK set, OIDC metadata) come from: HTTP in the gateway, memory
/// in unit tests. An error is a short cause, never a token or a secret.
#[async_trait]
pub trait JwksSource: Send + Sync {
    async fn get(&self, url: &str) -> Result<bytes::Bytes, String>;
}

/// Documents fetched over HTTP(S), with the provider's CA bundle and no redirects.
pub struct HttpSource {
    client: reqwest::Client,
}

impl HttpSource {
    pub fn new(ca: Option<&crate::tls::CaBundle>) -> Result<Self, String> {
        let client = crate::tls::trust::idp_client_builder(ca)?
            .timeout(FETCH_TIMEOUT)
            // Fetches are rare and may run on different runtimes; pooled connections would be
            // tied to whichever runtime opened them.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("JWKS client: {e}"))?;
        Ok(HttpSource { client })
    }
}

#[async_trait]
impl JwksSource for HttpSource {
    async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        let resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("request failed: {}", crate::tls::trust::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.bytes()
            .await
            .map_err(|e| format!("reading body: {}", crate::tls::trust::error_chain(&e)))
    }
}

pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

pub enum Lookup {
    Found(Arc<KeySet>),
    /// Keys are loaded and none has this `kid`.
    Unknown,
    /// No key set was ever loaded, or the endpoint is down and the kid may be new.
    NotLoaded,
}

/// How often a store asks its issuer: every `refresh` in the background, and on an unknown
/// `kid` no more than once per `min_refetch` (`jwks_refresh`, `jwks_min_refetch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timers {
    pub refresh: Duration,
    pub min_refetch: Duration,
}

impl Timers {
    pub const DEFAULT: Timers = Timers {
        refresh: Duration::from_secs(300),
        min_refetch: MIN_REFETCH,
    };
}

pub struct JwksStore {
    pub provider: Arc<str>,
    pub url: String,
    /// With OIDC discovery: the issuer the metadata at `url` must name; its `jwks_uri` is
    /// fetched on every refresh, so a moved key set is followed.
    discovery: Option<String>,
    pub refresh: Duration,
    min_refetch: Duration,
    keys: ArcSwapOption<KeySet>,
    /// Digest of the key set last loaded (two halves; written only by a fetch): cached
    /// identities verified under another key set are misses, so a retired key stops working
    /// at the next refresh.
    key_set_hi: std::sync::atomic::AtomicU64,
    key_set_lo: std::sync::atomic::AtomicU64,
    source: Box<dyn JwksSource>,
    clock: Arc<dyn Clock>,
    fetch_lock: tokio::sync::Mutex<()>,
    last_fetch: Mutex<Option<Instant>>,
    /// Fetches begun, so a caller can tell whether one ran while it waited for the lock.
    fetches_begun: std::sync::atomic::AtomicU64,
    last_fetch_failed: AtomicBool,
    unknown_kids: Mutex<HashMap<String, Instant>>,
    ok: IntCounter,
    error: IntCounter,
}

impl JwksStore {
    pub fn new(
        provider: &str,
        url: &str,
        discovery: Option<&str>,
        timers: Timers,
        ca: Option<&crate::tls::CaBundle>,
        ok: IntCounter,
        error: IntCounter,
    ) -> Result<Self, String> {
        let source = Box::new(HttpSource::new(ca)?);
        Ok(Self::with_source(
            provider, url, discovery, timers, source, ok, error,
        ))
    }

    /// A store reading its documents from `source`, on the system clock (see
    /// [`Self::on_clock`]).
    pub fn with_source(
        provider: &str,
        url: &str,
        discovery: Option<&str>,
        timers: Timers,
        source: Box<dyn JwksSource>,
        ok: IntCounter,
        error: IntCounter,
    ) -> Self {
        JwksStore {
            provider: provider.into(),
            url: url.to_string(),
            discovery: discovery.map(str::to_owned),
            refresh: timers.refresh,
            min_refetch: timers.min_refetch,
            keys: ArcSwapOption::empty(),
            key_set_hi: std::sync::atomic::AtomicU64::new(0),
            key_set_lo: std::sync::atomic::AtomicU64::new(0),
            source,
            clock: Arc::new(SystemClock),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_fetch: Mutex::new(None),
            fetches_begun: std::sync::atomic::AtomicU64::new(0),
            last_fetch_failed: AtomicBool::new(false),
            unknown_kids: Mutex::new(HashMap::new()),
            ok,
            error,
        }
    }

    /// Starts with the key set `other` holds (a reload that changed only this store's timers
    /// keeps serving the keys it had while the new store's first fetch runs).
    pub fn seeded_from(self, other: &JwksStore) -> Self {
        if let Some(set) = other.keys.load_full() {
            self.keys.store(Some(set));
            for (to, from) in [
                (&self.key_set_hi, &other.key_set_hi),
                (&self.key_set_lo, &other.key_set_lo),
            ] {
                to.store(from.load(Ordering::Acquire), Ordering::Release);
            }
        }
        self
    }

    /// The same store measuring its re-fetch limit and negative cache on `clock`.
    pub fn on_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The digest of the key set in use ([`super::fingerprint::of_key_set`]).
    pub fn key_set_digest(&self) -> super::fingerprint::Fingerprint {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.key_set_hi.load(Ordering::Acquire).to_be_bytes());
        out[8..].copy_from_slice(&self.key_set_lo.load(Ordering::Acquire).to_be_bytes());
        out
    }

    pub fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    pub async fn lookup(&self, kid: Option<&str>, family: KeyFamily) -> Lookup {
        if let Some(found) = self.find(kid, family) {
            return found;
        }
        if let Some(kid) = kid {
            if self.recently_unknown(kid) {
                return self.unknown_or_unavailable();
            }
        }
        let asked_issuer = self.refetch_limited().await;
        match self.find(kid, family) {
            Some(found) => found,
            None if self.keys.load().is_none() => Lookup::NotLoaded,
            None => {
                // Only a kid the issuer was asked about is remembered: one that came while
                // the re-fetch limit held may be a key rotated in since, and its own next
                // request after the limit must fetch it, not wait out NEGATIVE_TTL.
                if let Some(kid) = kid.filter(|_| asked_issuer) {
                    self.remember_unknown(kid);
                }
                self.unknown_or_unavailable()
            }
        }
    }

    /// A kid we do not know is the client's fault only if we could ask the issuer.
    fn unknown_or_unavailable(&self) -> Lookup {
        if self.last_fetch_failed.load(Ordering::Acquire) {
            Lookup::NotLoaded
        } else {
            Lookup::Unknown
        }
    }

    fn find(&self, kid: Option<&str>, family: KeyFamily) -> Option<Lookup> {
        let set = self.keys.load_full()?;
        let hit = set.keys.iter().any(|k| {
            k.family == family
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        hit.then_some(Lookup::Found(set))
    }

    fn recently_unknown(&self, kid: &str) -> bool {
        let map = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        map.get(kid)
            .is_some_and(|t| self.clock.since(*t) < NEGATIVE_TTL)
    }

    fn remember_unknown(&self, kid: &str) {
        let mut map = self.unknown_kids.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.clock.now();
        if map.len() >= NEGATIVE_MAX {
            map.retain(|_, t| now.saturating_duration_since(*t) < NEGATIVE_TTL);
            if map.len() >= NEGATIVE_MAX {
                map.clear();
            }
        }
        map.insert(kid.to_string(), now);
    }

    /// One fetch at a time, and none if the last was under `min_refetch` ago; callers that
    /// waited behind a fetch see its result. `true` when the issuer was asked since this call
    /// began (by it, or by the fetch it waited behind).
    async fn refetch_limited(&self) -> bool {
        let begun = self.fetches_begun.load(Ordering::Acquire);
        let _single_flight = self.fetch_lock.lock().await;
        if self.fetches_begun.load(Ordering::Acquire) != begun {
            return true;
        }
        let last = *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(t) if self.clock.since(t) < self.min_refetch => false,
            _ => {
                let _ = self.fetch_now().await;
                true
            }
        }
    }

    /// Fetches and installs the key set; on failure the previous set stays.
    pub async fn fetch(&self) -> Result<usize, String> {
        let _single_flight = self.fetch_lock.lock().await;
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> Result<usize, String> {
        self.fetches_begun.fetch_add(1, Ordering::AcqRel);
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(self.clock.now());
        let result = self.download().await;
        match &result {
            Ok(n) => {
                self.ok.inc();
                self.last_fetch_failed.store(false, Ordering::Release);
                self.unknown_kids
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                tracing::info!(provider = %self.provider, keys = n, "JWKS loaded");
            }
            Err(e) => {
                self.error.inc();
                self.last_fetch_failed.store(true, Ordering::Release);
                tracing::warn!(provider = %self.provider, url = %self.url, error = %e, kept_previous = self.is_loaded(), "JWKS fetch failed");
            }
        }
        result
    }

    async fn download(&self) -> Result<usize, String> {
        let body = match &self.discovery {
            Some(issuer) => {
                let meta = self
                    .source
                    .get(&self.url)
                    .await
                    .map_err(|e| format!("discovery: {e}"))?;
                let jwks_uri = jwks_uri_of(&meta, issuer)?;
                self.source.get(&jwks_uri).await?
            }
            None => self.source.get(&self.url).await?,
        };
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in &set.keys {
            match VerifyKey::from_jwk(jwk) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    tracing::warn!(provider = %self.provider, kid = ?jwk.common.key_id, error = %e, "JWKS key skipped")
                }
            }
        }
        if keys.is_empty() {
            return Err("the JWK set has no usable key".into());
        }
        let n = keys.len();
        let digest = super::fingerprint::of_key_set(&set.keys);
        let (hi, lo) = digest.split_at(8);
        self.key_set_hi.store(
            u64::from_be_bytes(hi.try_into().unwrap_or_default()),
            Ordering::Release,
        );
        self.key_set_lo.store(
            u64::from_be_bytes(lo.try_into().unwrap_or_default()),
            Ordering::Release,
        );
        self.keys.store(Some(Arc::new(KeySet { keys })));
        Ok(n)
    }
}

/// The `jwks_uri` of an OIDC discovery document, once it is known to describe `issuer`
/// (OpenID Connect Discovery 1.0 4.3: the `issuer` must be identical, or anyone who can serve
/// that path could name their own keys) and the URI is no weaker than the issuer's scheme.
fn jwks_uri_of(meta: &[u8], issuer: &str) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        issuer: String,
        jwks_uri: String,
    }
    let m: Metadata = serde_json::from_slice(meta)
        .map_err(|e| format!("discovery: not OpenID provider metadata: {e}"))?;
    if m.issuer != issuer {
        return Err(format!(
            "discovery: the metadata names issuer {:?}, not {issuer:?}",
            m.issuer
        ));
    }
    let https = m.jwks_uri.starts_with("https://");
    let allowed = if issuer.starts_with("https://") {
        https
    } else {
        https || m.jwks_uri.starts_with("http://")
    };
    if !allowed {
        return Err("discovery: jwks_uri must be an http(s) URL, https for an https issuer".into());
    }
    Ok(m.jwks_uri)
}

/// Refreshes the store every `refresh` (every `RETRY` while failing) until it is dropped or
/// the process shuts down.
pub async fn run_refresh(store: Weak<JwksStore>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    loop {
        let wait = {
            let Some(s) = store.upgrade() else { return };
            if s.last_fetch_failed.load(Ordering::Acquire) || !s.is_loaded() {
                RETRY.min(s.refresh)
            } else {
                s.refresh
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        let Some(s) = store.upgrade() else { return };
        let _ = s.fetch().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::AtomicUsize;

    /// The RSA key of RFC 7638's example, under any `kid`.
    fn jwk_set(kids: &[&str]) -> bytes::Bytes {
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| {
                serde_json::json!({
                    "kty": "RSA", "alg": "RS256", "kid": kid, "e": "AQAB",
                    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "keys": keys }))
            .expect("json")
            .into()
    }

    /// An issuer in memory: documents by URL, a switch to fail, and a count of fetches.
    #[derive(Default)]
    struct MemorySource {
        docs: Mutex<HashMap<String, bytes::Bytes>>,
        failing: AtomicBool,
        fetches: AtomicUsize,
    }

    impl MemorySource {
        fn serve(&self, url: &str, body: bytes::Bytes) {
            self.docs
                .lock()
                .expect("lock")
                .insert(url.to_string(), body);
        }
    }

    #[async_trait]
    impl JwksSource for Arc<MemorySource> {
        async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err("HTTP 503".into());
            }
            let docs = self.docs.lock().expect("lock");
            docs.get(url).cloned().ok_or_else(|| "HTTP 404".into())
        }
    }

    const URL: &str = "https://idp.test/jwks";

    fn store(discovery: Option<&str>) -> (JwksStore, Arc<MemorySource>, Arc<ManualClock>) {
        let source = Arc::new(MemorySource::default());
        let clock = Arc::new(ManualClock::default());
        let counter = |n: &str| IntCounter::new(n, "test").expect("counter");
        let store = JwksStore::with_source(
            "idp",
            URL,
            discovery,
            Timers::DEFAULT,
            Box::new(source.clone()),
            counter("ok"),
            counter("error"),
        )
        .on_clock(clock.clone());
        (store, source, clock)
    }

    fn found(l: &Lookup) -> bool {
        matches!(l, Lookup::Found(_))
    }

    #[tokio::test]
    async fn an_unknown_kid_fetches_at_most_once_per_min_refetch() {
        let (store, source, clock) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        assert_eq!(store.fetch().await, Ok(1));
        assert!(found(&store.lookup(Some("a"), KeyFamily::Rsa).await));
        assert_eq!(
            source.fetches.load(Ordering::SeqCst),
            1,
            "a known kid fetches nothing"
        );

        // Rotated at the issuer, but the last fetch was just now: the new kid waits.
        source.serve(URL, jwk_set(&["a", "b"]));
        assert!(matches!(
            store.lookup(Some("b"), KeyFamily::Rsa).await,
            Lookup::Unknown
        ));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);

        // A flood of random kids right after costs the issuer nothing either.
        for i in 0..50 {
            let kid = format!("junk-{i}");
            assert!(matches!(
                store.lookup(Some(&kid), KeyFamily::Rsa).await,
                Lookup::Unknown
            ));
        }
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);

        // Past MIN_REFETCH a kid not yet remembered as unknown triggers one fetch, which
        // brings "b" in.
        clock.advance(MIN_REFETCH);
        assert!(!found(&store.lookup(Some("c"), KeyFamily::Rsa).await));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        assert!(found(&store.lookup(Some("b"), KeyFamily::Rsa).await));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_rotated_kid_first_seen_within_the_limit_is_fetched_once_the_limit_allows() {
        let (store, source, clock) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        assert_eq!(store.fetch().await, Ok(1));
        // Rotated just after the fetch; only tokens with the new kid come.
        source.serve(URL, jwk_set(&["a", "b"]));
        for _ in 0..3 {
            assert!(matches!(
                store.lookup(Some("b"), KeyFamily::Rsa).await,
                Lookup::Unknown
            ));
        }
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Its own next request past the limit fetches it (not NEGATIVE_TTL later).
        clock.advance(MIN_REFETCH);
        assert!(found(&store.lookup(Some("b"), KeyFamily::Rsa).await));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_kid_unknown_after_a_fetch_is_not_looked_for_again_for_a_while() {
        let (store, source, clock) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        clock.advance(MIN_REFETCH);
        assert!(matches!(
            store.lookup(Some("x"), KeyFamily::Rsa).await,
            Lookup::Unknown
        ));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Re-fetching would be allowed again, but "x" was just asked for.
        clock.advance(MIN_REFETCH * 2);
        store.lookup(Some("x"), KeyFamily::Rsa).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        // Once the negative entry has aged out, it is looked for again.
        clock.advance(NEGATIVE_TTL);
        store.lookup(Some("x"), KeyFamily::Rsa).await;
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failing_issuer_keeps_the_last_good_set_and_blames_nobody() {
        let (store, source, clock) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        assert_eq!(store.fetch().await, Ok(1));
        let digest = store.key_set_digest();
        source.failing.store(true, Ordering::SeqCst);
        assert!(store.fetch().await.is_err());
        assert_eq!(store.key_set_digest(), digest, "the previous set stays");
        assert!(found(&store.lookup(Some("a"), KeyFamily::Rsa).await));
        // An unknown kid while the issuer is down may be a new key: not the client's fault.
        clock.advance(MIN_REFETCH);
        assert!(matches!(
            store.lookup(Some("new"), KeyFamily::Rsa).await,
            Lookup::NotLoaded
        ));
        // A key of another family is not a match for a kid-less token.
        assert!(!found(&store.lookup(None, KeyFamily::Ec).await));
    }

    #[tokio::test]
    async fn nothing_loaded_is_not_an_unknown_kid() {
        let (store, source, _clock) = store(None);
        source.failing.store(true, Ordering::SeqCst);
        assert!(matches!(
            store.lookup(Some("a"), KeyFamily::Rsa).await,
            Lookup::NotLoaded
        ));
        // A set with no usable key is refused, not installed.
        source.failing.store(false, Ordering::SeqCst);
        source.serve(
            URL,
            bytes::Bytes::from_static(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#),
        );
        assert!(store.fetch().await.is_err());
        assert!(!store.is_loaded());
    }

    #[tokio::test]
    async fn a_store_seeded_from_another_serves_its_keys_before_fetching() {
        let (old, source, _) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        assert_eq!(old.fetch().await, Ok(1));
        let (new, fresh_source, _) = store(None);
        let new = new.seeded_from(&old);
        assert!(new.is_loaded());
        assert_eq!(new.key_set_digest(), old.key_set_digest());
        assert!(found(&new.lookup(Some("a"), KeyFamily::Rsa).await));
        assert_eq!(fresh_source.fetches.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_rotation_changes_the_key_set_digest() {
        let (store, source, _clock) = store(None);
        source.serve(URL, jwk_set(&["a"]));
        store.fetch().await.expect("fetch");
        let first = store.key_set_digest();
        source.serve(URL, jwk_set(&["b"]));
        store.fetch().await.expect("fetch");
        assert_ne!(store.key_set_digest(), first);
        assert!(!found(&store.lookup(Some("a"), KeyFamily::Rsa).await));
    }

    #[tokio::test]
    async fn discovery_follows_jwks_uri_only_for_the_named_issuer() {
        let issuer = "https://idp.test";
        let (store, source, _clock) = store(Some(issuer));
        let meta = |iss: &str, uri: &str| -> bytes::Bytes {
            serde_json::to_vec(&serde_json::json!({"issuer": iss, "jwks_uri": uri}))
                .expect("json")
                .into()
        };
        source.serve("https://idp.test/keys/v2", jwk_set(&["a"]));
        source.serve(URL, meta(issuer, "https://idp.test/keys/v2"));
        assert_eq!(store.fetch().await, Ok(1));
        // Metadata naming someone else's issuer, or a downgrade to http, is refused.
        source.serve(URL, meta("https://evil.test", "https://idp.test/keys/v2"));
        let e = store.fetch().await.expect_err("other issuer");
        assert!(e.contains("names issuer"), "{e}");
        source.serve(URL, meta(issuer, "http://idp.test/keys/v2"));
        let e = store.fetch().await.expect_err("http jwks_uri");
        assert!(e.contains("https for an https issuer"), "{e}");
        assert!(
            store.is_loaded(),
            "the good set stays through refused metadata"
        );
    }
}
