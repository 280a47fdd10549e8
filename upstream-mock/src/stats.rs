//! Request counters and the last request seen per route, so tests can assert what the
//! upstream actually received (cache hits that never arrived, headers the gateway
//! added or stripped on non-echo routes, ...). `/__mock/*` requests are not recorded:
//! looking at the counters must not change them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard, PoisonError},
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::respond;

/// Key under which requests that matched no route are counted.
pub const UNMATCHED: &str = "(unmatched)";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    total: u64,
    by_route: HashMap<String, u64>,
    by_path: HashMap<String, u64>,
    last: HashMap<String, LastRequest>,
}

impl Stats {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a handful of map operations that cannot panic halfway in a
        // way that matters to a test counter, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request under `route` ("METHOD /pattern") and its path.
    pub fn record(&self, route: String, last: LastRequest) {
        let mut inner = self.lock();
        inner.total += 1;
        *inner.by_path.entry(last.path.clone()).or_default() += 1;
        *inner.by_route.entry(route.clone()).or_default() += 1;
        inner.last.insert(route, last);
    }

    /// `{"total", "by_route", "by_path"}` with keys sorted for stable output.
    pub fn snapshot(&self) -> Value {
        let inner = self.lock();
        let sorted = |m: &HashMap<String, u64>| {
            m.iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        json!({
            "total": inner.total,
            "by_route": sorted(&inner.by_route),
            "by_path": sorted(&inner.by_path),
        })
    }

    pub fn last(&self, route: &str) -> Option<LastRequest> {
        self.lock().last.get(route).cloned()
    }

    /// Zeroes the counters and forgets the last requests.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

/// "METHOD /route/{pattern}" for a request, as used in `by_route` and `/__mock/last`.
pub fn route_key(method: &str, pattern: Option<&str>) -> String {
    format!("{method} {}", pattern.unwrap_or(UNMATCHED))
}

/// Middleware: records the request on arrival (before any delay), so a test can see
/// that a slow request reached the upstream even if the gateway gave up on it.
pub async fn record(
    State(state): State<std::sync::Arc<crate::app::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if !(path == "/__mock" || path.starts_with("/__mock/")) {
        let pattern = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let key = route_key(req.method().as_str(), pattern);
        state.stats.record(
            key,
            LastRequest {
                method: req.method().to_string(),
                path: path.to_owned(),
                query: req.uri().query().map(str::to_owned),
                headers: respond::header_pairs(req.headers()),
            },
        );
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(path: &str) -> LastRequest {
        LastRequest {
            method: "GET".into(),
            path: path.into(),
            query: None,
            headers: vec![("x-a".into(), "1".into())],
        }
    }

    #[test]
    fn counts_by_route_and_path_and_resets() {
        let s = Stats::default();
        let route = route_key("GET", Some("/api/users/{id}/profile/"));
        s.record(route.clone(), last("/api/users/1/profile/"));
        s.record(route.clone(), last("/api/users/2/profile/"));
        s.record(route_key("GET", None), last("/nope"));
        let snap = s.snapshot();
        assert_eq!(snap["total"], 3);
        assert_eq!(snap["by_route"]["GET /api/users/{id}/profile/"], 2);
        assert_eq!(snap["by_route"]["GET (unmatched)"], 1);
        assert_eq!(snap["by_path"]["/api/users/2/profile/"], 1);
        assert_eq!(
            s.last(&route).map(|l| l.path),
            Some("/api/users/2/profile/".into())
        );
        s.reset();
        assert_eq!(
            s.snapshot(),
            json!({"total": 0, "by_route": {}, "by_path": {}})
        );
        assert_eq!(s.last(&route), None);
    }
}
