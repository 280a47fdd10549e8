//! Authentication: from a request's credentials to a `Principal`, or an `AuthError`.
//!
//! Routes say which providers may vouch for a request (`RouteAuth`); this module answers "who
//! is this" and then checks the route's policy (allowed providers, scopes) on every request,
//! so one route's answer never leaks to another. It never sees the session.

pub mod apikey;
pub mod cache;
pub mod denial;
pub mod dpop;
pub mod fingerprint;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod revoke;
pub mod sources;

pub use denial::Denial;

use crate::config::model::ApiKeySource;
use crate::config::model::{
    AuthSettings, ClaimCheck, ClaimPath, DpopMode, DpopSpec, ProviderKind, RouteAuth, RouteSpec,
};
use crate::metrics::Metrics;
use crate::tier::SharedTier;
use apikey::ApiKeys;
use cache::{Entry, Refusal, Tier, TokenCache, TokenHash};
use http::HeaderMap;
use introspect::{IntrospectionFailure, Introspector};
use jwks::JwksStore;
use jwt::{is_jwt_shaped, JwtFailure, JwtVerifier};
use prometheus::IntCounter;
use revoke::{Revocations, SharedCheck};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// `Retry-After` when an introspection endpoint cannot answer.
const INTROSPECTION_RETRY: Duration = Duration::from_secs(2);

/// The last time claim accepted anywhere (9999-12-31T23:59:59Z, RFC 7519 NumericDate): later
/// (or before 1970) is a broken or hostile issuer, and would overflow time arithmetic.
pub const MAX_TIME_SECS: u64 = 253_402_300_799;

/// Why a credential was refused, as the 401's `error_description` says it: fixed texts, or one
/// naming a claim the provider's configuration asked for. Never request data or key material.
pub type Reason = std::borrow::Cow<'static, str>;

/// Why authentication refused a request. Auth knows nothing of HTTP: `crate::answer` turns
/// this into the contract's status, body and challenge.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthError {
    /// No credential on a route that needs one.
    Missing,
    /// Signature and claims good, `exp` passed beyond the leeway.
    Expired {
        expired_at: SystemTime,
    },
    Invalid {
        code: Denial,
        reason: Reason,
    },
    /// A valid identity without the route's scopes.
    Scope {
        required: Vec<String>,
    },
    /// A valid identity failing one of the route's `auth.claims` rules.
    Forbidden {
        claim: Arc<str>,
    },
    /// Nobody could tell (the IdP or its keys out of reach): try again later.
    Unavailable {
        retry_after: Duration,
    },
    /// A DPoP proof missing, invalid, replayed or without a fresh nonce, or a bound token
    /// sent as Bearer (boxed: rare, and it keeps the common results small).
    Dpop(Box<DpopRefusal>),
}

/// Why a request failed DPoP, with what its `WWW-Authenticate: DPoP` challenge says.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopRefusal {
    pub reason: Reason,
    /// The provider's proof algorithms, space-separated (`algs="..."`).
    pub algs: Arc<str>,
    /// `Some` when a fresh server nonce is what is missing (`use_dpop_nonce`): the one to use.
    pub nonce: Option<String>,
}

/// Who a request acts for, as a provider vouched for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Scopes,
    pub provider: Arc<str>,
    pub expires_at: Option<SystemTime>,
    /// When a cached copy must stop being used (`exp` plus the provider's leeway).
    pub valid_until: Option<SystemTime>,
    /// Which configured credential it was (an API key's `id`), for per-key limits.
    pub credential_id: Option<Arc<str>>,
    pub jti: Option<String>,
    pub issued_at: Option<SystemTime>,
    /// The claims that route rules of its provider look at (only those), by dotted name.
    pub claims: KeptClaims,
    /// `cnf.jkt`: the thumbprint of the key a DPoP proof must be signed with (RFC 9449 6),
    /// read only when the provider's `dpop` is on.
    pub jkt: Option<Arc<str>>,
}

/// Claims kept with a cached identity so `auth.claims` rules can be checked on cache hits.
pub type KeptClaims = Option<Arc<serde_json::Map<String, serde_json::Value>>>;

/// Copies the values at `keep` out of a token's claims.
pub fn keep_claims(
    keep: &[ClaimPath],
    claims: &serde_json::Map<String, serde_json::Value>,
) -> KeptClaims {
    if keep.is_empty() {
        return None;
    }
    let mut out = serde_json::Map::new();
    for path in keep {
        if let Some(v) = path.find(claims) {
            out.insert(path.name.to_string(), v.clone());
        }
    }
    Some(Arc::new(out))
}

/// A principal's scopes. Identical sets are shared (see `scope_set`): a cache of 100,000
/// tokens of a few roles holds a few scope lists, not 100,000.
pub type Scopes = Arc<ScopeSet>;

/// A scope list and the `X-Auth-Scopes` value it makes, built once per distinct list rather
/// than joined on every forwarded request.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ScopeSet {
    list: Box<[String]>,
    /// `None` when the scopes cannot travel in a header (control characters).
    header: Option<http::HeaderValue>,
}

impl ScopeSet {
    fn new(list: Vec<String>) -> Self {
        let header = http::HeaderValue::from_str(&list.join(" ")).ok();
        ScopeSet {
            list: list.into_boxed_slice(),
            header,
        }
    }

    /// The space-separated list as a header value.
    pub fn header_value(&self) -> Option<&http::HeaderValue> {
        self.header.as_ref()
    }
}

impl std::ops::Deref for ScopeSet {
    type Target = [String];

    fn deref(&self) -> &[String] {
        &self.list
    }
}

/// The shared copy of a scope list.
pub fn scope_set(list: Vec<String>) -> Scopes {
    use std::sync::OnceLock;
    const MAX_SETS: usize = 10_000;
    static SETS: OnceLock<Mutex<HashMap<Vec<String>, Scopes>>> = OnceLock::new();
    let sets = SETS.get_or_init(Default::default);
    let mut map = sets.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = map.get(&list) {
        return s.clone();
    }
    let set: Scopes = Arc::new(ScopeSet::new(list.clone()));
    // Past the cap (tokens with per-user scope lists), lists are simply not shared.
    if map.len() < MAX_SETS {
        map.insert(list, set.clone());
    }
    set
}

impl Principal {
    /// A principal with only a subject and scopes, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests(subject: &str, scopes: &[&str]) -> Self {
        Principal {
            subject: subject.into(),
            scopes: scope_set(scopes.iter().map(|s| s.to_string()).collect()),
            provider: "p".into(),
            expires_at: None,
            valid_until: None,
            credential_id: None,
            jti: None,
            issued_at: None,
            claims: None,
            jkt: None,
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.valid_until.is_some_and(|v| now > v)
    }
}

/// What authentication decided for one request.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The route is public, or optional auth and no credential was sent.
    Anonymous,
    Authenticated(Arc<Principal>),
}

impl Identity {
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Identity::Anonymous => None,
            Identity::Authenticated(p) => Some(p),
        }
    }
}

/// The `outcome` label of `authgate_auth_total`, also logged per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    MissingToken,
    TokenExpired,
    InvalidToken,
    InsufficientScope,
    AuthUnavailable,
    Forbidden,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::MissingToken,
        Outcome::TokenExpired,
        Outcome::InvalidToken,
        Outcome::InsufficientScope,
        Outcome::AuthUnavailable,
        Outcome::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MissingToken => "missing_token",
            Outcome::TokenExpired => "token_expired",
            Outcome::InvalidToken => "invalid_token",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::AuthUnavailable => "auth_unavailable",
            Outcome::Forbidden => "forbidden",
        }
    }
}

impl AuthError {
    /// The fixed reason code of a denial; `None` when nothing was refused (no credential,
    /// or nobody could tell).
    pub fn denial(&self) -> Option<Denial> {
        match self {
            AuthError::Missing | AuthError::Unavailable { .. } => None,
            AuthError::Expired { .. } => Some(Denial::Expired),
            AuthError::Invalid { code, .. } => Some(*code),
            AuthError::Scope { .. } => Some(Denial::MissingScope),
            AuthError::Forbidden { .. } => Some(Denial::ClaimMismatch),
            AuthError::Dpop(_) => Some(Denial::DpopInvalid),
        }
    }

    /// A presented credential refused, which spends the failure budget. A nonce challenge is
    /// the protocol's normal first step, not a failure.
    pub fn is_refused_credential(&self) -> bool {
        match self {
            AuthError::Invalid { .. } | AuthError::Expired { .. } => true,
            AuthError::Dpop(r) => r.nonce.is_none(),
            _ => false,
        }
    }
}

/// The result of authentication plus what it is logged and counted as.
pub struct Decision {
    pub result: Result<Identity, AuthError>,
    /// `None` on public routes and for anonymous requests on optional routes.
    pub outcome: Option<Outcome>,
    /// Why it was refused, when it was.
    pub denial: Option<Denial>,
    /// The identity the credential proved, even when the route's scopes or claims then
    /// refused it (shadow mode forwards it).
    pub valid: Option<Arc<Principal>>,
    /// Which cache tier answered, when a credential was looked at.
    pub tier: Option<Tier>,
    /// The presented credential's hash, for `revokes_token` routes.
    pub token_hash: Option<TokenHash>,
    /// A DPoP proof that passed, whose `jti` must now be spent ([`Authenticator::authenticate`]).
    pub proof: Option<ProofUse>,
}

/// A DPoP proof to record as used.
#[derive(Debug, Clone)]
pub struct ProofUse {
    pub jti: String,
    /// As long as a proof with this `jti` could pass the `iat` check.
    pub ttl: Duration,
    pub algs: Arc<str>,
}

impl Decision {
    fn anonymous() -> Self {
        Decision {
            result: Ok(Identity::Anonymous),
            outcome: None,
            denial: None,
            valid: None,
            tier: None,
            token_hash: None,
            proof: None,
        }
    }

    /// Replaces a decision with a refusal found after it (a replayed proof).
    fn refuse(&mut self, e: AuthError) {
        self.outcome = Some(outcome_of::<()>(&Err(e.clone())));
        self.denial = e.denial();
        self.valid = None;
        self.result = Err(e);
    }
}

fn outcome_of<T>(result: &Result<T, AuthError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(AuthError::Missing) => Outcome::MissingToken,
        Err(AuthError::Expired { .. }) => Outcome::TokenExpired,
        Err(AuthError::Scope { .. }) => Outcome::InsufficientScope,
        Err(AuthError::Forbidden { .. }) => Outcome::Forbidden,
        Err(AuthError::Unavailable { .. }) => Outcome::AuthUnavailable,
        Err(_) => Outcome::InvalidToken,
    }
}

/// The credential a request carries, borrowed from its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    /// `Authorization: DPoP <token>` (RFC 9449 7.1): a token with a proof of possession.
    Dpop(&'a str),
    /// `Authorization: <scheme> <value>` with another scheme (API keys).
    Scheme {
        scheme: &'a str,
        value: &'a str,
    },
}

/// Parses `Authorization`; `Err` when it is present but not of the form `<scheme> <value>`.
pub fn credential(headers: &HeaderMap) -> Option<Result<Credential<'_>, ()>> {
    let raw = headers.get(http::header::AUTHORIZATION)?;
    let Ok(raw) = raw.to_str() else {
        return Some(Err(()));
    };
    let Some((scheme, value)) = raw.trim().split_once(' ') else {
        return Some(Err(()));
    };
    let value = value.trim();
    if value.is_empty() || value.contains(' ') {
        return Some(Err(()));
    }
    Some(Ok(if scheme.eq_ignore_ascii_case("bearer") {
        Credential::Bearer(value)
    } else if scheme.eq_ignore_ascii_case("dpop") {
        Credential::Dpop(value)
    } else {
        Credential::Scheme { scheme, value }
    }))
}

/// What authentication reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    /// The route's cookie or query token, when `Authorization` is absent.
    pub fallback: Option<&'a str>,
    /// What a DPoP proof must name.
    pub target: dpop::Target<'a>,
}

/// How a token was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `Bearer`, or a cookie or query parameter.
    Bearer,
    Dpop,
}

enum Provider {
    Jwt(JwtVerifier),
    Introspection(Introspector),
    ApiKey(ApiKeys),
}

/// What kind of credential a request presents, which decides the providers that may see it.
#[derive(Clone, Copy)]
enum Presented<'a> {
    Jwt(&'a str),
    /// An opaque bearer token: introspection, and API-key providers whose scheme is Bearer.
    Opaque(&'a str),
    /// `Authorization: <scheme> <key>` with another scheme.
    Scheme(&'a str, &'a str),
    /// A key in a provider's own header.
    Header(usize, &'a str),
}

impl Presented<'_> {
    fn token(&self) -> &str {
        match self {
            Presented::Jwt(t)
            | Presented::Opaque(t)
            | Presented::Scheme(_, t)
            | Presented::Header(_, t) => t,
        }
    }
}

/// What makes a JWKS store: a reload that changes any of it gets a new store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    pub provider: String,
    /// The URL, and with discovery the issuer it is for.
    pub source: String,
    /// The CA bundle's fingerprint.
    pub ca: Option<[u8; 32]>,
    pub timers: jwks::Timers,
}

/// Key stores outlive configuration versions: a reload that keeps a provider's JWKS URL keeps
/// its loaded keys and background refresh. Building a version only reads this registry; only
/// [`KeyStores::commit`], when the version is installed, changes it, so a rejected reload
/// leaves nothing behind.
#[derive(Default)]
pub struct KeyStores {
    stores: Mutex<HashMap<StoreKey, Arc<JwksStore>>>,
}

impl KeyStores {
    /// The running store for this provider, URL and CA bundle, or a new one (`true`) that
    /// belongs to the version being built until it is committed.
    fn find_or_new(
        &self,
        key: &StoreKey,
        url: &str,
        discovery: Option<&str>,
        ca: Option<&crate::tls::CaBundle>,
        metrics: &Metrics,
    ) -> Result<(Arc<JwksStore>, bool), String> {
        let map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(key) {
            return Ok((s.clone(), false));
        }
        // Only the timers changed: a new store (they are fixed per store), with the keys the
        // running one holds, so an issuer down at reload time costs nothing.
        let running = map.iter().find_map(|(k, s)| {
            (k.provider == key.provider && k.source == key.source && k.ca == key.ca).then_some(s)
        });
        let provider = key.provider.as_str();
        let store = JwksStore::new(
            provider,
            url,
            discovery,
            key.timers,
            ca,
            metrics
                .jwks_refresh_total
                .with_label_values(&[provider, "ok"]),
            metrics
                .jwks_refresh_total
                .with_label_values(&[provider, "error"]),
        )?;
        let store = match running {
            Some(r) => store.seeded_from(r),
            None => store,
        };
        Ok((Arc::new(store), true))
    }

    /// Makes an installed version's stores the running ones, and drops those no
    /// configuration uses any more.
    pub fn commit(&self, in_use: &[(StoreKey, Arc<JwksStore>)]) {
        let mut map = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        *map = in_use.iter().cloned().collect();
    }
}

/// Concurrent misses for one token and provider share one introspection call.
#[derive(Default)]
struct SingleFlight {
    calls: Mutex<HashMap<(TokenHash, usize), Arc<InFlightCall>>>,
}

type InFlightCall = tokio::sync::OnceCell<Result<Principal, IntrospectionFailure>>;

impl SingleFlight {
    async fn run(
        &self,
        key: (TokenHash, usize),
        x: &Introspector,
        token: &str,
    ) -> Result<Principal, IntrospectionFailure> {
        let cell = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.entry(key).or_default().clone()
        };
        let result = cell.get_or_init(|| x.introspect(token)).await.clone();
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            calls.remove(&key);
        }
        result
    }
}

/// Process-wide auth state that survives reloads: the revocation list always, the token
/// cache while its settings stay the same.
#[derive(Default)]
pub struct AuthState {
    pub revocations: Arc<Revocations>,
    cache: Mutex<Option<Arc<TokenCache>>>,
    /// DPoP proof ids seen: a proof spent before a reload stays spent after it.
    replay: std::sync::OnceLock<Arc<dpop::replay::ReplayGuard>>,
    /// The DPoP nonce key (shared through Redis, see [`dpop::nonce::share`]).
    pub nonces: Arc<dpop::nonce::Nonces>,
}

impl AuthState {
    /// The running token cache when its settings are unchanged, else a new one for the version
    /// being built; nothing changes until [`AuthState::commit`].
    pub fn cache(
        &self,
        settings: &crate::config::model::TokenCacheSettings,
        metrics: &Metrics,
    ) -> Arc<TokenCache> {
        let slot = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref().filter(|c| c.settings == *settings) {
            return c.clone();
        }
        Arc::new(TokenCache::new(settings, metrics))
    }

    fn replay(&self, metrics: &Metrics) -> Arc<dpop::replay::ReplayGuard> {
        self.replay
            .get_or_init(|| Arc::new(dpop::replay::ReplayGuard::new(metrics)))
            .clone()
    }

    /// Makes an installed version's token cache the running one (the one revocations clear),
    /// and its `auth.revocation_ttl` the one revocations use.
    pub fn commit(&self, cache: &Arc<TokenCache>, revocation_ttl: Duration) {
        self.revocations.set_default_ttl(revocation_ttl);
        let mut slot = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if !slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, cache)) {
            self.revocations.use_cache(cache);
            *slot = Some(cache.clone());
        }
    }
}

/// The authenticator of one configuration version.
pub struct Authenticator {
    providers: Vec<Provider>,
    names: Vec<Arc<str>>,
    /// `[provider][outcome]`, with one extra row for `provider="none"`.
    counters: Vec<[IntCounter; 7]>,
    /// `[provider][reason]` of `authgate_auth_denials_total`, the same rows.
    denials: Vec<[IntCounter; 16]>,
    /// Stores created for this version, which the caller must load and keep refreshed.
    pub new_stores: Vec<Arc<JwksStore>>,
    /// Every JWKS store of this version with its registry key, for [`KeyStores::commit`].
    pub store_entries: Vec<(StoreKey, Arc<JwksStore>)>,
    pub cache: Arc<TokenCache>,
    pub revocations: Arc<Revocations>,
    shared: Option<Arc<dyn SharedTier>>,
    generation: u64,
    single_flight: SingleFlight,
    /// The headers API-key providers read keys from, each allowed once per request.
    key_headers: Vec<http::HeaderName>,
    /// Each provider's configuration fingerprint (see [`fingerprint`]).
    fingerprints: Vec<fingerprint::Fingerprint>,
    /// Each jwt provider's `issuer`, for sending a token to the provider its `iss` names.
    issuers: Vec<Option<String>>,
    /// Each provider's DPoP settings (`off` for API keys).
    dpop: Vec<DpopSpec>,
    replay: Arc<dpop::replay::ReplayGuard>,
    nonces: Arc<dpop::nonce::Nonces>,
}

impl Authenticator {
    pub fn build(
        settings: &AuthSettings,
        routes: &[Arc<RouteSpec>],
        stores: &KeyStores,
        state: &AuthState,
        shared: Option<Arc<dyn SharedTier>>,
        generation: u64,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let mut providers = Vec::with_capacity(settings.providers.len());
        let mut new_stores = Vec::new();
        let mut store_entries = Vec::new();
        let kept = kept_claims(settings.providers.len(), routes);
        for (index, spec) in settings.providers.iter().enumerate() {
            let keep = kept[index].clone();
            providers.push(match &spec.kind {
                ProviderKind::Jwt(j) => {
                    let store = match &j.jwks_url {
                        Some(url) => {
                            // With discovery the issuer the metadata must name is part of
                            // what the store is (two spellings of one issuer are two stores).
                            let discovery = j.issuer.as_deref().filter(|_| j.discovery);
                            let key = StoreKey {
                                provider: spec.name.clone(),
                                source: match discovery {
                                    Some(iss) => format!("{url} (discovery, issuer {iss})"),
                                    None => url.clone(),
                                },
                                ca: j.ca.as_ref().map(|c| c.fingerprint),
                                timers: jwks::Timers {
                                    refresh: j.jwks_refresh,
                                    min_refetch: j.jwks_min_refetch,
                                },
                            };
                            let (s, new) = stores.find_or_new(
                                &key,
                                url,
                                discovery,
                                j.ca.as_deref(),
                                metrics,
                            )?;
                            if new {
                                new_stores.push(s.clone());
                            }
                            store_entries.push((key, s.clone()));
                            Some(s)
                        }
                        None => None,
                    };
                    Provider::Jwt(JwtVerifier::new(&spec.name, j, store)?.keeping(keep))
                }
                ProviderKind::Introspection(i) => {
                    Provider::Introspection(Introspector::new(&spec.name, i)?.keeping(keep))
                }
                ProviderKind::ApiKey(k) => Provider::ApiKey(ApiKeys::new(&spec.name, k)),
            });
        }
        let names: Vec<Arc<str>> = settings
            .providers
            .iter()
            .map(|p| Arc::from(p.name.as_str()))
            .collect();
        let rows = || names.iter().map(|n| &**n).chain(std::iter::once("none"));
        let counters = rows()
            .map(|n| Outcome::ALL.map(|o| metrics.auth_total.with_label_values(&[n, o.as_str()])))
            .collect();
        let denials = rows()
            .map(|n| {
                Denial::ALL.map(|d| {
                    metrics
                        .auth_denials_total
                        .with_label_values(&[n, d.as_str()])
                })
            })
            .collect();
        let mut key_headers: Vec<http::HeaderName> = Vec::new();
        for p in &settings.providers {
            if let ProviderKind::ApiKey(k) = &p.kind {
                if let ApiKeySource::Header(h) = &k.source {
                    if !key_headers.contains(h) {
                        key_headers.push(h.clone());
                    }
                }
            }
        }
        Ok(Authenticator {
            // What a cached identity holds depends on the claims kept for it: an entry made
            // before a reload added a rule lacks that claim, and is a miss.
            fingerprints: settings
                .providers
                .iter()
                .zip(&kept)
                .map(|(p, keep)| {
                    fingerprint::combine(&fingerprint::of(p), &fingerprint::of_kept(keep))
                })
                .collect(),
            key_headers,
            issuers: settings
                .providers
                .iter()
                .map(|p| match &p.kind {
                    ProviderKind::Jwt(j) => j.issuer.clone(),
                    _ => None,
                })
                .collect(),
            dpop: settings
                .providers
                .iter()
                .map(|p| match &p.kind {
                    ProviderKind::Jwt(j) => j.dpop.clone(),
                    ProviderKind::Introspection(i) => i.dpop.clone(),
                    ProviderKind::ApiKey(_) => DpopSpec::default(),
                })
                .collect(),
            replay: state.replay(metrics),
            nonces: state.nonces.clone(),
            providers,
            names,
            counters,
            denials,
            new_stores,
            store_entries,
            cache: state.cache(&settings.cache, metrics),
            revocations: state.revocations.clone(),
            shared,
            generation,
            single_flight: SingleFlight::default(),
        })
    }

    /// Provider `i`'s fingerprint now: its configuration's, with its JWKS key set folded in.
    fn fingerprint(&self, i: usize) -> fingerprint::Fingerprint {
        match &self.providers[i] {
            Provider::Jwt(v) => match v.jwks() {
                Some(store) => fingerprint::combine(&self.fingerprints[i], &store.key_set_digest()),
                None => self.fingerprints[i],
            },
            _ => self.fingerprints[i],
        }
    }

    /// The `provider` label of a counter row from [`Authenticator::decide`].
    pub fn provider_name(&self, row: usize) -> Option<&str> {
        Some(self.names.get(row).map_or("none", |n| &**n))
    }

    /// Counts a denial made before any provider looked (`too_many_failures`).
    pub fn count_denial_without_provider(&self, d: Denial) {
        self.denials[self.names.len()][d as usize].inc();
    }

    pub fn key_headers(&self) -> &[http::HeaderName] {
        &self.key_headers
    }

    /// JWKS providers that have not loaded their keys yet.
    pub fn keys_loaded(&self) -> Vec<&str> {
        self.store_entries
            .iter()
            .map(|(_, s)| s)
            .filter(|s| !s.is_loaded())
            .map(|s| &*s.provider)
            .collect()
    }

    pub async fn authenticate(
        &self,
        route: &RouteAuth,
        claims: &[ClaimCheck],
        req: &Request<'_>,
    ) -> Decision {
        let (mut decision, row) = self.decide(route, claims, req).await;
        // Only here, not in `decide`: explaining a request must not spend its proof.
        if let Some(proof) = decision.proof.take() {
            use dpop::replay::Seen;
            match self
                .replay
                .first_use(&proof.jti, proof.ttl, self.shared.as_deref())
                .await
            {
                Seen::Fresh => {}
                Seen::Replayed => decision.refuse(AuthError::Dpop(Box::new(DpopRefusal {
                    reason: "the DPoP proof was used before".into(),
                    algs: proof.algs,
                    nonce: None,
                }))),
                Seen::Full => decision.refuse(AuthError::Unavailable {
                    retry_after: Duration::from_secs(1),
                }),
            }
        }
        if let (Some(outcome), Some(row)) = (decision.outcome, row) {
            self.counters[row][outcome as usize].inc();
            if let Some(d) = decision.denial {
                self.denials[row][d as usize].inc();
            }
        }
        decision
    }

    /// What the provider chain decides, and the counter row it would be counted in, without
    /// counting it (`POST /admin/explain` uses this as it is).
    pub async fn decide(
        &self,
        route: &RouteAuth,
        claims: &[ClaimCheck],
        req: &Request<'_>,
    ) -> (Decision, Option<usize>) {
        let (headers, fallback) = (req.headers, req.fallback);
        let (allowed, scopes, optional): (&[usize], &[String], bool) = match route {
            RouteAuth::None => return (Decision::anonymous(), None),
            RouteAuth::Optional { providers } => (providers, &[], true),
            RouteAuth::Required { providers, scopes } => (providers, scopes, false),
        };
        let token_kind = |t| match is_jwt_shaped(t) {
            true => Presented::Jwt(t),
            false => Presented::Opaque(t),
        };
        let credential = credential(headers);
        let scheme = match credential {
            Some(Ok(Credential::Dpop(_))) => Scheme::Dpop,
            _ => Scheme::Bearer,
        };
        let presented = match credential {
            Some(Ok(Credential::Bearer(t) | Credential::Dpop(t))) => Some(Ok(token_kind(t))),
            Some(Ok(Credential::Scheme { scheme, value })) => {
                Some(Ok(Presented::Scheme(scheme, value)))
            }
            Some(Err(())) => Some(Err(())),
            // A provider's own header, then the route's cookie or query parameter (a bearer
            // token like any other).
            None => self
                .header_key(allowed, headers)
                .map(Ok)
                .or_else(|| fallback.map(|t| Ok(token_kind(t)))),
        };
        let mut tier = None;
        let mut token_hash = None;
        let mut proof = None;
        let (provider, result) = match presented {
            None if optional => return (Decision::anonymous(), None),
            None => (None, Err(AuthError::Missing)),
            Some(Err(())) => (
                None,
                Err(AuthError::Invalid {
                    code: Denial::Malformed,
                    reason: "malformed Authorization header".into(),
                }),
            ),
            Some(Ok(p)) => {
                let candidates = self.candidates(allowed, p, scheme);
                if candidates.is_empty() {
                    (
                        allowed.first().copied(),
                        Err(AuthError::Invalid {
                            code: Denial::Malformed,
                            reason: "no provider of this route accepts this kind of credential"
                                .into(),
                        }),
                    )
                } else {
                    let hash: TokenHash = Sha256::digest(p.token().as_bytes()).into();
                    token_hash = Some(hash);
                    let (provider, result, t) = self.resolve(p, hash, &candidates).await;
                    tier = Some(t);
                    // The binding is checked on every request, cached identity or not:
                    // each proof is new.
                    let result = result.and_then(|principal| {
                        self.bind(provider, principal, scheme, p.token(), req).map(
                            |(principal, used)| {
                                proof = used;
                                principal
                            },
                        )
                    });
                    (Some(provider), result)
                }
            }
        };
        let valid = result.as_ref().ok().cloned();
        let result = result
            .and_then(|p| check_scopes(p, scopes))
            .and_then(|p| check_claims(p, claims));
        let outcome = outcome_of(&result);
        let row = provider.unwrap_or(self.names.len());
        let denial = result.as_ref().err().and_then(AuthError::denial);
        let decision = Decision {
            result: result.map(Identity::Authenticated),
            outcome: Some(outcome),
            denial,
            valid,
            tier,
            token_hash,
            proof,
        };
        (decision, Some(row))
    }

    /// RFC 9449 for the provider that vouched for the token: a bound token only with the DPoP
    /// scheme and a proof by its key; with `required`, no token without. Returns the proof to
    /// spend.
    fn bind(
        &self,
        provider: usize,
        p: Arc<Principal>,
        scheme: Scheme,
        token: &str,
        req: &Request<'_>,
    ) -> Result<(Arc<Principal>, Option<ProofUse>), AuthError> {
        let spec = &self.dpop[provider];
        let refuse = |reason: Reason, nonce: Option<String>| {
            AuthError::Dpop(Box::new(DpopRefusal {
                reason,
                algs: spec.algs.clone(),
                nonce,
            }))
        };
        match (spec.mode, scheme) {
            (DpopMode::Off, _) => Ok((p, None)),
            (_, Scheme::Bearer) if p.jkt.is_some() => Err(refuse(
                "a DPoP-bound token is sent with the DPoP scheme and a proof".into(),
                None,
            )),
            (DpopMode::Required, Scheme::Bearer) => Err(refuse(
                "this resource takes DPoP-bound tokens only (the DPoP scheme)".into(),
                None,
            )),
            (DpopMode::Optional, Scheme::Bearer) => Ok((p, None)),
            (_, Scheme::Dpop) => {
                let mut proofs = req.headers.get_all(dpop::HEADER).iter();
                let (Some(proof), None) = (proofs.next(), proofs.next()) else {
                    return Err(refuse("send exactly one DPoP proof header".into(), None));
                };
                let proof = proof
                    .to_str()
                    .map_err(|_| refuse(dpop::ProofError::Malformed.description().into(), None))?;
                let htu = req.target.htu().ok_or_else(|| {
                    refuse("the request has no URI a proof can name".into(), None)
                })?;
                let now = SystemTime::now();
                let checked = dpop::verify_proof(
                    proof,
                    &dpop::Expected {
                        method: req.target.method,
                        htu: &htu,
                        access_token: Some(token),
                        now,
                        window: spec.window,
                        algorithms: &spec.algorithms,
                    },
                )
                .map_err(|e| refuse(e.description().into(), None))?;
                match p.jkt.as_deref() {
                    None => {
                        return Err(refuse(
                            "the token is not bound to a key (cnf.jkt)".into(),
                            None,
                        ))
                    }
                    Some(jkt) if jkt != checked.jkt => {
                        return Err(refuse(
                            "the DPoP proof is signed by another key than the token is bound to"
                                .into(),
                            None,
                        ))
                    }
                    Some(_) => {}
                }
                if spec.nonce
                    && !checked
                        .nonce
                        .as_deref()
                        .is_some_and(|n| self.nonces.accepts(n, now))
                {
                    return Err(refuse(
                        "the DPoP proof needs the nonce in DPoP-Nonce".into(),
                        Some(self.nonces.current(now)),
                    ));
                }
                // Kept while a proof with this jti could still pass the iat check.
                let ttl = spec.window * 2 + Duration::from_secs(1);
                Ok((
                    p,
                    Some(ProofUse {
                        jti: checked.jti,
                        ttl,
                        algs: spec.algs.clone(),
                    }),
                ))
            }
        }
    }

    /// An API key sent in a provider's own header, when the request has no Authorization.
    fn header_key<'h>(&self, allowed: &[usize], headers: &'h HeaderMap) -> Option<Presented<'h>> {
        allowed.iter().find_map(|&i| match &self.providers[i] {
            Provider::ApiKey(k) => match &k.source {
                ApiKeySource::Header(name) => {
                    let v = headers.get(name)?.to_str().ok()?.trim();
                    (!v.is_empty()).then_some(Presented::Header(i, v))
                }
                ApiKeySource::Scheme(_) => None,
            },
            _ => None,
        })
    }

    /// The route's providers that may see this credential, in the route's order.
    fn candidates(
        &self,
        allowed: &[usize],
        presented: Presented<'_>,
        scheme: Scheme,
    ) -> Vec<usize> {
        allowed
            .iter()
            .copied()
            // The DPoP scheme is for providers that check proofs.
            .filter(|&i| scheme == Scheme::Bearer || self.dpop[i].mode != DpopMode::Off)
            .filter(|&i| match (&self.providers[i], presented) {
                (Provider::Jwt(_), Presented::Jwt(_)) => true,
                (Provider::Introspection(_), Presented::Opaque(_)) => true,
                (Provider::ApiKey(k), Presented::Opaque(_)) => k.takes_scheme("Bearer"),
                (Provider::ApiKey(k), Presented::Scheme(s, _)) => k.takes_scheme(s),
                (Provider::ApiKey(_), Presented::Header(p, _)) => p == i,
                _ => false,
            })
            .collect()
    }

    /// With several candidates and issuers configured, a JWT goes only to the providers whose
    /// `issuer` its `iss` names: ten issuers cost one verification, not up to ten, and one
    /// issuer's refusal never comes from another's keys. A token without `iss`, or naming
    /// none of them, goes through the candidates in order as before. Only on a cache miss.
    fn by_issuer(&self, presented: Presented<'_>, candidates: &[usize]) -> Option<Vec<usize>> {
        let Presented::Jwt(token) = presented else {
            return None;
        };
        // No payload decoding for what every provider refuses unread.
        if token.len() > jwt::MAX_TOKEN_LEN
            || candidates.len() < 2
            || candidates.iter().all(|&i| self.issuers[i].is_none())
        {
            return None;
        }
        let iss = jwt::unverified_issuer(token)?;
        let named: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| self.issuers[i].as_deref() == Some(iss.as_str()))
            .collect();
        (!named.is_empty()).then_some(named)
    }

    fn mask(candidates: &[usize]) -> Option<u64> {
        candidates
            .iter()
            .try_fold(0u64, |m, &i| (i < 64).then(|| m | 1 << i))
    }

    /// Cache tiers first, then the providers; revocations checked on every path.
    async fn resolve(
        &self,
        presented: Presented<'_>,
        hash: TokenHash,
        candidates: &[usize],
    ) -> (usize, Result<Arc<Principal>, AuthError>, Tier) {
        let first = candidates[0];
        let revoked = || AuthError::Invalid {
            code: Denial::Revoked,
            reason: "token revoked".into(),
        };
        if self.revocations.token_revoked(&hash) {
            return (first, Err(revoked()), Tier::Local);
        }
        let mask = Self::mask(candidates);
        let now = SystemTime::now();
        let index_of = |p: &Principal| {
            candidates
                .iter()
                .copied()
                .find(|&i| *self.names[i] == *p.provider)
        };
        let checked = |i: usize, p: Arc<Principal>, tier: Tier| {
            if self.revocations.principal_revoked(&p) {
                (i, Err(revoked()), tier)
            } else if p.expired(now) {
                let expired_at = p.expires_at.unwrap_or(now);
                (i, Err(AuthError::Expired { expired_at }), tier)
            } else {
                (i, Ok(p), tier)
            }
        };
        match self.cache.get_local_stamped(&hash) {
            Some((Entry::Valid(p), fp)) => {
                // Made by a provider of this route, as it is configured now (keys, claims
                // rules, API key list, JWKS key set): anything else is a miss.
                if let Some(i) = index_of(&p).filter(|&i| self.fingerprint(i) == fp) {
                    // While revocation events are not heard (a gap, or a Redis user that may
                    // not subscribe), the copy is only as good as what Redis says of it now.
                    if let Some(shared) = self.shared.as_deref() {
                        if !self.revocations.events_current()
                            && self.revocations.revoked_in_shared(shared, &hash, &p).await
                                == SharedCheck::Revoked
                        {
                            return (i, Err(revoked()), Tier::Local);
                        }
                    }
                    self.cache.count_local(true);
                    return checked(i, p, Tier::Local);
                }
            }
            Some((Entry::Refused(r), _))
                if Some(r.mask) == mask && r.generation == self.generation =>
            {
                self.cache.count_local(true);
                return (r.provider, Err(r.rejection), Tier::Local);
            }
            _ => {}
        }
        self.cache.count_local(false);
        if let Some(shared) = self.shared.as_deref() {
            let found = self.cache.get_shared(shared, &hash).await;
            let usable = found.and_then(|(p, fp, left)| {
                index_of(&p)
                    .filter(|&i| self.fingerprint(i) == fp)
                    .map(|i| (i, p, fp, left))
            });
            self.cache.count_redis(usable.is_some());
            if let Some((i, p, fp, left)) = usable {
                // This replica may have started after a revocation it never heard of.
                let check = self.revocations.revoked_in_shared(shared, &hash, &p).await;
                if check == SharedCheck::Revoked {
                    return (i, Err(revoked()), Tier::Redis);
                }
                let p = Arc::new(p);
                // The local copy lives no longer than the Redis entry has left.
                self.cache.put_local_within(
                    hash,
                    Entry::Valid(p.clone()),
                    fp,
                    left.min(check.local_ttl_cap()),
                );
                return checked(i, p, Tier::Redis);
            }
        }
        let (provider, result) = self.verify(presented, hash, candidates).await;
        match &result {
            Ok(p) => {
                let mut check = SharedCheck::NotRevoked;
                if let Some(shared) = self.shared.as_deref() {
                    check = self.revocations.revoked_in_shared(shared, &hash, p).await;
                    if check == SharedCheck::Revoked {
                        return (provider, Err(revoked()), Tier::Miss);
                    }
                }
                if self.revocations.principal_revoked(p) {
                    return (provider, Err(revoked()), Tier::Miss);
                }
                let fp = self.fingerprint(provider);
                self.cache.put_local_within(
                    hash,
                    Entry::Valid(p.clone()),
                    fp,
                    check.local_ttl_cap(),
                );
                if let Some(shared) = self.shared.as_deref() {
                    self.cache.put_shared(shared, &hash, p, &fp).await;
                }
            }
            // Nobody could tell: never remembered.
            Err(AuthError::Unavailable { .. }) => {}
            // A kid not (yet) in the key set is not remembered here: the key store has its
            // own negative cache for kids the issuer was asked about, and a key rotated in
            // must be accepted by its own next request, not after negative_ttl.
            Err(rejection) if rejection.denial() == Some(Denial::UnknownKid) => {}
            Err(rejection) => {
                if let Some(mask) = mask {
                    self.cache.put_local(
                        hash,
                        Entry::Refused(Box::new(Refusal {
                            mask,
                            generation: self.generation,
                            provider,
                            rejection: rejection.clone(),
                        })),
                        [0; 16],
                    );
                }
            }
        }
        (provider, result, Tier::Miss)
    }

    /// Asks the candidate providers in order; the first definite answer wins.
    async fn verify(
        &self,
        presented: Presented<'_>,
        hash: TokenHash,
        candidates: &[usize],
    ) -> (usize, Result<Arc<Principal>, AuthError>) {
        let token = presented.token();
        let by_issuer = self.by_issuer(presented, candidates);
        let candidates = by_issuer.as_deref().unwrap_or(candidates);
        let mut first_refusal: Option<(usize, Denial, &'static str)> = None;
        let mut unavailable: Option<(usize, Duration)> = None;
        for &i in candidates {
            match &self.providers[i] {
                Provider::Jwt(v) => match v.verify(token).await {
                    Ok(p) => return (i, Ok(Arc::new(p))),
                    Err(JwtFailure::Expired(at)) => {
                        return (i, Err(AuthError::Expired { expired_at: at }))
                    }
                    Err(JwtFailure::Invalid(code, reason)) => {
                        return (i, Err(AuthError::Invalid { code, reason }))
                    }
                    Err(JwtFailure::NotMine(code, reason)) => {
                        first_refusal.get_or_insert((i, code, reason));
                    }
                    Err(JwtFailure::Unavailable) => {
                        unavailable.get_or_insert((i, jwks::MIN_REFETCH));
                    }
                },
                Provider::Introspection(x) => {
                    match self.single_flight.run((hash, i), x, token).await {
                        Ok(p) => return (i, Ok(Arc::new(p))),
                        Err(IntrospectionFailure::Inactive) => {
                            first_refusal.get_or_insert((
                                i,
                                Denial::Inactive,
                                "token is not active",
                            ));
                        }
                        Err(IntrospectionFailure::Malformed(reason)) => {
                            return (
                                i,
                                Err(AuthError::Invalid {
                                    code: Denial::Malformed,
                                    reason: reason.into(),
                                }),
                            );
                        }
                        Err(IntrospectionFailure::Unavailable) => {
                            unavailable.get_or_insert((i, INTROSPECTION_RETRY));
                        }
                    }
                }
                Provider::ApiKey(k) => match k.verify(token) {
                    Some(p) => return (i, Ok(Arc::new(p))),
                    None => {
                        first_refusal.get_or_insert((i, Denial::UnknownKey, "unknown API key"));
                    }
                },
            }
        }
        if let Some((i, retry_after)) = unavailable {
            return (i, Err(AuthError::Unavailable { retry_after }));
        }
        let (i, code, reason) =
            first_refusal.unwrap_or((candidates[0], Denial::Malformed, "not accepted"));
        (
            i,
            Err(AuthError::Invalid {
                code,
                reason: reason.into(),
            }),
        )
    }
}

/// For each provider, the claim paths of the route rules it may answer for, sorted.
fn kept_claims(providers: usize, routes: &[Arc<RouteSpec>]) -> Vec<Arc<[ClaimPath]>> {
    let mut kept: Vec<Vec<ClaimPath>> = vec![Vec::new(); providers];
    for route in routes.iter().filter(|r| !r.claims.is_empty()) {
        let allowed: &[usize] = match &route.auth {
            RouteAuth::Required { providers, .. } | RouteAuth::Optional { providers } => providers,
            RouteAuth::None => &[],
        };
        for &i in allowed {
            kept[i].extend(route.claims.iter().map(|c| c.path.clone()));
        }
    }
    kept.into_iter()
        .map(|mut k| {
            k.sort();
            k.dedup();
            k.into()
        })
        .collect()
}

/// `auth.claims`: every rule holds on the kept claims; an array claim matches when any of its
/// elements is an allowed value. A claim the token does not have fails its rule.
fn check_claims(p: Arc<Principal>, rules: &[ClaimCheck]) -> Result<Arc<Principal>, AuthError> {
    for rule in rules {
        let allowed = |v: &serde_json::Value| rule.allowed.iter().any(|a| jwt::claim_equals(v, a));
        let ok = match p.claims.as_ref().and_then(|c| c.get(&*rule.path.name)) {
            Some(serde_json::Value::Array(items)) => items.iter().any(allowed),
            Some(v) => allowed(v),
            None => false,
        };
        if !ok {
            return Err(AuthError::Forbidden {
                claim: rule.path.name.clone(),
            });
        }
    }
    Ok(p)
}

fn check_scopes(p: Arc<Principal>, required: &[String]) -> Result<Arc<Principal>, AuthError> {
    if required.iter().all(|r| p.scopes.iter().any(|s| s == r)) {
        Ok(p)
    } else {
        Err(AuthError::Scope {
            required: required.to_vec(),
        })
    }
}

#[cfg(test)]
mod chain_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().expect("value"));
        h
    }

    #[test]
    fn credentials() {
        assert_eq!(credential(&HeaderMap::new()), None);
        let h = hm("Bearer abc.def.ghi");
        assert_eq!(credential(&h), Some(Ok(Credential::Bearer("abc.def.ghi"))));
        let h = hm("bearer   tok ");
        assert_eq!(credential(&h), Some(Ok(Credential::Bearer("tok"))));
        let h = hm("Api-Key k1");
        assert_eq!(
            credential(&h),
            Some(Ok(Credential::Scheme {
                scheme: "Api-Key",
                value: "k1"
            }))
        );
        for bad in ["Bearer", "Bearer ", "justatoken", "Bearer a b"] {
            assert_eq!(credential(&hm(bad)), Some(Err(())), "{bad:?}");
        }
    }

    #[test]
    fn scopes_must_all_be_granted() {
        let p = Arc::new(Principal::for_tests("s", &["read", "write"]));
        assert!(check_scopes(p.clone(), &["read".into()]).is_ok());
        assert!(check_scopes(p.clone(), &[]).is_ok());
        assert_eq!(
            check_scopes(p, &["read".into(), "admin".into()]),
            Err(AuthError::Scope {
                required: vec!["read".into(), "admin".into()]
            })
        );
    }
}
