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

    /// The headers every answer to an allowed `origin` carries. The origin itself is echoed
    /// (never `*`), so credentials work and caches key on it (`Vary: Origin`).
    pub fn decorate(&self, origin: &HeaderValue, h: &mut HeaderMap) {
        h.insert(ACAO, origin.clone());
        h.append(http::header::VARY, HeaderValue::from_static("Origin"));
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
        policy(Some(&["https://app.example.com"])).decorate(&origin, &mut h);
        assert_eq!(h[ACAO], "https://app.example.com");
        assert_eq!(h[ACAC], "true");
        assert_eq!(h[ACEH], "X-Request-Id");
        let vary: Vec<_> = h.get_all(http::header::VARY).iter().collect();
        assert_eq!(vary, ["Accept", "Origin"]);
    }
}
