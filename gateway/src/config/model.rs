//! Validated configuration. Built only by `compile`, immutable afterwards, and swapped whole
//! on reload. Names are resolved into indices so the hot path never looks strings up.

pub use super::raw::EncodedSlashes;
use super::raw::LimitScope;
use super::units::Rate;
use crate::tls::CaBundle;
use ipnet::IpNet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Secret bytes (HMAC keys, client secrets, admin token) that never print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug)]
pub struct Config {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub redis: Option<RedisSettings>,
    pub upstreams: Vec<Arc<UpstreamSpec>>,
    pub auth: AuthSettings,
    pub rate_limits: Vec<Arc<RatePolicy>>,
    pub response_cache: ResponseCacheSettings,
    pub routes: Vec<Arc<RouteSpec>>,
    pub upstream_assertion: Option<Arc<AssertionSpec>>,
    /// Problems that do not stop the file from loading (`authgate check` prints them).
    pub warnings: Vec<super::ConfigError>,
}

/// `upstream_assertion`, with its key parsed.
#[derive(Debug)]
pub struct AssertionSpec {
    pub header: http::HeaderName,
    pub key: Arc<crate::signing::SigningKey>,
    pub issuer: String,
    pub ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCacheSettings {
    pub max_size: u64,
    pub max_entry_size: u64,
}

impl Config {
    /// The one-line summary `authgate check` prints.
    pub fn summary(&self) -> String {
        format!(
            "config ok: {} routes, {} upstreams, {} auth providers, {} rate-limit policies, redis {}",
            self.routes.len(),
            self.upstreams.len(),
            self.auth.providers.len(),
            self.rate_limits.len(),
            if self.redis.is_some() { "on" } else { "off" },
        )
    }
}

#[derive(Debug)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub tls: Option<TlsSettings>,
    pub threads: usize,
    pub max_request_body: u64,
    pub grace_period: Duration,
    pub trusted_proxies: TrustedProxies,
    pub header_timeout: Duration,
    pub encoded_slashes: EncodedSlashes,
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub client_ipv6_prefix: u8,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub hsts: Option<http::HeaderValue>,
}

/// Peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Default, Clone)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    /// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack `[::]` listener sees
    /// for IPv4 peers) match as the IPv4 address they are.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug)]
pub struct AdminSettings {
    pub listen: String,
    pub token: Option<Secret>,
    /// Bound to a loopback address: only this host can reach it.
    pub loopback: bool,
}

#[derive(Debug)]
pub struct RedisSettings {
    pub topology: RedisTopology,
    /// ACL user and password of the data nodes (a `url` may carry its own instead).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS to the data nodes (and the sentinels): `rediss://`, or `tls: true`.
    pub tls: bool,
    pub key_prefix: String,
    pub command_timeout: Duration,
    pub ca: Option<Arc<CaBundle>>,
}

/// Where the shared state lives.
#[derive(Debug)]
pub enum RedisTopology {
    /// One server; the URL may hold a password, so it is kept as a secret.
    Single { url: Secret },
    /// The master that these sentinels name, followed across failovers.
    Sentinel {
        master: String,
        nodes: Vec<NodeAddr>,
        password: Option<Secret>,
    },
    /// A Redis Cluster, found from these seed nodes.
    Cluster { nodes: Vec<NodeAddr> },
}

/// A `host:port` checked when the file is compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl RedisSettings {
    /// Everything that needs a new connection when it changes (passwords included, hashed).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_vec());
        match &self.topology {
            RedisTopology::Single { url } => h.update(format!("single|{:?}", url.expose())),
            RedisTopology::Sentinel {
                master,
                nodes,
                password,
            } => h.update(format!(
                "sentinel|{master}|{nodes:?}|{:?}",
                secret(password)
            )),
            RedisTopology::Cluster { nodes } => h.update(format!("cluster|{nodes:?}")),
        }
        h.update(format!(
            "|{:?}|{:?}|{}|{}|{:?}|{:?}",
            self.username,
            secret(&self.password),
            self.tls,
            self.key_prefix,
            self.command_timeout,
            self.ca.as_ref().map(|c| c.fingerprint),
        ));
        hex::encode(h.finalize())
    }

    pub fn mode(&self) -> &'static str {
        match self.topology {
            RedisTopology::Single { .. } => "server",
            RedisTopology::Sentinel { .. } => "sentinel",
            RedisTopology::Cluster { .. } => "cluster",
        }
    }
}

#[derive(Debug)]
pub struct UpstreamSpec {
    pub index: usize,
    pub name: String,
    pub endpoints: Vec<String>,
    pub tls: bool,
    /// `ca_file` for `tls: true`, loaded and checked when the file is compiled.
    pub ca: Option<Arc<CaBundle>>,
    pub sni: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_check: Option<HealthCheckSpec>,
}

#[derive(Debug, Clone)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct AuthSettings {
    pub realm: String,
    pub refresh_endpoint: Option<String>,
    pub login_endpoint: Option<String>,
    pub providers: Vec<Arc<ProviderSpec>>,
    pub cache: TokenCacheSettings,
    pub revocation_ttl: Duration,
    /// The largest `leeway` of the jwt providers: how long past `exp` a token may still pass.
    pub max_leeway: Duration,
    /// `auth.failure_limit` as a local, client-IP policy named `auth_failures`.
    pub failure_limit: Option<Arc<RatePolicy>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCacheSettings {
    pub max_entries: u64,
    pub max_ttl: Duration,
    pub negative_ttl: Duration,
}

#[derive(Debug)]
pub struct ProviderSpec {
    pub index: usize,
    pub name: String,
    pub kind: ProviderKind,
}

#[derive(Debug)]
pub enum ProviderKind {
    Jwt(JwtSpec),
    Introspection(IntrospectionSpec),
    ApiKey(ApiKeySpec),
}

impl ProviderKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ProviderKind::Jwt(_) => "jwt",
            ProviderKind::Introspection(_) => "introspection",
            ProviderKind::ApiKey(_) => "api_key",
        }
    }
}

#[derive(Debug)]
pub struct JwtSpec {
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub keys: Vec<StaticKey>,
    /// The key set's URL; with `discovery`, the discovery document's (which names it).
    pub jwks_url: Option<String>,
    /// `discovery: true`: `jwks_url` is `<issuer>/.well-known/openid-configuration`.
    pub discovery: bool,
    pub jwks_refresh: Duration,
    /// Fewest time between two fetches for an unknown `kid` (`jwks_min_refetch`).
    pub jwks_min_refetch: Duration,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    pub subject_claim: String,
    pub scopes_claim: String,
    pub required_claims: Vec<ClaimRule>,
    /// Lowercase, without an `application/` prefix.
    pub typ: Option<String>,
    pub ca: Option<Arc<CaBundle>>,
    pub dpop: DpopSpec,
}

/// `dpop`: whether and how tokens are bound to a key the client proves it holds (RFC 9449).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DpopMode {
    /// Bearer tokens only; `cnf` is not looked at.
    #[default]
    Off,
    /// Unbound tokens as Bearer; bound ones (`cnf.jkt`) only with a proof.
    Optional,
    /// Every token with the `DPoP` scheme and a proof.
    Required,
}

/// `dpop_algorithms` when not given.
pub const DEFAULT_DPOP_ALGORITHMS: [jsonwebtoken::Algorithm; 4] = [
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::RS256,
];

/// A provider's DPoP settings, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct DpopSpec {
    pub mode: DpopMode,
    /// Asymmetric only (checked when compiled).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `algs="..."` of the challenge, built once.
    pub algs: Arc<str>,
    /// How far a proof's `iat` may be from now: the provider's `leeway` when given, else 60s.
    pub window: Duration,
    /// `dpop_nonce: true`.
    pub nonce: bool,
}

impl Default for DpopSpec {
    fn default() -> Self {
        DpopSpec {
            mode: DpopMode::Off,
            algorithms: Vec::new(),
            algs: Arc::from(""),
            window: Duration::from_secs(60),
            nonce: false,
        }
    }
}

/// A claim that must be present and equal one of `allowed` (JSON scalars).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRule {
    pub claim: String,
    pub allowed: Vec<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct StaticKey {
    pub kid: Option<String>,
    pub material: KeyMaterial,
}

/// Key bytes as loaded. A key's family decides which algorithms it may ever be used with, so an
/// RSA or EC public key can never be fed to HMAC verification (algorithm confusion).
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    Hmac(Secret),
    RsaPem(Arc<[u8]>),
    EcPem(Arc<[u8]>),
    EdPem(Arc<[u8]>),
}

#[derive(Debug)]
pub struct IntrospectionSpec {
    pub url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub timeout: Duration,
    pub ca: Option<Arc<CaBundle>>,
    pub subject_field: String,
    pub max_concurrency: u32,
    pub dpop: DpopSpec,
}

#[derive(Debug)]
pub struct ApiKeySpec {
    pub source: ApiKeySource,
    pub keys: Vec<ApiKeyEntrySpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// `Authorization: <scheme> <key>`; the scheme is compared case-insensitively.
    Scheme(String),
    /// A dedicated header, lowercase.
    Header(http::HeaderName),
}

#[derive(Debug, Clone)]
pub struct ApiKeyEntrySpec {
    pub id: String,
    pub sha256: [u8; 32],
    pub subject: String,
    pub scopes: Vec<String>,
}

#[derive(Debug)]
pub struct RatePolicy {
    pub index: usize,
    /// Shared with every `RateLimitInfo` that names it (no copy per request).
    pub name: Arc<str>,
    pub rate: Rate,
    pub burst: u32,
    pub key: LimitKey,
    pub scope: LimitScope,
    /// `RateLimit-Limit`'s value (the burst), built once: it never changes per answer.
    pub limit_header: http::HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Subject,
    ApiKey,
    Header(http::HeaderName),
}

impl LimitKey {
    /// Keys known before authentication are spent before it, so a request that fails
    /// authentication still counts (junk tokens are not free, and cost the IdP nothing).
    pub fn before_auth(&self) -> bool {
        matches!(self, LimitKey::ClientIp | LimitKey::Header(_))
    }
}

#[derive(Debug)]
pub struct RouteSpec {
    pub index: usize,
    pub name: String,
    pub matcher: RouteMatcher,
    pub auth: RouteAuth,
    pub rate_limits: Vec<usize>,
    pub deadline: Option<Duration>,
    pub cache: Option<RouteCacheSpec>,
    pub max_query_length: Option<usize>,
    pub max_page_size: Option<u64>,
    pub revokes_token: bool,
    pub forward_authorization: bool,
    pub response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub upstream: usize,
    /// `auth.claims`: every rule must hold for a valid identity.
    pub claims: Vec<ClaimCheck>,
    pub auth_mode: AuthMode,
    /// `auth.cookie` / `auth.query_param`: where a bearer token may also come from.
    pub token_cookie: Option<String>,
    pub token_query: Option<String>,
    pub cors: Option<Arc<crate::cors::CorsPolicy>>,
}

/// A claim path as configured (`realm_access.roles`), split once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClaimPath {
    /// The dotted name, as the 403's `claim` says it.
    pub name: Arc<str>,
    pub segments: Box<[String]>,
}

impl ClaimPath {
    pub fn parse(name: &str) -> Option<Self> {
        let segments: Box<[String]> = name.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(ClaimPath {
            name: name.into(),
            segments,
        })
    }

    /// The value at this path in a claims object.
    pub fn find<'a>(
        &self,
        claims: &'a serde_json::Map<String, serde_json::Value>,
    ) -> Option<&'a serde_json::Value> {
        let (first, rest) = self.segments.split_first()?;
        let mut v = claims.get(first)?;
        for s in rest {
            v = v.as_object()?.get(s)?;
        }
        Some(v)
    }
}

/// One `auth.claims` rule: the claim at `path` equals one of `allowed` (an array claim: any
/// of its elements does).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCheck {
    pub path: ClaimPath,
    pub allowed: Vec<serde_json::Value>,
}

/// `auth.mode`: `shadow` makes every decision and enforces none of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    #[default]
    Enforce,
    Shadow,
}

#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// `None` = any method.
    pub methods: Option<Vec<http::Method>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Lowercase host without port.
    Exact(String),
    /// `*.example.com`: the stored suffix is `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuth {
    None,
    /// Identity attached when a valid credential is present; absence is anonymous.
    Optional {
        providers: Vec<usize>,
    },
    Required {
        providers: Vec<usize>,
        scopes: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RouteCacheSpec {
    pub ttl: Duration,
    pub vary: Vec<String>,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}
