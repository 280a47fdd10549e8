//! Route selection: first match wins over host, method and the normalised path.

use crate::config::model::{HostMatch, PathMatch, RouteMatcher, RouteSpec};
use http::Method;
use std::sync::Arc;

/// The compiled route table of one configuration version.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Arc<RouteSpec>>,
    /// Whether any route looks at the host, so the common case skips extracting it.
    uses_host: bool,
}

impl Router {
    pub fn new(routes: Vec<Arc<RouteSpec>>) -> Self {
        let uses_host = routes.iter().any(|r| r.matcher.host.is_some());
        Router { routes, uses_host }
    }

    /// `path` must already be normalised; `host` is the request's Host (any case, maybe a port).
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Arc<RouteSpec>> {
        let host = if self.uses_host {
            host.map(host_only)
        } else {
            None
        };
        self.routes
            .iter()
            .find(|r| matches(&r.matcher, method, host.as_deref(), path))
    }
}

fn matches(m: &RouteMatcher, method: &Method, host: Option<&str>, path: &str) -> bool {
    let path_ok = match &m.path {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
    };
    if !path_ok {
        return false;
    }
    if let Some(methods) = &m.methods {
        // HEAD is GET without a body: a route that serves GET serves HEAD too.
        let ok = methods.iter().any(|allowed| {
            allowed == method || (*method == Method::HEAD && *allowed == Method::GET)
        });
        if !ok {
            return false;
        }
    }
    match (&m.host, host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(HostMatch::Exact(want)), Some(h)) => h == want,
        (Some(HostMatch::Suffix(suffix)), Some(h)) => {
            h.len() > suffix.len() && h.ends_with(suffix.as_str())
        }
    }
}

/// Lowercase host without port or trailing dot.
fn host_only(host: &str) -> String {
    let h = if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::RouteAuth;

    fn route(
        name: &str,
        path: PathMatch,
        methods: Option<Vec<Method>>,
        host: Option<HostMatch>,
    ) -> Arc<RouteSpec> {
        Arc::new(RouteSpec {
            index: 0,
            name: name.into(),
            matcher: RouteMatcher {
                host,
                path,
                methods,
            },
            auth: RouteAuth::None,
            rate_limits: vec![],
            deadline: None,
            cache: None,
            max_query_length: None,
            max_page_size: None,
            revokes_token: false,
            forward_authorization: true,
            response_headers: vec![],
            upstream: 0,
            claims: Vec::new(),
            auth_mode: crate::config::model::AuthMode::Enforce,
            token_cookie: None,
            token_query: None,
            cors: None,
        })
    }

    fn router() -> Router {
        Router::new(vec![
            route(
                "admin-host",
                PathMatch::Prefix("/".into()),
                None,
                Some(HostMatch::Exact("admin.example.com".into())),
            ),
            route(
                "tenant",
                PathMatch::Prefix("/t/".into()),
                None,
                Some(HostMatch::Suffix(".tenants.example.com".into())),
            ),
            route(
                "logout",
                PathMatch::Exact("/api/auth/logout/".into()),
                Some(vec![Method::POST]),
                None,
            ),
            route(
                "search",
                PathMatch::Prefix("/api/products/search".into()),
                Some(vec![Method::GET]),
                None,
            ),
            route("api", PathMatch::Prefix("/api/".into()), None, None),
        ])
    }

    fn name<'a>(r: &'a Router, m: Method, host: Option<&str>, p: &str) -> Option<&'a str> {
        r.find(&m, host, p).map(|r| r.name.as_str())
    }

    #[test]
    fn first_match_wins() {
        let r = router();
        assert_eq!(
            name(&r, Method::POST, None, "/api/auth/logout/"),
            Some("logout")
        );
        assert_eq!(
            name(&r, Method::GET, None, "/api/auth/logout/"),
            Some("api")
        );
        assert_eq!(
            name(&r, Method::GET, None, "/api/products/search/"),
            Some("search")
        );
        assert_eq!(
            name(&r, Method::HEAD, None, "/api/products/search/"),
            Some("search")
        );
        assert_eq!(
            name(&r, Method::POST, None, "/api/products/search/"),
            Some("api")
        );
        assert_eq!(name(&r, Method::GET, None, "/other"), None);
        assert_eq!(name(&r, Method::GET, None, "/api"), None);
    }

    #[test]
    fn host_matching_ignores_case_port_and_trailing_dot() {
        let r = router();
        assert_eq!(
            name(&r, Method::GET, Some("Admin.Example.com:8080"), "/x"),
            Some("admin-host")
        );
        assert_eq!(
            name(&r, Method::GET, Some("admin.example.com."), "/x"),
            Some("admin-host")
        );
        assert_eq!(name(&r, Method::GET, Some("evil.com"), "/x"), None);
        assert_eq!(
            name(&r, Method::GET, Some("a.tenants.example.com"), "/t/1"),
            Some("tenant")
        );
        assert_eq!(
            name(&r, Method::GET, Some("tenants.example.com"), "/t/1"),
            None
        );
        assert_eq!(
            name(&r, Method::GET, Some("[::1]:8080"), "/api/x"),
            Some("api")
        );
    }
}
