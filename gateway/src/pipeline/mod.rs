//! Admission: route -> request limits -> authenticate -> limit, on plain inputs (method, path,
//! headers, client address, time), never on the pingora session. Its one output that lets a
//! request reach an upstream, [`Admitted`], can only be built here.

pub mod limits;

use crate::answer::{RateLimitInfo, Rejection};
use crate::auth::cache::{Tier, TokenHash};
use crate::auth::{Identity, Outcome};
use crate::config::model::RouteSpec;
use crate::deadline::{self, Deadline};
use crate::path::normalize_path_with;
use crate::ratelimit::RequestKeys;
use crate::snapshot::Snapshot;
use http::{HeaderMap, Method};
use std::borrow::Cow;
use std::net::IpAddr;
use std::time::Instant;

/// What admission looks at.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub method: &'a Method,
    /// Length of the request target as sent (path and query), for the request-line limit.
    pub target_len: usize,
    /// The path as sent, before normalisation.
    pub path: &'a [u8],
    pub query: Option<&'a str>,
    /// The authority or `Host`, for host routes.
    pub host: Option<&'a str>,
    /// `http` or `https` as the client used it (a trusted proxy's `X-Forwarded-Proto`), for
    /// the URI a DPoP proof names.
    pub scheme: &'static str,
    pub headers: &'a HeaderMap,
    /// The client as `trusted_proxies` decide it, as limits key it (IPv6 reduced to
    /// `server.client_ipv6_prefix`, see [`crate::ratelimit::limit_address`]).
    pub client_ip: Option<IpAddr>,
    pub arrived: Instant,
}

/// What authentication left behind, for the access log, metrics and a logout's revocation.
#[derive(Debug, Clone, Default)]
pub struct AuthTrace {
    /// `None` on public routes and for anonymous requests on optional ones.
    pub outcome: Option<Outcome>,
    /// The fixed reason of a denial (the access log's `reason`).
    pub denial: Option<crate::auth::Denial>,
    pub tier: Option<Tier>,
    pub token_hash: Option<TokenHash>,
}

/// Proof that routing, request limits, authentication and rate limits accepted the request.
/// Its fields are private and it has no public constructor: nothing else can make one, and
/// forwarding takes one.
#[derive(Debug)]
pub struct Admitted {
    route: usize,
    identity: Identity,
    deadline: Option<Deadline>,
    rate_limit: Option<RateLimitInfo>,
    /// Every policy checked, for the draft-11 `RateLimit` header.
    limit_states: Vec<RateLimitInfo>,
    auth: AuthTrace,
    rewritten_path: Option<String>,
}

impl Admitted {
    /// Index into the snapshot's routes.
    pub fn route(&self) -> usize {
        self.route
    }
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
    /// The tightest policy's state, for the answer's `RateLimit-*` headers.
    pub fn rate_limit(&self) -> Option<&RateLimitInfo> {
        self.rate_limit.as_ref()
    }
    pub fn limit_states(&self) -> &[RateLimitInfo] {
        &self.limit_states
    }
    pub fn auth(&self) -> &AuthTrace {
        &self.auth
    }
    /// The normalised path, when it differs from what the client sent: what the upstream gets.
    pub fn rewritten_path(&self) -> Option<&str> {
        self.rewritten_path.as_deref()
    }
}

/// A request refused at admission, with what is known of it for logs and metrics.
#[derive(Debug)]
pub struct Denied {
    pub rejection: Rejection,
    /// The route, when one matched before the refusal.
    pub route: Option<usize>,
    pub auth: AuthTrace,
    /// The policies checked before the refusal (the refusing one included).
    pub limit_states: Box<[RateLimitInfo]>,
}

impl Denied {
    /// The policy that refused it, for a 429.
    pub fn limited_by(&self) -> Option<&str> {
        match &self.rejection {
            Rejection::RateLimited(info) => Some(&info.policy),
            _ => None,
        }
    }

    fn before_routing(rejection: Rejection) -> Self {
        Denied {
            rejection,
            route: None,
            auth: AuthTrace::default(),
            limit_states: Box::default(),
        }
    }
}

/// Decides one request against one configuration version.
pub async fn admit(snapshot: &Snapshot, req: &Inbound<'_>) -> Result<Admitted, Denied> {
    limits::framing(req).map_err(Denied::before_routing)?;
    limits::singletons(req.headers, snapshot.auth.key_headers()).map_err(Denied::before_routing)?;
    let path = normalize_path_with(req.path, snapshot.config.server.encoded_slashes)
        .map_err(|e| Denied::before_routing(Rejection::BadRequest(e.message())))?;
    // A CORS preflight is matched by the method it asks about and answered here, before any
    // credential is looked for (browsers send none with it).
    if let Some(asked) = crate::cors::preflight_method(req.method, req.headers) {
        let found = snapshot.router.find(&asked, req.host, &path);
        if let Some((spec, cors)) = found.and_then(|s| Some((s, s.cors.as_ref()?))) {
            let allowed = req
                .headers
                .get(crate::cors::ORIGIN)
                .is_some_and(|o| cors.allows(o));
            return Err(Denied {
                route: Some(spec.index),
                ..Denied::before_routing(if allowed {
                    Rejection::Preflight(cors.preflight())
                } else {
                    Rejection::OriginNotAllowed
                })
            });
        }
    }
    let spec = snapshot
        .router
        .find(req.method, req.host, &path)
        .ok_or_else(|| Denied::before_routing(Rejection::NotFound))?;
    let route = spec.index;
    let denied = |rejection: Rejection, auth: AuthTrace| Denied {
        rejection,
        route: Some(route),
        auth,
        limit_states: Box::default(),
    };
    let mut states = Vec::new();
    limits::route(req, spec, snapshot.config.server.max_request_body)
        .map_err(|r| denied(r, AuthTrace::default()))?;
    let deadline = Deadline::for_request(
        spec.deadline,
        req.headers.get(&deadline::CLIENT_HEADER),
        req.arrived,
    );
    // Policies keyed by what is known now (client address, a header) are spent first: a
    // request that then fails authentication has paid for its attempt.
    let phases = &snapshot.routes[route].limits;
    let before = match limit(
        snapshot,
        req,
        None,
        &phases.before_auth,
        &phases.before_auth_counters,
        &mut states,
    )
    .await
    {
        Ok(b) => b,
        Err(d) => {
            return Err(Denied {
                limit_states: states.into_boxed_slice(),
                ..denied(d, AuthTrace::default())
            })
        }
    };
    // An address that keeps presenting bad credentials is answered before anything looks at
    // the next one (no verification, introspection or Redis lookup).
    let sourced = token_from_sources(spec, req.headers, req.query);
    if cross_site_cookie(spec, &sourced, req.headers, req.host) {
        return Err(Denied {
            limit_states: states.into_boxed_slice(),
            ..denied(Rejection::OriginNotAllowed, AuthTrace::default())
        });
    }
    let fallback = sourced.as_ref().map(|(t, _)| t.as_ref());
    // A shadow route makes every decision and enforces none, the failure limit included.
    let shadow = spec.auth_mode == crate::config::model::AuthMode::Shadow;
    let failures = snapshot.limiters.failures.as_ref().filter(|_| !shadow);
    if let Some(info) = failures
        .filter(|_| fallback.is_some() || presents_credentials(snapshot, req.headers))
        .and_then(|f| f.blocked(req.client_ip))
    {
        if let Some(c) = &phases.failures_counter {
            c.inc();
        }
        let denial = crate::auth::Denial::TooManyFailures;
        snapshot.auth.count_denial_without_provider(denial);
        let trace = AuthTrace {
            denial: Some(denial),
            ..AuthTrace::default()
        };
        return Err(Denied {
            limit_states: states.into_boxed_slice(),
            ..denied(Rejection::RateLimited(info), trace)
        });
    }
    let decision = snapshot
        .auth
        .authenticate(
            &spec.auth,
            &spec.claims,
            &crate::auth::Request {
                headers: req.headers,
                fallback,
                target: crate::auth::dpop::Target {
                    method: req.method.as_str(),
                    scheme: req.scheme,
                    host: req.host,
                    path: req.path,
                },
            },
        )
        .await;
    let auth = AuthTrace {
        outcome: decision.outcome,
        denial: decision.denial,
        tier: decision.tier,
        token_hash: decision.token_hash,
    };
    if let (Some(counters), Some(outcome)) = (&snapshot.routes[route].shadow, decision.outcome) {
        counters[outcome as usize].inc();
    }
    let identity = match decision.result {
        Ok(identity) => identity,
        // Forwarded as it would not have been: with the identity only when the credential
        // was valid (its scopes or claims refused it), else anonymous.
        Err(_) if shadow => decision
            .valid
            .map_or(Identity::Anonymous, Identity::Authenticated),
        Err(e) => {
            // A presented credential refused (invalid or expired) spends the failure budget.
            if e.is_refused_credential() {
                if let Some(f) = failures {
                    f.failed(req.client_ip);
                }
            }
            return Err(Denied {
                limit_states: states.into_boxed_slice(),
                ..denied(e.into(), auth)
            });
        }
    };
    let after = match limit(
        snapshot,
        req,
        identity.principal(),
        &phases.after_auth,
        &phases.after_auth_counters,
        &mut states,
    )
    .await
    {
        Ok(a) => a,
        Err(d) => {
            return Err(Denied {
                limit_states: states.into_boxed_slice(),
                ..denied(d, auth)
            })
        }
    };
    // The tightest of both phases goes back in the answer's headers.
    let rate_limit = match (before, after) {
        (Some(b), Some(a)) => Some(if a.remaining < b.remaining { a } else { b }),
        (b, a) => b.or(a),
    };
    Ok(Admitted {
        route,
        identity,
        deadline,
        rate_limit,
        limit_states: states,
        auth,
        rewritten_path: match path {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        },
    })
}

/// The route's other token sources, when `Authorization` is absent: its cookie, then its
/// query parameter; `true` when it came from the cookie.
pub fn token_from_sources<'r>(
    spec: &RouteSpec,
    headers: &'r HeaderMap,
    query: Option<&'r str>,
) -> Option<(Cow<'r, str>, bool)> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return None;
    }
    let cookie = spec
        .token_cookie
        .as_deref()
        .and_then(|c| crate::auth::sources::from_cookie(headers, c));
    match cookie {
        Some(c) => Some((Cow::Borrowed(c), true)),
        None => spec
            .token_query
            .as_deref()
            .and_then(|q| crate::auth::sources::from_query(query, q))
            .map(|t| (t, false)),
    }
}

/// A cookie is sent by the browser whichever site made the request: a cookie token counts only
/// from its own origin or one the route's `cors` allows (no cross-site WebSocket hijacking or
/// CSRF with it). Requests without `Origin` are not from a cross-site page.
pub fn cross_site_cookie(
    spec: &RouteSpec,
    sourced: &Option<(Cow<'_, str>, bool)>,
    headers: &HeaderMap,
    host: Option<&str>,
) -> bool {
    let (Some((_, true)), Some(origin)) = (sourced, headers.get(crate::cors::ORIGIN)) else {
        return false;
    };
    !(spec.cors.as_ref().is_some_and(|c| c.allows(origin))
        || crate::cors::same_origin(origin, host))
}

/// Whether the request carries something authentication would verify.
fn presents_credentials(snapshot: &Snapshot, headers: &HeaderMap) -> bool {
    headers.contains_key(http::header::AUTHORIZATION)
        || snapshot
            .auth
            .key_headers()
            .iter()
            .any(|h| headers.contains_key(h))
}

/// Spends one of each of `policies`: the tightest state, or the one that refused (counted).
async fn limit(
    snapshot: &Snapshot,
    req: &Inbound<'_>,
    principal: Option<&crate::auth::Principal>,
    policies: &[usize],
    counters: &[prometheus::IntCounter],
    seen: &mut Vec<RateLimitInfo>,
) -> Result<Option<RateLimitInfo>, Rejection> {
    if policies.is_empty() {
        return Ok(None);
    }
    let keys = RequestKeys {
        client_ip: req.client_ip,
        principal,
        headers: req.headers,
    };
    snapshot
        .limiters
        .check(policies, &keys, seen)
        .await
        .map_err(|(pos, info)| {
            if let Some(c) = counters.get(pos) {
                c.inc();
            }
            Rejection::RateLimited(info)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::snapshot::Reusable;
    use http::HeaderValue;
    use std::collections::HashMap;
    use std::path::Path;

    const SECRET: &str = "pipeline-test-secret-of-32-bytes!!";

    fn snapshot() -> Snapshot {
        let yaml = r#"
upstreams: { u: { endpoints: ["127.0.0.1:9"] } }
auth:
  providers:
    p: { type: jwt, algorithms: [HS256], keys: [{ secret_env: S }], subject_claim: user_id, required_claims: { token_type: access } }
rate_limits:
  two: { rate: 1/m, burst: 2, key: client_ip }
routes:
  - { name: open, path_prefix: /open/, auth: none, rate_limit: two, upstream: u }
  - { name: private, path_prefix: /api/, auth: required, max_query_length: 8, upstream: u }
"#;
        let env: HashMap<String, String> = [("S".to_string(), SECRET.to_string())].into();
        let config = crate::config::load_str(yaml, Path::new("."), &env).expect("config");
        Snapshot::build(config, 1, &Metrics::new(), &Reusable::default()).expect("snapshot")
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }

    // Mirrors `admit` (async, where the lint does not look), so it returns what it returns.
    #[allow(clippy::result_large_err)]
    fn admit_now(snap: &Snapshot, target: &str, headers: &HeaderMap) -> Result<Admitted, Denied> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let req = Inbound {
            method: &Method::GET,
            target_len: target.len(),
            path: path.as_bytes(),
            query,
            host: Some("gw.test"),
            scheme: "http",
            headers,
            client_ip: Some("192.0.2.1".parse().expect("ip")),
            arrived: Instant::now(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(admit(snap, &req))
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {t}")).expect("value"),
        );
        h
    }

    #[test]
    fn an_access_token_is_admitted_with_its_identity_and_normalised_path() {
        let snap = snapshot();
        let t = token(
            serde_json::json!({"user_id": 7, "exp": 9_999_999_999u64, "token_type": "access"}),
        );
        let a = admit_now(&snap, "/api/./users/", &bearer(&t)).expect("admitted");
        assert_eq!(snap.routes[a.route()].spec.name, "private");
        assert_eq!(
            a.identity().principal().map(|p| p.subject.as_str()),
            Some("7")
        );
        assert_eq!(a.rewritten_path(), Some("/api/users/"));
        assert_eq!(a.auth().outcome, Some(Outcome::Ok));
    }

    #[test]
    fn denials_say_why_and_which_route() {
        let snap = snapshot();
        let refresh = token(
            serde_json::json!({"user_id": 7, "exp": 9_999_999_999u64, "token_type": "refresh"}),
        );
        let d = admit_now(&snap, "/api/x", &bearer(&refresh)).expect_err("refresh token");
        assert!(matches!(d.rejection, Rejection::InvalidToken { .. }));
        assert_eq!(d.route, Some(1));
        assert_eq!(d.auth.outcome, Some(Outcome::InvalidToken));
        let d = admit_now(&snap, "/api/x", &HeaderMap::new()).expect_err("no token");
        assert_eq!(d.rejection, Rejection::MissingToken);
        let d = admit_now(&snap, "/nowhere", &HeaderMap::new()).expect_err("no route");
        assert_eq!((d.rejection, d.route), (Rejection::NotFound, None));
        let d = admit_now(&snap, "/api/x?much-too-long", &HeaderMap::new()).expect_err("query");
        assert!(matches!(d.rejection, Rejection::BadRequest(_)));
    }

    #[test]
    fn a_spent_limit_names_its_policy() {
        let snap = snapshot();
        let h = HeaderMap::new();
        for _ in 0..2 {
            let a = admit_now(&snap, "/open/x", &h).expect("within the burst");
            assert_eq!(a.rate_limit().map(|r| &*r.policy), Some("two"));
        }
        let d = admit_now(&snap, "/open/x", &h).expect_err("burst spent");
        assert_eq!(d.limited_by(), Some("two"));
        assert!(matches!(d.rejection, Rejection::RateLimited(_)));
    }
}
