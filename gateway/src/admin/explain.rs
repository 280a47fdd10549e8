//! `POST /admin/explain`: the decision the gateway would make for a described request, made by
//! the same steps as a real one (routing, token sources, the provider chain, limits, cache
//! key), with nothing forwarded, no limit spent and nothing counted. Tokens and secrets in
//! the description are never echoed: the answer names outcomes, codes and hashes.

use crate::answer::Rejection;
use crate::auth::{Identity, Outcome};
use crate::ratelimit::RequestKeys;
use crate::respcache::policy;
use crate::snapshot::Snapshot;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    #[serde(default = "get")]
    method: String,
    path: String,
    #[serde(default)]
    host: Option<String>,
    /// `{"Name": "value"}` or `{"Name": ["v1", "v2"]}`.
    #[serde(default)]
    headers: BTreeMap<String, OneOrMany>,
    /// The client address limits are keyed by (default: none).
    #[serde(default)]
    client_ip: Option<std::net::IpAddr>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn get() -> String {
    "GET".into()
}

/// The explanation, or why the description could not be read.
pub async fn explain(snapshot: &Snapshot, req: ExplainRequest) -> Result<Value, &'static str> {
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|_| "method is not a method")?;
    let mut headers = HeaderMap::new();
    for (name, values) in &req.headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| "a header name is invalid")?;
        let values = match values {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for v in values {
            let v = HeaderValue::from_str(v).map_err(|_| "a header value is invalid")?;
            headers.append(name.clone(), v);
        }
    }
    let (raw_path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    if !raw_path.starts_with('/') {
        return Err("path must start with /");
    }
    let path = match crate::path::normalize_path_with(
        raw_path.as_bytes(),
        snapshot.config.server.encoded_slashes,
    ) {
        Ok(p) => p,
        Err(e) => return Ok(json!({"route": null, "status": 400, "error": e.message()})),
    };
    let host = req.host.as_deref();
    let Some(spec) = snapshot.router.find(&method, host, &path) else {
        return Ok(json!({"route": null, "status": 404, "error": "not_found"}));
    };
    let runtime = &snapshot.routes[spec.index];
    let shadow = runtime.shadow.is_some();

    let fallback = crate::pipeline::token_from_sources(spec, &headers, query);
    let scheme = match snapshot.config.server.tls {
        Some(_) => "https",
        None => "http",
    };
    let (decision, row) = snapshot
        .auth
        .decide(
            &spec.auth,
            &spec.claims,
            &crate::auth::Request {
                headers: &headers,
                fallback: fallback.as_ref().map(|(t, _)| t.as_ref()),
                target: crate::auth::dpop::Target {
                    method: method.as_str(),
                    scheme,
                    host,
                    path: raw_path.as_bytes(),
                },
            },
        )
        .await;
    let (identity, refusal) = match decision.result {
        Ok(identity) => (identity, None),
        Err(e) if shadow => (
            decision
                .valid
                .clone()
                .map_or(Identity::Anonymous, Identity::Authenticated),
            Some(Rejection::from(e)),
        ),
        Err(e) => (Identity::Anonymous, Some(Rejection::from(e))),
    };
    let shown = identity.principal().or(decision.valid.as_deref());
    let auth = json!({
        "outcome": decision.outcome.map(Outcome::as_str),
        "provider": row.and_then(|r| snapshot.auth.provider_name(r)),
        "reason": decision.denial.map(|d| d.as_str()),
        "subject": shown.map(|p| p.subject.as_str()),
        "scopes": shown.map(|p| p.scopes.to_vec()),
        "token_cache": decision.tier.map(|t| t.as_str()),
    });

    let keys = RequestKeys {
        client_ip: req.client_ip.map(|ip| {
            crate::ratelimit::limit_address(ip, snapshot.config.server.client_ipv6_prefix)
        }),
        principal: identity.principal(),
        headers: &headers,
    };
    let peeks = snapshot.limiters.peek(&spec.rate_limits, &keys).await;
    // In the order admission spends them: policies keyed before authentication, then after.
    let spent = |before_auth: bool| {
        peeks
            .iter()
            .zip(&spec.rate_limits)
            .any(|(p, i)| p.remaining == 0 && runtime.limits.before_auth.contains(i) == before_auth)
    };
    let cross_site_cookie = crate::pipeline::cross_site_cookie(spec, &fallback, &headers, host);
    let rate_limits: Vec<Value> = peeks
        .iter()
        .map(|p| {
            json!({"policy": &*p.policy, "limit": p.limit, "remaining": p.remaining,
                   "keyed_by": p.keyed_by, "shared": p.shared})
        })
        .collect();

    let cache = spec.cache.as_ref().map(|c| {
        let principal = identity.principal();
        let vary = policy::vary_values(&c.vary, principal, &headers);
        let query = match &spec.token_query {
            Some(name) => query.and_then(|q| crate::auth::sources::strip_query(q, name)),
            None => query.map(std::borrow::Cow::Borrowed),
        };
        let host = policy::cache_host(host, false);
        let key = policy::primary_key(
            &policy::KeyParts {
                route: &spec.name,
                upstream: &runtime.upstream.spec.name,
                host: &host,
                authenticated: principal.is_some(),
                path: &path,
                query: query.as_deref(),
            },
            &vary,
        );
        json!({"key": hex::encode(key),
               "hit": snapshot.response_cache.lookup(&key, &headers).is_some()})
    });

    // An address that spent `auth.failure_limit` is refused before any verification.
    let ip = keys.client_ip;
    let blocked = !shadow
        && (fallback.is_some() || headers.contains_key(http::header::AUTHORIZATION))
        && snapshot
            .limiters
            .failures
            .as_ref()
            .is_some_and(|f| f.blocked(ip).is_some());
    let (status, error) = match &refusal {
        _ if spent(true) || blocked => (429, Some("rate_limited")),
        _ if cross_site_cookie => (403, Some("forbidden")),
        Some(r) if !shadow => (r.status(), Some(r.code())),
        _ if spent(false) => (429, Some("rate_limited")),
        _ => (200, None),
    };
    Ok(json!({
        "route": spec.name,
        "mode": if shadow { "shadow" } else { "enforce" },
        "status": status,
        "error": error,
        "forwarded": status == 200,
        "auth": auth,
        "rate_limits": rate_limits,
        "failure_limit_blocked": blocked,
        "cache": cache,
        "upstream": runtime.upstream.spec.name,
    }))
}
