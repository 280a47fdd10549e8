//! Raw YAML types -> validated `Config`. Every problem is collected, each with its YAML path,
//! so `authgate check` can report a whole file at once.

use super::env::Env;
use super::error::ConfigError;
use super::model::*;
use super::raw::{self, ConfigFile, LimitScope, ProviderConfig, RouteAuthConfig};
use crate::path::normalize_path;
use base64::Engine;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Resolves relative file names and environment variables while compiling.
pub struct Context<'a> {
    pub base_dir: &'a Path,
    pub env: &'a dyn Env,
}

struct Compiler<'a> {
    ctx: &'a Context<'a>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

pub fn compile(file: ConfigFile, ctx: &Context<'_>) -> Result<Config, Vec<ConfigError>> {
    let mut c = Compiler {
        ctx,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let redis = file.redis.as_ref().map(|r| c.redis(r));
    let server = c.server(&file.server);
    let admin = c.admin(&file.admin);
    let upstreams = c.upstreams(&file.upstreams);
    let auth = c.auth(&file.auth);
    let rate_limits = c.rate_limits(&file.rate_limits, redis.is_some());
    let routes = c.routes(&file.routes, &upstreams, &auth, &rate_limits);
    let response_cache = ResponseCacheSettings {
        max_size: file.response_cache.max_size.0,
        max_entry_size: file.response_cache.max_entry_size.0,
    };
    if response_cache.max_entry_size > response_cache.max_size {
        c.err("response_cache.max_entry_size", "must not exceed max_size");
    }
    let upstream_assertion = file
        .upstream_assertion
        .as_ref()
        .and_then(|a| c.upstream_assertion(a));
    if c.errors.is_empty() {
        Ok(Config {
            server,
            admin,
            redis,
            upstreams,
            auth,
            rate_limits,
            response_cache,
            routes,
            upstream_assertion,
            warnings: c.warnings,
        })
    } else {
        Err(c.errors)
    }
}

/// Headers an assertion may not travel in: HTTP's own, and those the gateway sets for other
/// purposes.
fn reserved_header(h: &http::HeaderName) -> bool {
    let n = h.as_str();
    n.starts_with("x-forwarded-")
        || matches!(
            n,
            "host"
                | "authorization"
                | "cookie"
                | "content-length"
                | "content-type"
                | "transfer-encoding"
                | "connection"
                | "keep-alive"
                | "te"
                | "trailer"
                | "upgrade"
                | "proxy-authorization"
                | "forwarded"
                | "x-real-ip"
                | "x-request-id"
                | "x-request-timeout-ms"
                | "x-auth-subject"
                | "x-auth-scopes"
                | "x-auth-provider"
        )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

const NAME_RULE: &str = "names are 1 to 64 characters of A-Z a-z 0-9 - _ .";

impl Compiler<'_> {
    fn err(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(path, msg));
    }

    fn warn(&mut self, path: impl Into<String>, msg: impl Into<String>) {
        self.warnings.push(ConfigError::new(path, msg));
    }

    /// A CA bundle, read and parsed now, so a bad one is refused with the file and not at the
    /// first connection.
    fn ca_bundle(&mut self, path: &str, name: &str) -> Option<Arc<crate::tls::CaBundle>> {
        let file = self.file(path, name)?;
        match crate::tls::CaBundle::load(&file) {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    /// An identity-provider URL: http or https, and a warning for plaintext beyond loopback
    /// (tokens and client secrets would cross the network in clear).
    fn idp_url(&mut self, path: &str, url: &str) {
        let Some(rest) = url
            .strip_prefix("http://")
            .map(|r| (r, false))
            .or_else(|| url.strip_prefix("https://").map(|r| (r, true)))
        else {
            self.err(path, "must be an http:// or https:// URL");
            return;
        };
        let (rest, tls) = rest;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or_default(),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        if host.is_empty() {
            self.err(path, "the URL has no host");
            return;
        }
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !tls && !loopback {
            self.warn(
                path,
                "plain http:// to a host that is not loopback: tokens and secrets cross the \
                 network in clear, and whoever is on the path can answer for the provider; \
                 use https://",
            );
        }
    }

    fn file(&mut self, path: &str, name: &str) -> Option<PathBuf> {
        let p = self.ctx.base_dir.join(name);
        if p.is_file() {
            Some(p)
        } else {
            self.err(
                path,
                format!("file {} does not exist or is not a file", p.display()),
            );
            None
        }
    }

    fn read_file(&mut self, path: &str, name: &str) -> Option<Vec<u8>> {
        let p = self.file(path, name)?;
        match std::fs::read(&p) {
            Ok(b) => Some(b),
            Err(e) => {
                self.err(path, format!("cannot read {}: {e}", p.display()));
                None
            }
        }
    }

    fn env_secret(&mut self, path: &str, var: &str) -> Option<Secret> {
        match self.ctx.env.var(var) {
            Some(v) if !v.is_empty() => Some(Secret::new(v.into_bytes())),
            Some(_) => {
                self.err(path, format!("environment variable {var} is empty"));
                None
            }
            None => {
                self.err(path, format!("environment variable {var} is not set"));
                None
            }
        }
    }

    /// `upstream_assertion`: the key is parsed here, so `check` and a reload refuse a bad one.
    fn upstream_assertion(&mut self, a: &raw::AssertionConfig) -> Option<Arc<AssertionSpec>> {
        const P: &str = "upstream_assertion";
        let header = match http::HeaderName::from_bytes(a.header.as_bytes()) {
            Ok(h) if reserved_header(&h) => {
                self.err(
                    format!("{P}.header"),
                    format!("{} is a header HTTP or the gateway itself sets", a.header),
                );
                None
            }
            Ok(h) if h.as_str().contains('_') => {
                self.err(
                    format!("{P}.header"),
                    "a name with _ is dropped or folded by upstream servers; use -",
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                self.err(format!("{P}.header"), "not a valid header name");
                None
            }
        };
        if a.issuer.is_empty() {
            self.err(format!("{P}.issuer"), "must not be empty");
        }
        let ttl = a.ttl.0;
        if ttl < Duration::from_secs(2) || ttl > Duration::from_secs(300) {
            self.err(
                format!("{P}.ttl"),
                "must be between 2s and 5m (an assertion is a short-lived proof)",
            );
        }
        let pem = match (&a.key_file, &a.key_env) {
            (Some(f), None) => self.read_file(&format!("{P}.key_file"), f),
            (None, Some(v)) => self
                .env_secret(&format!("{P}.key_env"), v)
                .map(|s| s.expose().to_vec()),
            _ => {
                self.err(P, "give exactly one of key_file, key_env");
                None
            }
        }?;
        let alg = match a.algorithm {
            raw::AssertionAlgorithm::EdDSA => crate::signing::AssertionAlg::EdDSA,
            raw::AssertionAlgorithm::ES256 => crate::signing::AssertionAlg::ES256,
        };
        let key_path = if a.key_file.is_some() {
            "key_file"
        } else {
            "key_env"
        };
        let key = match crate::signing::SigningKey::from_pem(alg, &pem) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                self.err(format!("{P}.{key_path}"), e);
                return None;
            }
        };
        Some(Arc::new(AssertionSpec {
            header: header?,
            key,
            issuer: a.issuer.clone(),
            ttl,
        }))
    }

    /// A route's `auth.claims` and `auth.mode`, compiled once: paths split, values checked.
    fn auth_rules(
        &mut self,
        path: &str,
        rules: &raw::AuthRulesConfig,
    ) -> (Vec<ClaimCheck>, AuthMode) {
        let mut checks = Vec::new();
        for (name, want) in &rules.claims {
            let p = format!("{path}.auth.claims.{name}");
            let Some(claim) = ClaimPath::parse(name) else {
                self.err(p, "a claim path is names separated by single dots");
                continue;
            };
            let allowed = match want {
                serde_json::Value::Array(list) if list.is_empty() => {
                    self.err(p, "list at least one allowed value");
                    continue;
                }
                serde_json::Value::Array(list) => list.clone(),
                other => vec![other.clone()],
            };
            if allowed
                .iter()
                .any(|v| v.is_object() || v.is_array() || v.is_null())
            {
                self.err(p, "allowed values are strings, numbers or booleans");
                continue;
            }
            checks.push(ClaimCheck {
                path: claim,
                allowed,
            });
        }
        if let Some(c) = &rules.cookie {
            // RFC 6265 cookie-name: an HTTP token.
            if c.is_empty() || http::HeaderName::from_bytes(c.as_bytes()).is_err() {
                self.err(format!("{path}.auth.cookie"), "not a valid cookie name");
            }
        }
        if let Some(q) = &rules.query_param {
            if q.is_empty() || q.contains(['&', '=', '#', '?', ' ', '%', '+']) {
                self.err(
                    format!("{path}.auth.query_param"),
                    "a parameter name without & = # ? % + or spaces",
                );
            }
        }
        let mode = match rules.mode {
            raw::AuthModeConfig::Enforce => AuthMode::Enforce,
            raw::AuthModeConfig::Shadow => AuthMode::Shadow,
        };
        (checks, mode)
    }

    /// A route's `cors`, with its header values rendered once.
    fn cors(&mut self, path: &str, c: &raw::CorsConfig) -> Option<Arc<crate::cors::CorsPolicy>> {
        let p = format!("{path}.cors");
        let before = self.errors.len();
        let any = c.allow_origins.iter().any(|o| o == "*");
        if c.allow_origins.is_empty() {
            self.err(
                format!("{p}.allow_origins"),
                "list at least one origin, or \"*\"",
            );
        }
        if any && c.allow_credentials {
            self.err(
                format!("{p}.allow_credentials"),
                "\"*\" with credentials would let any site act with your users' cookies                  (browsers refuse it too); list the origins",
            );
        }
        if any && c.allow_origins.len() > 1 {
            self.err(format!("{p}.allow_origins"), "\"*\" stands alone");
        }
        for (i, o) in c.allow_origins.iter().enumerate().filter(|_| !any) {
            // An origin is scheme://host[:port]: no path, no trailing slash, no wildcard.
            let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains(['/', '*', '?', '#', ' '])
            });
            if !ok {
                self.err(
                    format!("{p}.allow_origins[{i}]"),
                    format!("{o:?} is not an origin (scheme://host[:port], e.g. https://app.example.com)"),
                );
            }
        }
        for (i, m) in c.allow_methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err() || m.is_empty() {
                self.err(format!("{p}.allow_methods[{i}]"), "not an HTTP method");
            }
        }
        for (field, list) in [
            ("allow_headers", &c.allow_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    self.err(format!("{p}.{field}[{i}]"), "not a header name");
                }
            }
        }
        if self.errors.len() > before {
            return None;
        }
        let joined = |list: &[String]| {
            (!list.is_empty())
                .then(|| http::HeaderValue::from_str(&list.join(", ")).ok())
                .flatten()
        };
        Some(Arc::new(crate::cors::CorsPolicy {
            origins: (!any).then(|| {
                c.allow_origins
                    .iter()
                    .map(|o| o.to_ascii_lowercase())
                    .collect()
            }),
            allow_methods: joined(&c.allow_methods)
                .unwrap_or_else(|| http::HeaderValue::from_static("GET, HEAD, POST")),
            allow_headers: joined(&c.allow_headers),
            expose_headers: joined(&c.expose_headers),
            allow_credentials: c.allow_credentials,
            max_age: http::HeaderValue::from(c.max_age.0.as_secs()),
        }))
    }

    fn socket_addr(&mut self, path: &str, s: &str) {
        if s.parse::<SocketAddr>().is_err() {
            self.err(
                path,
                format!("{s:?} is not an address of the form IP:PORT (e.g. 0.0.0.0:8080)"),
            );
        }
    }

    fn server(&mut self, s: &raw::ServerConfig) -> ServerSettings {
        if s.listen.is_empty() {
            self.err("server.listen", "at least one listen address is needed");
        }
        for (i, l) in s.listen.iter().enumerate() {
            self.socket_addr(&format!("server.listen[{i}]"), l);
        }
        let tls = s.tls.as_ref().and_then(|t| {
            self.socket_addr("server.tls.listen", &t.listen);
            let cert = self.file("server.tls.cert_file", &t.cert_file);
            let key = self.file("server.tls.key_file", &t.key_file);
            // Parsed now, so `check` and a reload refuse a bad pair before anything runs.
            if let (Some(c), Some(k)) = (&cert, &key) {
                if let Err(e) = crate::tls::ReloadableCert::prepare(c, k) {
                    self.err("server.tls", e);
                }
            }
            let hsts = match t.hsts.as_str() {
                "off" => None,
                v => match http::HeaderValue::from_str(v) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        self.err("server.tls.hsts", "not a valid header value");
                        None
                    }
                },
            };
            Some(TlsSettings {
                listen: t.listen.clone(),
                cert_file: cert?,
                key_file: key?,
                hsts,
            })
        });
        let threads = match s.threads {
            Some(0) => {
                self.err("server.threads", "threads must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let mut nets = Vec::new();
        for (i, p) in s.trusted_proxies.iter().enumerate() {
            match parse_cidr(p) {
                Some(n) => nets.push(n),
                None => self.err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{p:?} is not an IP address or CIDR block"),
                ),
            }
        }
        if s.max_request_body.0 == 0 {
            self.err("server.max_request_body", "must be greater than 0");
        }
        if s.header_timeout.0.is_zero() {
            self.err("server.header_timeout", "must be greater than 0");
        }
        if s.idle_timeout.0.is_zero() {
            self.err("server.idle_timeout", "must be greater than 0");
        }
        if !(1..=128).contains(&s.client_ipv6_prefix) {
            self.err("server.client_ipv6_prefix", "must be 1 to 128");
        }
        if s.http2.max_concurrent_streams == 0 {
            self.err("server.http2.max_concurrent_streams", "must be at least 1");
        }
        ServerSettings {
            listen: s.listen.clone(),
            tls,
            threads,
            max_request_body: s.max_request_body.0,
            grace_period: s.grace_period.0,
            trusted_proxies: TrustedProxies(nets),
            header_timeout: s.header_timeout.0,
            encoded_slashes: s.encoded_slashes,
            idle_timeout: s.idle_timeout.0,
            h2_max_concurrent_streams: s.http2.max_concurrent_streams,
            client_ipv6_prefix: s.client_ipv6_prefix,
        }
    }

    fn admin(&mut self, a: &raw::AdminConfig) -> AdminSettings {
        self.socket_addr("admin.listen", &a.listen);
        let token = a
            .token_env
            .as_ref()
            .and_then(|v| self.env_secret("admin.token_env", v));
        let loopback = a
            .listen
            .parse::<SocketAddr>()
            .is_ok_and(|s| s.ip().is_loopback());
        if !loopback && a.token_env.is_none() {
            self.warn(
                "admin.listen",
                "not loopback and no admin.token_env: /admin/* (reload, revoke) answers 403 \
                 until a token is set; probes and /metrics stay open",
            );
        }
        AdminSettings {
            listen: a.listen.clone(),
            token,
            loopback,
        }
    }

    fn redis(&mut self, r: &raw::RedisConfig) -> RedisSettings {
        let topology = match (&r.url, &r.sentinel, &r.cluster) {
            (Some(url), None, None) => {
                self.redis_url(url);
                if r.tls && !url.starts_with("rediss://") {
                    self.err("redis.tls", "with url, TLS is asked for by a rediss:// URL");
                }
                RedisTopology::Single {
                    url: Secret::new(url.clone().into_bytes()),
                }
            }
            (None, Some(s), None) => {
                if s.master.trim().is_empty() {
                    self.err("redis.sentinel.master", "must name the monitored master");
                }
                RedisTopology::Sentinel {
                    master: s.master.clone(),
                    nodes: self.redis_nodes("redis.sentinel.nodes", &s.nodes),
                    password: s
                        .password_env
                        .as_ref()
                        .and_then(|v| self.env_secret("redis.sentinel.password_env", v)),
                }
            }
            (None, None, Some(c)) => RedisTopology::Cluster {
                nodes: self.redis_nodes("redis.cluster.nodes", &c.nodes),
            },
            _ => {
                self.err("redis", "give exactly one of url, sentinel, cluster");
                RedisTopology::Cluster { nodes: Vec::new() }
            }
        };
        if r.command_timeout.0.is_zero() {
            self.err("redis.command_timeout", "must be greater than 0");
        }
        let tls = match &topology {
            RedisTopology::Single { .. } => {
                r.url.as_deref().is_some_and(|u| u.starts_with("rediss://"))
            }
            _ => r.tls,
        };
        let ca = r.ca_file.as_ref().and_then(|f| {
            if !tls {
                self.err(
                    "redis.ca_file",
                    "ca_file needs TLS (a rediss:// url, or tls: true)",
                );
            }
            self.ca_bundle("redis.ca_file", f)
        });
        if let Some(u) = &r.username {
            if u.is_empty() || u.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.err("redis.username", "must be a non-empty name without spaces");
            }
        }
        let password = r
            .password_env
            .as_ref()
            .and_then(|v| self.env_secret("redis.password_env", v));
        if r.username.is_some() && r.password_env.is_none() {
            self.err("redis.username", "an ACL user needs password_env");
        }
        RedisSettings {
            topology,
            username: r.username.clone(),
            password,
            tls,
            key_prefix: r.key_prefix.clone(),
            command_timeout: r.command_timeout.0,
            ca,
        }
    }

    fn redis_url(&mut self, url: &str) {
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            self.err("redis.url", "expected a redis://, rediss:// or unix:// URL");
        } else if redis::IntoConnectionInfo::into_connection_info(url).is_err() {
            // The URL may hold a password: the message never quotes it.
            self.err(
                "redis.url",
                "not a valid Redis URL (host, port, database, credentials)",
            );
        }
    }

    /// `host:port` of sentinels or cluster nodes (IPv6 as `[::1]:7000`).
    fn redis_nodes(&mut self, path: &str, nodes: &[String]) -> Vec<NodeAddr> {
        if nodes.is_empty() {
            self.err(path, "needs at least one host:port");
        }
        let mut out = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let parsed = n.rsplit_once(':').and_then(|(host, port)| {
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
                let valid_host = !host.is_empty()
                    && !host.contains(['/', '@', ' ', '[', ']'])
                    && (!host.contains(':') || host.parse::<std::net::Ipv6Addr>().is_ok());
                valid_host.then(|| NodeAddr {
                    host: host.to_string(),
                    port,
                })
            });
            match parsed {
                Some(a) if out.contains(&a) => self.err(format!("{path}[{i}]"), "listed twice"),
                Some(a) => out.push(a),
                None => self.err(format!("{path}[{i}]"), "expected host:port"),
            }
        }
        out
    }

    fn upstreams(&mut self, ups: &BTreeMap<String, raw::UpstreamConfig>) -> Vec<Arc<UpstreamSpec>> {
        if ups.is_empty() {
            self.err("upstreams", "at least one upstream is needed");
        }
        let mut out = Vec::new();
        for (index, (name, u)) in ups.iter().enumerate() {
            let path = format!("upstreams.{name}");
            if !valid_name(name) {
                self.err(
                    &path,
                    format!("invalid upstream name {name:?}: {NAME_RULE}"),
                );
            }
            if u.endpoints.is_empty() {
                self.err(
                    format!("{path}.endpoints"),
                    "at least one endpoint is needed",
                );
            }
            for (i, ep) in u.endpoints.iter().enumerate() {
                if !valid_endpoint(ep) {
                    self.err(
                        format!("{path}.endpoints[{i}]"),
                        format!("{ep:?} is not HOST:PORT"),
                    );
                }
            }
            let ca = match &u.ca_file {
                Some(f) if !u.tls => {
                    self.err(format!("{path}.ca_file"), "ca_file needs tls: true");
                    self.ca_bundle(&format!("{path}.ca_file"), f)
                }
                Some(f) => self.ca_bundle(&format!("{path}.ca_file"), f),
                None => None,
            };
            let health_check = u.health_check.as_ref().map(|h| {
                if !h.path.starts_with('/') {
                    self.err(format!("{path}.health_check.path"), "must start with /");
                }
                if h.interval.0.is_zero() {
                    self.err(
                        format!("{path}.health_check.interval"),
                        "must be greater than 0",
                    );
                }
                HealthCheckSpec {
                    path: h.path.clone(),
                    interval: h.interval.0,
                    timeout: h.timeout.0.max(Duration::from_millis(1)),
                }
            });
            if u.connect_timeout.0.is_zero() {
                self.err(format!("{path}.connect_timeout"), "must be greater than 0");
            }
            if u.read_timeout.0.is_zero() {
                self.err(format!("{path}.read_timeout"), "must be greater than 0");
            }
            let sni = u.sni.clone().unwrap_or_else(|| {
                u.endpoints
                    .first()
                    .and_then(|e| e.rsplit_once(':'))
                    .map(|(h, _)| h.trim_matches(['[', ']']).to_string())
                    .unwrap_or_default()
            });
            out.push(Arc::new(UpstreamSpec {
                index,
                name: name.clone(),
                endpoints: u.endpoints.clone(),
                tls: u.tls,
                ca,
                sni,
                connect_timeout: u.connect_timeout.0,
                read_timeout: u.read_timeout.0,
                health_check,
            }));
        }
        out
    }

    fn auth(&mut self, a: &raw::AuthConfig) -> AuthSettings {
        let mut providers = Vec::new();
        for (index, (name, p)) in a.providers.iter().enumerate() {
            let path = format!("auth.providers.{name}");
            if !valid_name(name) || name == "none" {
                self.err(
                    &path,
                    format!("invalid provider name {name:?}: {NAME_RULE} (and not \"none\")"),
                );
            }
            let kind = match p {
                ProviderConfig::Jwt(j) => ProviderKind::Jwt(self.jwt(&path, j)),
                ProviderConfig::Introspection(i) => {
                    ProviderKind::Introspection(self.introspection(&path, i))
                }
                ProviderConfig::ApiKey(k) => ProviderKind::ApiKey(self.api_key(&path, k)),
            };
            providers.push(Arc::new(ProviderSpec {
                index,
                name: name.clone(),
                kind,
            }));
        }
        for (field, v) in [
            ("refresh_endpoint", &a.refresh_endpoint),
            ("login_endpoint", &a.login_endpoint),
        ] {
            if let Some(v) = v {
                if !v.starts_with('/') && !v.starts_with("https://") && !v.starts_with("http://") {
                    self.err(
                        format!("auth.{field}"),
                        "must be a path starting with / or a URL",
                    );
                }
            }
        }
        if a.realm.contains('"') || a.realm.contains('\\') {
            self.err("auth.realm", "must not contain quotes or backslashes");
        }
        if a.cache.max_entries == 0 {
            self.err("auth.cache.max_entries", "must be at least 1");
        }
        if a.revocation_ttl.0 < Duration::from_secs(60) {
            self.err("auth.revocation_ttl", "must be at least 1m");
        }
        let max_leeway = providers
            .iter()
            .filter_map(|p| match &p.kind {
                ProviderKind::Jwt(j) => Some(j.leeway),
                _ => None,
            })
            .max()
            .unwrap_or_default();
        AuthSettings {
            realm: a.realm.clone(),
            refresh_endpoint: a.refresh_endpoint.clone(),
            login_endpoint: a.login_endpoint.clone(),
            providers,
            cache: TokenCacheSettings {
                max_entries: a.cache.max_entries,
                max_ttl: a.cache.max_ttl.0,
                negative_ttl: a.cache.negative_ttl.0,
            },
            revocation_ttl: a.revocation_ttl.0,
            max_leeway,
            failure_limit: a.failure_limit.as_ref().map(|f| {
                if f.burst == 0 {
                    self.err("auth.failure_limit.burst", "must be at least 1");
                }
                Arc::new(RatePolicy {
                    index: usize::MAX,
                    name: "auth_failures".into(),
                    rate: f.rate,
                    burst: f.burst,
                    key: LimitKey::ClientIp,
                    scope: LimitScope::Local,
                    limit_header: http::HeaderValue::from(f.burst),
                })
            }),
        }
    }

    fn jwt(&mut self, path: &str, j: &raw::JwtProviderConfig) -> JwtSpec {
        use jsonwebtoken::Algorithm;
        let mut algorithms = Vec::new();
        if j.algorithms.is_empty() {
            self.err(format!("{path}.algorithms"), "list at least one algorithm");
        }
        for (i, a) in j.algorithms.iter().enumerate() {
            if a.eq_ignore_ascii_case("none") {
                self.err(
                    format!("{path}.algorithms[{i}]"),
                    "\"none\" is never accepted: unsigned tokens prove nothing",
                );
                continue;
            }
            match a.parse::<Algorithm>() {
                Ok(alg) => algorithms.push(alg),
                Err(_) => self.err(
                    format!("{path}.algorithms[{i}]"),
                    format!(
                        "unknown algorithm {a:?}: expected HS256/384/512, RS256/384/512, \
                         PS256/384/512, ES256/384 or EdDSA"
                    ),
                ),
            }
        }
        let family = |alg: &Algorithm| KeyFamily::of(*alg);
        let families: HashSet<KeyFamily> = algorithms.iter().map(family).collect();
        let leeway = j.leeway.map_or(Duration::ZERO, |d| d.0);
        if leeway > Duration::from_secs(24 * 3600) {
            self.err(format!("{path}.leeway"), "must be at most 1d");
        }
        let mut keys = Vec::new();
        for (i, k) in j.keys.iter().enumerate() {
            let kpath = format!("{path}.keys[{i}]");
            if let Some(key) = self.static_key(&kpath, k, &families) {
                keys.push(key);
            }
        }
        // Discovery names the key set's URL through the issuer's metadata.
        let jwks_url = match (&j.jwks_url, j.discovery, &j.issuer) {
            (Some(_), true, _) => {
                self.err(
                    format!("{path}.discovery"),
                    "give jwks_url or discovery, not both",
                );
                None
            }
            (None, true, None) => {
                self.err(
                    format!("{path}.discovery"),
                    "discovery needs the provider's issuer",
                );
                None
            }
            (None, true, Some(iss)) => Some(format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            )),
            (url, false, _) => url.clone(),
        };
        if j.keys.is_empty() && jwks_url.is_none() && !j.discovery {
            self.err(
                path,
                "needs static keys, a jwks_url (or discovery), or both",
            );
        }
        let url_path = if j.discovery { "issuer" } else { "jwks_url" };
        if let Some(url) = &jwks_url {
            self.idp_url(&format!("{path}.{url_path}"), url);
            if j.jwks_refresh.0 < Duration::from_secs(1) {
                self.err(format!("{path}.jwks_refresh"), "must be at least 1s");
            }
            // Below a second, a flood of made-up kids would have the gateway hammer the IdP.
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&j.jwks_min_refetch.0)
            {
                self.err(
                    format!("{path}.jwks_min_refetch"),
                    "must be between 1s and 1h",
                );
            }
            if families.contains(&KeyFamily::Hmac) && families.len() == 1 {
                self.err(
                    format!("{path}.jwks_url"),
                    "a JWKS holds public keys; HMAC-only algorithms cannot use it",
                );
            }
        }
        let required_claims = self.claim_rules(&format!("{path}.required_claims"), j);
        let typ = j.typ.as_ref().and_then(|t| {
            let t = t.trim().to_ascii_lowercase();
            let t = t.strip_prefix("application/").unwrap_or(&t).to_string();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                self.err(format!("{path}.typ"), "must be a media type such as at+jwt");
                None
            } else {
                Some(t)
            }
        });
        let ca = match &j.ca_file {
            Some(f) => {
                if !jwks_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
                {
                    self.err(
                        format!("{path}.ca_file"),
                        "ca_file needs an https:// jwks_url (or issuer, with discovery)",
                    );
                }
                self.ca_bundle(&format!("{path}.ca_file"), f)
            }
            None => None,
        };
        let audience = j.audience.clone().map(|a| a.0).unwrap_or_default();
        if audience.is_empty() && required_claims.is_empty() && typ.is_none() {
            self.warn(
                path,
                "accepts any JWT its keys signed, refresh tokens included (RFC 8725 3.11): set \
                 audience, required_claims (simplejwt: token_type: access) or typ",
            );
        }
        let claim = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_string());
        JwtSpec {
            algorithms,
            keys,
            jwks_url,
            discovery: j.discovery,
            jwks_refresh: j.jwks_refresh.0,
            jwks_min_refetch: j.jwks_min_refetch.0,
            issuer: j.issuer.clone(),
            audience,
            leeway,
            subject_claim: claim(&j.subject_claim, "sub"),
            scopes_claim: claim(&j.scopes_claim, "scope"),
            required_claims,
            typ,
            ca,
            dpop: self.dpop(
                path,
                DpopKeys {
                    mode: &j.dpop,
                    algorithms: &j.dpop_algorithms,
                    nonce: j.dpop_nonce,
                },
                j.leeway.map(|d| d.0),
            ),
        }
    }

    /// `dpop`, `dpop_algorithms`, `dpop_nonce` of a jwt or introspection provider.
    fn dpop(&mut self, path: &str, keys: DpopKeys<'_>, leeway: Option<Duration>) -> DpopSpec {
        use jsonwebtoken::Algorithm;
        let mode = match keys.mode.as_deref() {
            None | Some("off") => DpopMode::Off,
            Some("optional") => DpopMode::Optional,
            Some("required") => DpopMode::Required,
            Some(other) => {
                self.err(
                    format!("{path}.dpop"),
                    format!("{other:?}: expected off, optional or required"),
                );
                DpopMode::Off
            }
        };
        let named = keys
            .algorithms
            .clone()
            .unwrap_or_else(|| DEFAULT_DPOP_ALGORITHMS.map(|a| format!("{a:?}")).to_vec());
        if named.is_empty() {
            self.err(
                format!("{path}.dpop_algorithms"),
                "list at least one algorithm",
            );
        }
        let mut algorithms = Vec::new();
        for (i, a) in named.iter().enumerate() {
            match a.parse::<Algorithm>() {
                // A proof is signed by the client's own key pair: a shared secret proves
                // nothing about who holds it.
                Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => self.err(
                    format!("{path}.dpop_algorithms[{i}]"),
                    format!("{a} is symmetric: DPoP proofs use asymmetric keys (RFC 9449 3)"),
                ),
                Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Ok(_) => {}
                Err(_) => self.err(
                    format!("{path}.dpop_algorithms[{i}]"),
                    format!(
                        "unknown algorithm {a:?}: expected ES256/384, EdDSA, PS256/384/512 or \
                         RS256/384/512"
                    ),
                ),
            }
        }
        if mode == DpopMode::Off && (keys.nonce || keys.algorithms.is_some()) {
            self.warn(
                format!("{path}.dpop"),
                "dpop is off: dpop_algorithms and dpop_nonce have no effect",
            );
        }
        let window = leeway.unwrap_or(Duration::from_secs(60));
        if mode != DpopMode::Off && window < Duration::from_secs(5) {
            self.warn(
                format!("{path}.leeway"),
                "DPoP proofs must have an iat within leeway of this clock: under 5s, clients \
                 with a slightly wrong clock are refused",
            );
        }
        let algs = algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        DpopSpec {
            mode,
            algorithms,
            algs: Arc::from(algs),
            window,
            nonce: keys.nonce,
        }
    }

    /// `required_claims`: each a scalar or a non-empty list of scalars.
    fn claim_rules(&mut self, path: &str, j: &raw::JwtProviderConfig) -> Vec<ClaimRule> {
        use serde_yaml::Value as Y;
        let scalar = |v: &Y| -> Option<serde_json::Value> {
            match v {
                Y::String(s) => Some(serde_json::Value::String(s.clone())),
                Y::Bool(b) => Some(serde_json::Value::Bool(*b)),
                Y::Number(n) => serde_json::to_value(n).ok(),
                _ => None,
            }
        };
        let mut rules = Vec::new();
        for (claim, v) in &j.required_claims {
            let cpath = format!("{path}.{claim}");
            if claim.is_empty() {
                self.err(&cpath, "a claim name cannot be empty");
                continue;
            }
            let values: Option<Vec<_>> = match v {
                Y::Sequence(items) if !items.is_empty() => items.iter().map(scalar).collect(),
                Y::Sequence(_) => None,
                one => scalar(one).map(|s| vec![s]),
            };
            match values {
                Some(allowed) => rules.push(ClaimRule {
                    claim: claim.clone(),
                    allowed,
                }),
                None => self.err(
                    &cpath,
                    "expected a string, number or boolean, or a non-empty list of them",
                ),
            }
        }
        rules
    }

    fn static_key(
        &mut self,
        path: &str,
        k: &raw::JwtKeyConfig,
        families: &HashSet<KeyFamily>,
    ) -> Option<StaticKey> {
        let sources = [
            k.secret_env.is_some(),
            k.secret_base64_env.is_some(),
            k.secret_file.is_some(),
            k.public_key_file.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            self.err(
                path,
                "give exactly one of secret_env, secret_base64_env, secret_file, public_key_file",
            );
            return None;
        }
        let material = if let Some(var) = &k.secret_env {
            KeyMaterial::Hmac(self.env_secret(&format!("{path}.secret_env"), var)?)
        } else if let Some(var) = &k.secret_base64_env {
            let p = format!("{path}.secret_base64_env");
            let s = self.env_secret(&p, var)?;
            match base64::engine::general_purpose::STANDARD.decode(s.expose()) {
                Ok(b) if !b.is_empty() => KeyMaterial::Hmac(Secret::new(b)),
                _ => {
                    self.err(p, format!("environment variable {var} is not valid base64"));
                    return None;
                }
            }
        } else if let Some(f) = &k.secret_file {
            let p = format!("{path}.secret_file");
            let bytes = self.read_file(&p, f)?;
            // The file's bytes exactly, as the signer reads them: trimming would make a key
            // that no other implementation shares.
            if bytes.ends_with(b"\n") {
                self.warn(
                    &p,
                    "the file ends with a newline, which is part of the secret; write it with \
                     printf, or use secret_base64_env",
                );
            }
            if bytes.is_empty() {
                self.err(&p, "the file is empty");
                return None;
            }
            KeyMaterial::Hmac(Secret::new(bytes))
        } else {
            let p = format!("{path}.public_key_file");
            let f = k.public_key_file.as_deref().unwrap_or_default();
            let pem = self.read_file(&p, f)?;
            match classify_public_pem(&pem) {
                Some(m) => m,
                None => {
                    self.err(p, "not a PEM RSA, EC (P-256/P-384) or Ed25519 public key");
                    return None;
                }
            }
        };
        if let KeyMaterial::Hmac(secret) = &material {
            if secret.expose().len() < 32 {
                self.warn(
                    path,
                    "an HMAC secret shorter than 32 bytes can be guessed offline (RFC 7518 3.2)",
                );
            }
        }
        let fam = KeyFamily::of_material(&material);
        if !families.contains(&fam) {
            self.err(
                path,
                format!(
                    "this is {} key but no algorithm in the provider's list uses one",
                    fam.describe()
                ),
            );
            return None;
        }
        Some(StaticKey {
            kid: k.kid.clone(),
            material,
        })
    }

    fn introspection(&mut self, path: &str, i: &raw::IntrospectionConfig) -> IntrospectionSpec {
        self.idp_url(&format!("{path}.url"), &i.url);
        let ca = i.ca_file.as_ref().and_then(|f| {
            if !i.url.starts_with("https://") {
                self.err(format!("{path}.ca_file"), "ca_file needs an https:// url");
            }
            self.ca_bundle(&format!("{path}.ca_file"), f)
        });
        let subject_field = match i.subject_field.as_deref() {
            Some("") => {
                self.err(format!("{path}.subject_field"), "cannot be empty");
                "sub".to_string()
            }
            Some(f) => f.to_string(),
            None => "sub".to_string(),
        };
        let secret = match (&i.client_secret_env, &i.client_secret_file) {
            (Some(var), None) => self.env_secret(&format!("{path}.client_secret_env"), var),
            (None, Some(f)) => self
                .read_file(&format!("{path}.client_secret_file"), f)
                .map(|b| Secret::new(trim_newline(b))),
            _ => {
                self.err(
                    path,
                    "give exactly one of client_secret_env, client_secret_file",
                );
                None
            }
        };
        if i.timeout.0.is_zero() {
            self.err(format!("{path}.timeout"), "must be greater than 0");
        }
        if i.max_concurrency == 0 {
            self.err(format!("{path}.max_concurrency"), "must be at least 1");
        }
        IntrospectionSpec {
            url: i.url.clone(),
            client_id: i.client_id.clone(),
            client_secret: secret.unwrap_or_else(|| Secret::new(Vec::new())),
            timeout: i.timeout.0,
            ca,
            subject_field,
            max_concurrency: i.max_concurrency,
            dpop: self.dpop(
                path,
                DpopKeys {
                    mode: &i.dpop,
                    algorithms: &i.dpop_algorithms,
                    nonce: i.dpop_nonce,
                },
                None,
            ),
        }
    }

    fn api_key(&mut self, path: &str, k: &raw::ApiKeyProviderConfig) -> ApiKeySpec {
        let source = match (&k.scheme, &k.header) {
            (Some(s), None) if s.eq_ignore_ascii_case("dpop") => {
                self.err(
                    format!("{path}.scheme"),
                    "DPoP is the scheme of sender-constrained tokens (RFC 9449), not of API keys",
                );
                ApiKeySource::Scheme(s.clone())
            }
            (Some(s), None) if !s.is_empty() && !s.contains(' ') => ApiKeySource::Scheme(s.clone()),
            (None, Some(h)) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => ApiKeySource::Header(name),
                Err(_) => {
                    self.err(
                        format!("{path}.header"),
                        format!("{h:?} is not a header name"),
                    );
                    ApiKeySource::Scheme("Api-Key".into())
                }
            },
            (None, None) => ApiKeySource::Scheme("Api-Key".into()),
            _ => {
                self.err(path, "give either scheme (one word) or header, not both");
                ApiKeySource::Scheme("Api-Key".into())
            }
        };
        let mut keys = Vec::new();
        let mut ids = HashSet::new();
        for (i, e) in k.keys.iter().enumerate() {
            let p = format!("{path}.keys[{i}]");
            if !ids.insert(e.id.clone()) {
                self.err(format!("{p}.id"), format!("duplicate key id {:?}", e.id));
            }
            let digest = hex::decode(e.sha256.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            let Some(sha256) = digest else {
                self.err(
                    format!("{p}.sha256"),
                    "must be the 64-character hex SHA-256 digest of the key",
                );
                continue;
            };
            if e.subject.is_empty() {
                self.err(format!("{p}.subject"), "must not be empty");
            }
            keys.push(ApiKeyEntrySpec {
                id: e.id.clone(),
                sha256,
                subject: e.subject.clone(),
                scopes: e.scopes.clone(),
            });
        }
        if k.keys.is_empty() {
            self.err(format!("{path}.keys"), "list at least one key");
        }
        ApiKeySpec { source, keys }
    }

    fn rate_limits(
        &mut self,
        limits: &BTreeMap<String, raw::RateLimitConfig>,
        have_redis: bool,
    ) -> Vec<Arc<RatePolicy>> {
        let mut out = Vec::new();
        for (index, (name, l)) in limits.iter().enumerate() {
            let path = format!("rate_limits.{name}");
            if !valid_name(name) {
                self.err(&path, format!("invalid policy name {name:?}: {NAME_RULE}"));
            }
            if l.burst == 0 {
                self.err(format!("{path}.burst"), "must be at least 1");
            }
            let key = match l.key.as_str() {
                "client_ip" => LimitKey::ClientIp,
                "subject" => LimitKey::Subject,
                "api_key" => LimitKey::ApiKey,
                other => match other.strip_prefix("header:") {
                    Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                        Ok(name) => LimitKey::Header(name),
                        Err(_) => {
                            self.err(format!("{path}.key"), format!("{h:?} is not a header name"));
                            LimitKey::ClientIp
                        }
                    },
                    None => {
                        self.err(
                            format!("{path}.key"),
                            format!(
                                "unknown key {other:?}: expected client_ip, subject, api_key \
                                 or header:NAME"
                            ),
                        );
                        LimitKey::ClientIp
                    }
                },
            };
            let scope = match l.scope {
                Some(LimitScope::Shared) if !have_redis => {
                    self.err(
                        format!("{path}.scope"),
                        "scope shared needs a redis section",
                    );
                    LimitScope::Local
                }
                Some(s) => s,
                None if have_redis => LimitScope::Shared,
                None => LimitScope::Local,
            };
            out.push(Arc::new(RatePolicy {
                index,
                name: name.as_str().into(),
                rate: l.rate,
                burst: l.burst,
                key,
                scope,
                limit_header: http::HeaderValue::from(l.burst),
            }));
        }
        out
    }

    fn routes(
        &mut self,
        routes: &[raw::RouteConfig],
        upstreams: &[Arc<UpstreamSpec>],
        auth: &AuthSettings,
        limits: &[Arc<RatePolicy>],
    ) -> Vec<Arc<RouteSpec>> {
        if routes.is_empty() {
            self.err("routes", "at least one route is needed");
        }
        let upstream_idx: HashMap<&str, usize> = upstreams
            .iter()
            .map(|u| (u.name.as_str(), u.index))
            .collect();
        let provider_idx: HashMap<&str, usize> = auth
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.index))
            .collect();
        let limit_idx: HashMap<&str, usize> = limits.iter().map(|l| (&*l.name, l.index)).collect();
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (index, r) in routes.iter().enumerate() {
            let path = format!("routes[{index}]");
            if !valid_name(&r.name) || r.name == "unmatched" {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "invalid route name {:?}: {NAME_RULE} (and not \"unmatched\")",
                        r.name
                    ),
                );
            } else if !names.insert(r.name.clone()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate route name {:?}", r.name),
                );
            }
            let path_match = match (&r.path, &r.path_prefix) {
                (Some(p), None) => self
                    .route_path(&format!("{path}.path"), p)
                    .map(PathMatch::Exact),
                (None, Some(p)) => self
                    .route_path(&format!("{path}.path_prefix"), p)
                    .map(PathMatch::Prefix),
                _ => {
                    self.err(&path, "give exactly one of path and path_prefix");
                    None
                }
            };
            let methods = r.methods.as_ref().map(|ms| {
                if ms.is_empty() {
                    self.err(
                        format!("{path}.methods"),
                        "omit methods to allow any; an empty list allows none",
                    );
                }
                ms.iter()
                    .enumerate()
                    .filter_map(|(i, m)| {
                        match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                            Ok(m) => Some(m),
                            Err(_) => {
                                self.err(
                                    format!("{path}.methods[{i}]"),
                                    format!("{m:?} is not an HTTP method"),
                                );
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let host = r.host.as_ref().and_then(|h| {
                let h = h.to_ascii_lowercase();
                let ok = |s: &str| {
                    !s.is_empty()
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                };
                match h.strip_prefix("*.") {
                    Some(rest) if ok(rest) => Some(HostMatch::Suffix(format!(".{rest}"))),
                    None if ok(&h) => Some(HostMatch::Exact(h)),
                    _ => {
                        self.err(
                            format!("{path}.host"),
                            "expected a host name such as api.example.com or *.example.com",
                        );
                        None
                    }
                }
            });
            let resolve_providers = |c: &mut Self, list: &Option<Vec<String>>| -> Vec<usize> {
                match list {
                    None => auth.providers.iter().map(|p| p.index).collect(),
                    Some(names) => names
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| {
                            let idx = provider_idx.get(n.as_str()).copied();
                            if idx.is_none() {
                                c.err(
                                    format!("{path}.auth.providers[{i}]"),
                                    format!("unknown provider {n:?}"),
                                );
                            }
                            idx
                        })
                        .collect(),
                }
            };
            let route_auth = match &r.auth {
                RouteAuthConfig::None => RouteAuth::None,
                RouteAuthConfig::Optional => RouteAuth::Optional {
                    providers: resolve_providers(self, &None),
                },
                RouteAuthConfig::Required {
                    providers, scopes, ..
                } => RouteAuth::Required {
                    providers: resolve_providers(self, providers),
                    scopes: scopes.clone(),
                },
            };
            let (claims, auth_mode) = match &r.auth {
                RouteAuthConfig::Required { rules, .. } => self.auth_rules(&path, rules),
                _ => (Vec::new(), AuthMode::Enforce),
            };
            let (token_cookie, token_query) = match &r.auth {
                RouteAuthConfig::Required { rules, .. } => {
                    (rules.cookie.clone(), rules.query_param.clone())
                }
                _ => (None, None),
            };
            match &route_auth {
                RouteAuth::Optional { providers } | RouteAuth::Required { providers, .. }
                    if providers.is_empty() && auth.providers.is_empty() =>
                {
                    self.err(
                        format!("{path}.auth"),
                        "the route needs authentication but auth.providers is empty \
                         (say auth: none for a public route)",
                    );
                }
                RouteAuth::Required { providers, .. } if providers.is_empty() => {
                    self.err(
                        format!("{path}.auth.providers"),
                        "list at least one provider",
                    );
                }
                _ => {}
            }
            let rate_limits = r
                .rate_limit
                .as_ref()
                .map(|names| {
                    names
                        .0
                        .iter()
                        .enumerate()
                        .filter_map(|(i, n)| {
                            let idx = limit_idx.get(n.as_str()).copied();
                            if idx.is_none() {
                                let p = if names.0.len() == 1 {
                                    format!("{path}.rate_limit")
                                } else {
                                    format!("{path}.rate_limit[{i}]")
                                };
                                self.err(p, format!("unknown rate-limit policy {n:?}"));
                            }
                            idx
                        })
                        .collect()
                })
                .unwrap_or_default();
            if r.deadline.is_some_and(|d| d.0.is_zero()) {
                self.err(format!("{path}.deadline"), "must be greater than 0");
            }
            let cache = r.cache.as_ref().map(|c| {
                if c.ttl.0.is_zero() {
                    self.err(format!("{path}.cache.ttl"), "must be greater than 0");
                }
                let vary = match &c.vary {
                    Some(v) => v.clone(),
                    None if route_auth != RouteAuth::None => {
                        self.err(
                            format!("{path}.cache.vary"),
                            "must be given on a route with auth: [] shares one entry among \
                             every admitted caller, [subject] keeps one per user",
                        );
                        Vec::new()
                    }
                    None => Vec::new(),
                };
                for (i, v) in vary.iter().enumerate() {
                    let ok = v == "subject"
                        || v == "scopes"
                        || http::HeaderName::from_bytes(v.as_bytes()).is_ok();
                    if !ok {
                        self.err(
                            format!("{path}.cache.vary[{i}]"),
                            "expected subject, scopes or a request header name",
                        );
                    }
                }
                RouteCacheSpec {
                    ttl: c.ttl.0,
                    vary: vary.iter().map(|v| v.to_ascii_lowercase()).collect(),
                    stale_while_revalidate: c.stale_while_revalidate.map(|d| d.0),
                    stale_if_error: c.stale_if_error.map(|d| d.0),
                }
            });
            if r.revokes_token && route_auth == RouteAuth::None {
                self.err(format!("{path}.revokes_token"), "needs a route with auth");
            }
            let upstream = match upstream_idx.get(r.upstream.as_str()) {
                Some(i) => *i,
                None => {
                    self.err(
                        format!("{path}.upstream"),
                        format!("unknown upstream {:?}", r.upstream),
                    );
                    0
                }
            };
            let mut response_headers = Vec::new();
            for (name, value) in &r.response_headers {
                match (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    http::HeaderValue::from_str(value),
                ) {
                    (Ok(n), Ok(v)) => response_headers.push((n, v)),
                    _ => self.err(
                        format!("{path}.response_headers.{name}"),
                        "not a valid header name and value",
                    ),
                }
            }
            let Some(path_match) = path_match else {
                continue;
            };
            out.push(Arc::new(RouteSpec {
                index,
                name: r.name.clone(),
                matcher: RouteMatcher {
                    host,
                    path: path_match,
                    methods,
                },
                auth: route_auth,
                rate_limits,
                deadline: r.deadline.map(|d| d.0),
                cache,
                max_query_length: r.max_query_length,
                max_page_size: r.max_page_size,
                revokes_token: r.revokes_token,
                forward_authorization: r.forward_authorization,
                response_headers,
                upstream,
                claims,
                auth_mode,
                token_cookie,
                token_query,
                cors: r.cors.as_ref().and_then(|c| self.cors(&path, c)),
            }));
        }
        out
    }

    /// A route path must already be in the normal form requests are matched in; otherwise it
    /// could never match and the mistake would be silent.
    fn route_path(&mut self, path: &str, p: &str) -> Option<String> {
        if !p.starts_with('/') {
            self.err(path, "must start with /");
            return None;
        }
        match normalize_path(p.as_bytes()) {
            Ok(n) if n == p => Some(p.to_string()),
            Ok(n) => {
                self.err(
                    path,
                    format!("{p:?} is not in normal form and would never match; write {n:?}"),
                );
                None
            }
            Err(_) => {
                self.err(path, format!("{p:?} is not a valid path"));
                None
            }
        }
    }
}

fn trim_newline(mut b: Vec<u8>) -> Vec<u8> {
    while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        b.pop();
    }
    b
}

fn valid_endpoint(ep: &str) -> bool {
    let Some((host, port)) = ep.rsplit_once(':') else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
}

fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Which kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl KeyFamily {
    pub fn of(alg: jsonwebtoken::Algorithm) -> Self {
        use jsonwebtoken::Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => KeyFamily::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => KeyFamily::Rsa,
            ES256 | ES384 => KeyFamily::Ec,
            EdDSA => KeyFamily::Ed,
        }
    }

    pub fn of_material(m: &KeyMaterial) -> Self {
        match m {
            KeyMaterial::Hmac(_) => KeyFamily::Hmac,
            KeyMaterial::RsaPem(_) => KeyFamily::Rsa,
            KeyMaterial::EcPem(_) => KeyFamily::Ec,
            KeyMaterial::EdPem(_) => KeyFamily::Ed,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyFamily::Hmac => "an HMAC secret",
            KeyFamily::Rsa => "an RSA",
            KeyFamily::Ec => "an EC",
            KeyFamily::Ed => "an Ed25519",
        }
    }
}

/// Tells a PEM public key's family by trying jsonwebtoken's own parsers.
fn classify_public_pem(pem: &[u8]) -> Option<KeyMaterial> {
    use jsonwebtoken::DecodingKey;
    let bytes: Arc<[u8]> = pem.into();
    if DecodingKey::from_rsa_pem(pem).is_ok() {
        Some(KeyMaterial::RsaPem(bytes))
    } else if DecodingKey::from_ec_pem(pem).is_ok() {
        Some(KeyMaterial::EcPem(bytes))
    } else if DecodingKey::from_ed_pem(pem).is_ok() {
        Some(KeyMaterial::EdPem(bytes))
    } else {
        None
    }
}

/// The DPoP keys of a provider, as written.
struct DpopKeys<'a> {
    mode: &'a Option<String>,
    algorithms: &'a Option<Vec<String>>,
    nonce: bool,
}
