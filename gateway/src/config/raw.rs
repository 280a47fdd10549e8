//! The YAML schema as written by users: plain serde types, unknown keys rejected.
//!
//! Nothing here is trusted yet; `compile` turns these into validated types.

use super::units::{ByteSize, Dur, OneOrMany, Rate};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    #[serde(default)]
    pub response_cache: ResponseCacheConfig,
    #[serde(default)]
    pub upstream_assertion: Option<AssertionConfig>,
    pub routes: Vec<RouteConfig>,
}

/// `upstream_assertion`: a signed identity for the upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    #[serde(default = "default_assertion_header")]
    pub header: String,
    pub algorithm: AssertionAlgorithm,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub key_env: Option<String>,
    pub issuer: String,
    #[serde(default = "default_assertion_ttl")]
    pub ttl: Dur,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AssertionAlgorithm {
    EdDSA,
    ES256,
}

fn default_assertion_header() -> String {
    "X-Auth-Assertion".into()
}

fn default_assertion_ttl() -> Dur {
    Dur::secs(60)
}

/// The response cache shared by every route with `cache:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCacheConfig {
    #[serde(default = "default_cache_size")]
    pub max_size: ByteSize,
    #[serde(default = "default_cache_entry_size")]
    pub max_entry_size: ByteSize,
}

fn default_cache_size() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_cache_entry_size() -> ByteSize {
    ByteSize(1 << 20)
}

impl Default for ResponseCacheConfig {
    fn default() -> Self {
        ResponseCacheConfig {
            max_size: default_cache_size(),
            max_entry_size: default_cache_entry_size(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default = "default_max_body")]
    pub max_request_body: ByteSize,
    #[serde(default = "default_grace")]
    pub grace_period: Dur,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Dur,
    /// `%2F` and `%5C` in a request path: refused (400) or kept as ordinary characters.
    #[serde(default)]
    pub encoded_slashes: EncodedSlashes,
    /// An HTTP/2 connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    #[serde(default)]
    pub http2: Http2Config,
    /// IPv6 clients are one client per this prefix for `client_ip` limits (a host has a /64).
    #[serde(default = "default_ipv6_prefix")]
    pub client_ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2Config {
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: default_max_concurrent_streams(),
        }
    }
}

fn default_max_concurrent_streams() -> u32 {
    100
}
fn default_idle_timeout() -> Dur {
    Dur::secs(60)
}

pub use crate::path::EncodedSlashes;

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".into()]
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_grace() -> Dur {
    Dur::secs(10)
}
fn default_header_timeout() -> Dur {
    Dur::secs(30)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tls: None,
            threads: None,
            max_request_body: default_max_body(),
            grace_period: default_grace(),
            trusted_proxies: Vec::new(),
            header_timeout: default_header_timeout(),
            encoded_slashes: EncodedSlashes::Reject,
            idle_timeout: default_idle_timeout(),
            http2: Http2Config::default(),
            client_ipv6_prefix: default_ipv6_prefix(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub listen: String,
    pub cert_file: String,
    pub key_file: String,
    /// `Strict-Transport-Security` sent on TLS answers; `off` sends none.
    #[serde(default = "default_hsts")]
    pub hsts: String,
}

fn default_hsts() -> String {
    "max-age=31536000".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_env: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server. Exactly one of `url`, `sentinel`, `cluster`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// ACL user of the data nodes (with `url`, the URL may carry it instead).
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the data nodes' password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS to every node, for `sentinel` and `cluster` (a `url` says so with `rediss://`).
    #[serde(default)]
    pub tls: bool,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_command_timeout")]
    pub command_timeout: Dur,
    /// CA bundle for `rediss://` (default: the Mozilla roots built in).
    #[serde(default)]
    pub ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The monitored master's name.
    pub master: String,
    /// `host:port` of the sentinels.
    pub nodes: Vec<String>,
    /// Environment variable holding the sentinels' own password (`requirepass`).
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `host:port` of some of the cluster's nodes; the rest are discovered.
    pub nodes: Vec<String>,
}

fn default_key_prefix() -> String {
    "authgate:".into()
}
fn default_command_timeout() -> Dur {
    Dur::millis(50)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Name sent as SNI and checked against the certificate (default: the endpoint's host).
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for any single read from the upstream (response header or a body chunk).
    #[serde(default = "default_read_timeout")]
    pub read_timeout: Dur,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_read_timeout() -> Dur {
    Dur::secs(60)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub path: String,
    #[serde(default = "default_hc_interval")]
    pub interval: Dur,
    #[serde(default = "default_hc_timeout")]
    pub timeout: Dur,
}

fn default_hc_interval() -> Dur {
    Dur::secs(5)
}
fn default_hc_timeout() -> Dur {
    Dur::secs(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default = "default_realm")]
    pub realm: String,
    #[serde(default)]
    pub refresh_endpoint: Option<String>,
    #[serde(default)]
    pub login_endpoint: Option<String>,
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    #[serde(default)]
    pub cache: TokenCacheConfig,
    /// How long a revocation is kept when the token's expiry is unknown (API keys, opaque
    /// tokens without `exp`, `jti`s, subjects).
    #[serde(default = "default_revocation_ttl")]
    pub revocation_ttl: Dur,
    /// Per client IP: each refused credential spends one; while spent, credentials from that
    /// address get 429 without being looked at.
    #[serde(default)]
    pub failure_limit: Option<FailureLimitConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureLimitConfig {
    pub rate: Rate,
    pub burst: u32,
}

fn default_revocation_ttl() -> Dur {
    Dur::secs(30 * 24 * 3600)
}

fn default_realm() -> String {
    "authgate".into()
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: default_realm(),
            refresh_endpoint: None,
            login_endpoint: None,
            providers: BTreeMap::new(),
            cache: TokenCacheConfig::default(),
            revocation_ttl: default_revocation_ttl(),
            failure_limit: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProviderConfig {
    Jwt(JwtProviderConfig),
    Introspection(IntrospectionConfig),
    ApiKey(ApiKeyProviderConfig),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Dur,
    /// Fewest time between fetches that tokens with an unknown `kid` may cause.
    #[serde(default = "default_jwks_min_refetch")]
    pub jwks_min_refetch: Dur,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub audience: Option<OneOrMany<String>>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub subject_claim: Option<String>,
    #[serde(default)]
    pub scopes_claim: Option<String>,
    /// Claims that must be present with one of the given values (`token_type: access`).
    #[serde(default)]
    pub required_claims: BTreeMap<String, serde_yaml::Value>,
    /// The JOSE header `typ` tokens must carry (RFC 9068 `at+jwt`).
    #[serde(default)]
    pub typ: Option<String>,
    /// CA bundle (or pinned certificate) for an https `jwks_url`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// OIDC discovery: the JWKS URL from `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Sender-constrained tokens (RFC 9449): `off` (default), `optional` or `required`.
    #[serde(default)]
    pub dpop: Option<String>,
    /// The proof algorithms accepted (default ES256, EdDSA, PS256, RS256).
    #[serde(default)]
    pub dpop_algorithms: Option<Vec<String>>,
    /// Server nonces in proofs (RFC 9449 8).
    #[serde(default)]
    pub dpop_nonce: bool,
}

fn default_jwks_refresh() -> Dur {
    Dur::secs(300)
}

fn default_jwks_min_refetch() -> Dur {
    Dur::secs(5)
}

/// One static key. Exactly one of the sources must be given.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    #[serde(default)]
    pub secret_base64_env: Option<String>,
    #[serde(default)]
    pub secret_file: Option<String>,
    #[serde(default)]
    pub public_key_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<String>,
    #[serde(default = "default_introspection_timeout")]
    pub timeout: Dur,
    /// CA bundle (or pinned certificate) for an https `url`.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The answer's field that names the subject (default `sub`).
    #[serde(default)]
    pub subject_field: Option<String>,
    /// Introspection calls in flight at once; beyond it, 503 `auth_unavailable`.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Sender-constrained tokens (RFC 9449): `off` (default), `optional` or `required`.
    #[serde(default)]
    pub dpop: Option<String>,
    /// The proof algorithms accepted (default ES256, EdDSA, PS256, RS256).
    #[serde(default)]
    pub dpop_algorithms: Option<Vec<String>>,
    /// Server nonces in proofs (RFC 9449 8).
    #[serde(default)]
    pub dpop_nonce: bool,
}

fn default_max_concurrency() -> u32 {
    64
}

fn default_introspection_timeout() -> Dur {
    Dur::millis(500)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyProviderConfig {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    pub keys: Vec<ApiKeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub id: String,
    pub sha256: String,
    pub subject: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheConfig {
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
    #[serde(default = "default_cache_ttl")]
    pub max_ttl: Dur,
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Dur,
}

fn default_cache_entries() -> u64 {
    100_000
}
fn default_cache_ttl() -> Dur {
    Dur::secs(300)
}
fn default_negative_ttl() -> Dur {
    Dur::secs(5)
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        TokenCacheConfig {
            max_entries: default_cache_entries(),
            max_ttl: default_cache_ttl(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub rate: Rate,
    pub burst: u32,
    pub key: String,
    #[serde(default)]
    pub scope: Option<LimitScope>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Local,
    Shared,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub auth: RouteAuthConfig,
    #[serde(default)]
    pub rate_limit: Option<OneOrMany<String>>,
    #[serde(default)]
    pub deadline: Option<Dur>,
    #[serde(default)]
    pub cache: Option<RouteCacheConfig>,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub max_query_length: Option<usize>,
    #[serde(default)]
    pub max_page_size: Option<u64>,
    #[serde(default)]
    pub revokes_token: bool,
    #[serde(default = "default_true")]
    pub forward_authorization: bool,
    /// Headers added to every answer on this route (security headers and the like).
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    pub upstream: String,
}

fn default_true() -> bool {
    true
}

/// A route's `cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    pub allow_origins: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default = "default_cors_max_age")]
    pub max_age: Dur,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_cors_max_age() -> Dur {
    Dur::secs(600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    pub ttl: Dur,
    /// Required on a route with auth (`[]` shares one entry among every admitted caller).
    #[serde(default)]
    pub vary: Option<Vec<String>>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
}

/// Route `auth`: `none`, `optional`, `required`, or `{providers: [...], scopes: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAuthConfig {
    None,
    Optional,
    /// Any provider (`required`) or, with a list, only those providers, with scopes.
    Required {
        providers: Option<Vec<String>>,
        scopes: Vec<String>,
        rules: AuthRulesConfig,
    },
}

/// The parts of a route's `auth` map beyond providers and scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthRulesConfig {
    /// Dotted claim path -> one allowed value or a list of them.
    pub claims: BTreeMap<String, serde_json::Value>,
    pub mode: AuthModeConfig,
    pub cookie: Option<String>,
    pub query_param: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthModeConfig {
    #[default]
    Enforce,
    Shadow,
}

impl Default for RouteAuthConfig {
    /// A route that says nothing about auth requires it: the gateway fails closed.
    fn default() -> Self {
        RouteAuthConfig::Required {
            providers: None,
            scopes: Vec::new(),
            rules: AuthRulesConfig::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteAuthSpec {
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    mode: AuthModeConfig,
    #[serde(default)]
    cookie: Option<String>,
    #[serde(default)]
    query_param: Option<String>,
}

impl<'de> Deserialize<'de> for RouteAuthConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RouteAuthConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("none, optional, required, or {providers: [..], scopes: [..]}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "none" => Ok(RouteAuthConfig::None),
                    "optional" => Ok(RouteAuthConfig::Optional),
                    "required" => Ok(RouteAuthConfig::default()),
                    other => Err(E::custom(format!(
                        "unknown auth mode {other:?}: expected none, optional, required or a map"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let spec = RouteAuthSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RouteAuthConfig::Required {
                    providers: spec.providers,
                    scopes: spec.scopes,
                    rules: AuthRulesConfig {
                        claims: spec.claims,
                        mode: spec.mode,
                        cookie: spec.cookie,
                        query_param: spec.query_param,
                    },
                })
            }
        }
        d.deserialize_any(V)
    }
}
