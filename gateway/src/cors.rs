//! CORS per route (`cors`): preflights answered by the gateway before authentication (a
//! browser sends them without credentials, so an auth gateway would otherwise refuse every
//! cross-origin call), and the response headers on every answer to an allowed origin, the
//! gateway's own 401/403/429/5xx included, so a browser app can read why it was refused.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

pub const ORIGIN: HeaderName = http::header::ORIGIN;
const ACAO: HeaderName = http::header::ACCESS_CONTROL_ALLOW_ORIGIN;
const ACAC: HeaderName = http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS;
const ACEH: HeaderName = http::header::ACCESS_CONTROL_EXPOSE_HEADERS;
pub const ACAM: HeaderName = http::header::ACCESS_CONTROL_ALLOW_METHODS;
pub const ACAH: HeaderName = http::header::ACCESS_CONTROL_ALLOW_HEADERS;
pub const ACMA: HeaderName = http::header::ACCESS_CONTROL_MAX_AGE;

/// A route's compiled `cors`: values rendered once, origins lowercased.
#[derive(Debug, Clone, PartialEq)]
pub struct CorsPolicy {
    /// `None`: any origin (`["*"]`, never with credentials).
    pub origins: Option<Vec<String>>,
    pub allow_methods: HeaderValue,
    pub allow_headers: Option<HeaderValue>,
    pub expose_headers: Option<HeaderValue>,
    pub allow_credentials: bool,
    pub max_age: HeaderValue,
}

/// What a preflight needs answered: the route's CORS headers (see [`CorsPolicy::preflight`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Preflight {
    pub allow_methods: HeaderValue,
    pub allow_headers: Option<HeaderValue>,
    pub max_age: HeaderValue,
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`; the method
/// the browser asks about, which is what the route is matched with.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(ORIGIN) {
        return None;
    }
    let m = headers.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// Whether `origin` is the request's own (`scheme://host[:port]` naming the `Host` it was
/// sent to; a default port may be left out on either side).
pub fn same_origin(origin: &HeaderValue, host: Option<&str>) -> bool {
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return false,
    };
    let strip = |a: &str| a.strip_suffix(default).unwrap_or(a).to_ascii_lowercase();
    strip(authority) == strip(host)
}

impl CorsPolicy {
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(o) = origin.to_str() else {
            return false;
        };
        match &self.origins {
            None => o != "null",
            Some(list) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
        }
    }

    pub fn preflight(&self) -> Preflight {
        Preflight {
            allow_methods: self.allow_methods.clone(),
            allow_headers: self.allow_headers.clone(),
            max_age: self.max_age.clone(),
        }
    }

    /// The CORS headers of an answer on this route. An allowed `origin` is echoed (never `*`),
    /// so credentials work; every answer varies on `Origin`, so a shared cache never serves
    /// one origin's answer to another; and the route's policy is the only one: an upstream's
    /// own CORS headers never reach an origin the route does not allow.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        h.append(http::header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin else {
            for name in [&ACAO, &ACAC, &ACEH] {
                h.remove(name);
            }
            return;
        };
        h.insert(ACAO, origin.clone());
        if self.allow_credentials {
            h.insert(ACAC, HeaderValue::from_static("true"));
        }
        if let Some(v) = &self.expose_headers {
            h.insert(ACEH, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: Option<&[&str]>) -> CorsPolicy {
        CorsPolicy {
            origins: origins.map(|o| o.iter().map(|s| s.to_string()).collect()),
            allow_methods: HeaderValue::from_static("GET, POST"),
            allow_headers: None,
            expose_headers: Some(HeaderValue::from_static("X-Request-Id")),
            allow_credentials: true,
            max_age: HeaderValue::from_static("600"),
        }
    }

    #[test]
    fn origins_match_exactly_without_case() {
        let p = policy(Some(&["https://app.example.com"]));
        let o = |s: &'static str| HeaderValue::from_static(s);
        assert!(p.allows(&o("https://app.example.com")));
        assert!(p.allows(&o("HTTPS://APP.example.com")));
        assert!(!p.allows(&o("https://app.example.com.evil.test")));
        assert!(!p.allows(&o("http://app.example.com")));
        assert!(!p.allows(&o("null")));
        let any = policy(None);
        assert!(any.allows(&o("https://x.test")));
        assert!(!any.allows(&o("null")));
    }

    #[test]
    fn same_origin_compares_the_authority_with_default_ports() {
        let o = |s: &'static str| HeaderValue::from_static(s);
        assert!(same_origin(&o("https://gw.test"), Some("gw.test")));
        assert!(same_origin(&o("https://gw.test"), Some("GW.test:443")));
        assert!(same_origin(
            &o("http://127.0.0.1:8080"),
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin(
            &o("http://127.0.0.1:8081"),
            Some("127.0.0.1:8080")
        ));
        assert!(!same_origin(&o("https://evil.test"), Some("gw.test")));
        assert!(!same_origin(&o("null"), Some("gw.test")));
        assert!(!same_origin(&o("https://gw.test"), None));
    }

    #[test]
    fn preflights_are_options_with_origin_and_a_method() {
        let mut h = HeaderMap::new();
        assert_eq!(preflight_method(&Method::OPTIONS, &h), None);
        h.insert(ORIGIN, HeaderValue::from_static("https://a.test"));
        assert_eq!(preflight_method(&Method::OPTIONS, &h), None);
        h.insert(
            http::header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("DELETE"),
        );
        assert_eq!(preflight_method(&Method::OPTIONS, &h), Some(Method::DELETE));
        assert_eq!(preflight_method(&Method::GET, &h), None);
    }

    #[test]
    fn answers_echo_the_origin_and_vary_on_it() {
        let mut h = HeaderMap::new();
        h.insert(http::header::VARY, HeaderValue::from_static("Accept"));
        let origin = HeaderValue::from_static("https://app.example.com");
        policy(Some(&["https://app.example.com"])).decorate(Some(&origin), &mut h);
        assert_eq!(h[ACAO], "https://app.example.com");
        assert_eq!(h[ACAC], "true");
        assert_eq!(h[ACEH], "X-Request-Id");
        let vary: Vec<_> = h.get_all(http::header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Origin"]);
        // Another origin: no CORS headers, the upstream's own removed, still Vary: Origin.
        let mut h = HeaderMap::new();
        h.insert(ACAO, HeaderValue::from_static("*"));
        policy(Some(&["https://app.example.com"])).decorate(None, &mut h);
        assert!(h.get(ACAO).is_none());
        assert_eq!(h[http::header::VARY], "Origin");
    }
}
