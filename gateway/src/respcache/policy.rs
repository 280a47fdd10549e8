//! What may be cached and for how long: cache keys and `Cache-Control`/`Vary` rules.

use crate::auth::Principal;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::time::Duration;

pub type CacheKey = [u8; 32];

/// Statuses that may be stored (RFC 9111's heuristically cacheable set, narrowed).
pub fn storable_status(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 301 | 404)
}

/// The query string with parameters sorted by name; repeated names keep their order.
pub fn sorted_query(query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    // A stable sort by name only, so `tag=a&tag=b` keeps a before b.
    params.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    params.join("&")
}

fn name_of(param: &str) -> &str {
    param.split_once('=').map_or(param, |(n, _)| n)
}

/// Stands for "no identity" where a `vary` value would name one; no subject or scope list can
/// equal it (both are printable ASCII).
const ANONYMOUS: &str = "\u{0}anonymous";

/// What a route's `vary` list reads from a request. `subject` is the provider and the subject
/// together (user "1" of one provider is not user "1" of another); every value of a header
/// counts, as the upstream sees them all.
pub fn vary_values(
    vary: &[String],
    principal: Option<&Principal>,
    headers: &HeaderMap,
) -> Vec<String> {
    vary.iter()
        .map(|v| match v.as_str() {
            "subject" => principal.map_or_else(
                || ANONYMOUS.to_string(),
                |p| format!("{}\u{0}{}", p.provider, p.subject),
            ),
            "scopes" => principal.map_or_else(
                || ANONYMOUS.to_string(),
                |p| {
                    let mut s = p.scopes.to_vec();
                    s.sort();
                    s.join(" ")
                },
            ),
            header => {
                let mut out = String::new();
                for (i, h) in headers.get_all(header).iter().enumerate() {
                    if i > 0 {
                        out.push('\u{0}');
                    }
                    out.push_str(&String::from_utf8_lossy(h.as_bytes()));
                }
                out
            }
        })
        .collect()
}

/// The request's host as a cache sees it: lowercased, without the scheme's default port.
pub fn cache_host(host: Option<&str>, tls: bool) -> String {
    let host = host.unwrap_or_default().to_ascii_lowercase();
    let default_port = if tls { ":443" } else { ":80" };
    match host.strip_suffix(default_port) {
        Some(h) => h.to_string(),
        None => host,
    }
}

/// What a request is known as to the cache, besides its route's `vary` values.
pub struct KeyParts<'a> {
    pub route: &'a str,
    pub upstream: &'a str,
    /// From [`cache_host`]: DRF builds `next` links from `Host`, and host routes serve tenants.
    pub host: &'a str,
    /// Anonymous and authenticated callers never share an entry.
    pub authenticated: bool,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// The primary key: route and upstream, host, whether the caller is authenticated, method,
/// normalised path, sorted query, route `vary` values.
pub fn primary_key(parts: &KeyParts<'_>, vary: &[String]) -> CacheKey {
    let mut h = Sha256::new();
    let who = if parts.authenticated { "auth" } else { "anon" };
    // GET and HEAD share entries: HEAD is GET without the body.
    for part in [
        parts.route,
        parts.upstream,
        parts.host,
        who,
        "GET",
        parts.path,
        &sorted_query(parts.query),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for v in vary {
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

/// The full key for an entry whose upstream answered with `Vary: names`.
pub fn secondary_key(
    primary: &CacheKey,
    names: &[http::HeaderName],
    headers: &HeaderMap,
) -> CacheKey {
    if names.is_empty() {
        return *primary;
    }
    let mut h = Sha256::new();
    h.update(primary);
    for n in names {
        h.update(n.as_str().as_bytes());
        h.update([0]);
        for v in headers.get_all(n) {
            h.update(v.as_bytes());
            h.update([1]);
        }
        h.update([0]);
    }
    h.finalize().into()
}

/// How the upstream's answer may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storability {
    No(&'static str),
    /// Fresh for this long, varying on these request headers.
    Yes {
        ttl: Duration,
        vary: Vec<http::HeaderName>,
    },
}

/// Applies the upstream's `Cache-Control`, `Vary` and `Set-Cookie` to the route's TTL.
pub fn storability(status: u16, headers: &HeaderMap, route_ttl: Duration) -> Storability {
    if !storable_status(status) {
        return Storability::No("status");
    }
    if headers.contains_key(http::header::SET_COOKIE) {
        return Storability::No("set-cookie");
    }
    let mut ttl = route_ttl;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = value.to_str() else { continue };
        let mut max_age = None;
        let mut s_maxage = None;
        for directive in v.split(',') {
            let d = directive.trim().to_ascii_lowercase();
            let (name, arg) = d
                .split_once('=')
                .map_or((d.as_str(), None), |(n, a)| (n, Some(a.trim_matches('"'))));
            match name {
                "no-store" => return Storability::No("no-store"),
                "private" => return Storability::No("private"),
                "no-cache" => return Storability::No("no-cache"),
                "max-age" => max_age = arg.and_then(|a| a.parse::<u64>().ok()),
                "s-maxage" => s_maxage = arg.and_then(|a| a.parse::<u64>().ok()),
                _ => {}
            }
        }
        if let Some(secs) = s_maxage.or(max_age) {
            ttl = ttl.min(Duration::from_secs(secs));
        }
    }
    if ttl.is_zero() {
        return Storability::No("max-age=0");
    }
    let mut vary = Vec::new();
    for value in headers.get_all(http::header::VARY) {
        let Ok(v) = value.to_str() else {
            return Storability::No("vary");
        };
        for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Storability::No("vary: *");
            }
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) if !vary.contains(&n) => vary.push(n),
                Ok(_) => {}
                Err(_) => return Storability::No("vary"),
            }
        }
    }
    vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Storability::Yes { ttl, vary }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::test_header_map as hm;

    #[test]
    fn query_order_does_not_matter_but_repeats_keep_theirs() {
        assert_eq!(
            sorted_query(Some("q=yoga&category=fitness")),
            sorted_query(Some("category=fitness&q=yoga"))
        );
        assert_eq!(sorted_query(Some("tag=b&x=1&tag=a")), "tag=b&tag=a&x=1");
        assert_ne!(
            sorted_query(Some("tag=a&tag=b")),
            sorted_query(Some("tag=b&tag=a"))
        );
        assert_eq!(sorted_query(None), "");
        let parts = |route, host, authenticated, query| KeyParts {
            route,
            upstream: "u",
            host,
            authenticated,
            path: "/s",
            query,
        };
        let k1 = primary_key(&parts("r", "api", true, Some("q=1&c=2")), &[]);
        let k2 = primary_key(&parts("r", "api", true, Some("c=2&q=1")), &[]);
        assert_eq!(k1, k2);
        assert_ne!(
            k1,
            primary_key(&parts("r", "api", true, Some("c=2&q=1")), &["alice".into()])
        );
        assert_ne!(
            k1,
            primary_key(&parts("other", "api", true, Some("c=2&q=1")), &[])
        );
        // Another host, or an anonymous caller, never shares the entry.
        assert_ne!(
            k1,
            primary_key(&parts("r", "evil.example", true, Some("c=2&q=1")), &[])
        );
        assert_ne!(
            k1,
            primary_key(&parts("r", "api", false, Some("c=2&q=1")), &[])
        );
    }

    #[test]
    fn hosts_lose_case_and_default_ports() {
        assert_eq!(
            cache_host(Some("API.Example.com:80"), false),
            "api.example.com"
        );
        assert_eq!(
            cache_host(Some("api.example.com:443"), true),
            "api.example.com"
        );
        assert_eq!(
            cache_host(Some("api.example.com:8080"), false),
            "api.example.com:8080"
        );
        assert_eq!(
            cache_host(Some("api.example.com:443"), false),
            "api.example.com:443"
        );
        assert_eq!(cache_host(None, false), "");
    }

    #[test]
    fn vary_values_keep_providers_and_anonymity_apart() {
        let mut a = Principal::for_tests("1", &[]);
        a.provider = "jwt".into();
        let mut b = Principal::for_tests("1", &[]);
        b.provider = "knox".into();
        let subject = ["subject".to_string()];
        let scopes = ["scopes".to_string()];
        let h = hm(&[]);
        assert_ne!(
            vary_values(&subject, Some(&a), &h),
            vary_values(&subject, Some(&b), &h)
        );
        assert_ne!(
            vary_values(&scopes, Some(&a), &h),
            vary_values(&scopes, None, &h)
        );
        // Every value of a header counts.
        let one = hm(&[("accept-language", "en")]);
        let mut two = hm(&[("accept-language", "en")]);
        two.append("accept-language", http::HeaderValue::from_static("fr"));
        let lang = ["accept-language".to_string()];
        assert_ne!(
            vary_values(&lang, None, &one),
            vary_values(&lang, None, &two)
        );
    }

    #[test]
    fn cache_control_and_vary() {
        let ttl = Duration::from_secs(60);
        assert_eq!(
            storability(200, &hm(&[]), ttl),
            Storability::Yes { ttl, vary: vec![] }
        );
        assert_eq!(storability(500, &hm(&[]), ttl), Storability::No("status"));
        assert_eq!(
            storability(200, &hm(&[("cache-control", "no-store")]), ttl),
            Storability::No("no-store")
        );
        assert_eq!(
            storability(200, &hm(&[("cache-control", "private, max-age=60")]), ttl),
            Storability::No("private")
        );
        assert_eq!(
            storability(200, &hm(&[("cache-control", "public, max-age=10")]), ttl),
            Storability::Yes {
                ttl: Duration::from_secs(10),
                vary: vec![]
            }
        );
        assert_eq!(
            storability(200, &hm(&[("cache-control", "max-age=0")]), ttl),
            Storability::No("max-age=0")
        );
        assert_eq!(
            storability(200, &hm(&[("vary", "*")]), ttl),
            Storability::No("vary: *")
        );
        assert_eq!(
            storability(200, &hm(&[("set-cookie", "a=b")]), ttl),
            Storability::No("set-cookie")
        );
        match storability(404, &hm(&[("vary", "Accept-Language, accept")]), ttl) {
            Storability::Yes { vary, .. } => assert_eq!(
                vary,
                vec![http::header::ACCEPT, http::header::ACCEPT_LANGUAGE]
            ),
            other => panic!("{other:?}"),
        }
    }
}
