//! Authorization an operator can roll out: a fixed `reason` on every denial, in the access
//! log and in `authgate_auth_denials_total`.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sha2::Digest;

const SECRET: &str = "authz-test-secret-of-at-least-32-bytes";

fn config(mock: &Mock) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ kid: k1, secret_env: JWT_SECRET }}]
      issuer: https://issuer
      audience: [api]
      leeway: 0s
      required_claims: {{ token_type: access }}
      typ: at+jwt
    keys:
      type: api_key
      scheme: Api-Key
      keys:
        - {{ id: ci, sha256: "{ci}", subject: "service:ci", scopes: [] }}
  failure_limit: {{ rate: 1/m, burst: 30 }}
routes:
  - {{ name: admin, path_prefix: /echo/admin/, auth: {{ providers: [jwt, keys], scopes: [admin] }}, upstream: lms }}
  - {{ name: api, path_prefix: /echo/, auth: {{ providers: [jwt, keys] }}, upstream: lms }}
"#,
        mock = mock.addr,
        ci = hex::encode(sha2::Sha256::digest(b"ci-key")),
    )
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "42", "iss": "https://issuer", "aud": "api", "token_type": "access", "exp": now() + 600, "jti": "j1"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// An HS256 token with `typ: at+jwt`, the provider's type.
fn jwt(secret: &str, kid: &str, alg: Algorithm, extra: Value) -> String {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = Some(kid.into());
    h.typ = Some("at+jwt".into());
    jsonwebtoken::encode(
        &h,
        &claims(extra),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[test]
fn every_denial_has_a_fixed_reason_in_the_log_and_the_metrics() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock), &[("JWT_SECRET", SECRET)]);
    let good = jwt(SECRET, "k1", Algorithm::HS256, json!({}));
    let revoked = jwt(SECRET, "k1", Algorithm::HS256, json!({"jti": "gone"}));
    let r = client()
        .post(gw.admin_url("/admin/revoke"))
        .json(&json!({"jti": "gone"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let cases: Vec<(&str, String, &str, u16)> = vec![
        ("malformed", "Bearer a.b.c".into(), "/echo/x", 401),
        (
            "bad_signature",
            format!(
                "Bearer {}",
                jwt(
                    "another-secret-of-at-least-32-bytes!",
                    "k1",
                    Algorithm::HS256,
                    json!({})
                )
            ),
            "/echo/x",
            401,
        ),
        (
            "alg_not_allowed",
            format!("Bearer {}", jwt(SECRET, "k1", Algorithm::HS512, json!({}))),
            "/echo/x",
            401,
        ),
        (
            "unknown_kid",
            format!("Bearer {}", jwt(SECRET, "k9", Algorithm::HS256, json!({}))),
            "/echo/x",
            401,
        ),
        (
            "expired",
            format!(
                "Bearer {}",
                jwt(SECRET, "k1", Algorithm::HS256, json!({"exp": now() - 60}))
            ),
            "/echo/x",
            401,
        ),
        (
            "not_yet_valid",
            format!(
                "Bearer {}",
                jwt(SECRET, "k1", Algorithm::HS256, json!({"nbf": now() + 600}))
            ),
            "/echo/x",
            401,
        ),
        (
            "wrong_issuer",
            format!(
                "Bearer {}",
                jwt(
                    SECRET,
                    "k1",
                    Algorithm::HS256,
                    json!({"iss": "https://other"})
                )
            ),
            "/echo/x",
            401,
        ),
        (
            "wrong_audience",
            format!(
                "Bearer {}",
                jwt(SECRET, "k1", Algorithm::HS256, json!({"aud": "other"}))
            ),
            "/echo/x",
            401,
        ),
        (
            "claim_mismatch",
            format!(
                "Bearer {}",
                jwt(
                    SECRET,
                    "k1",
                    Algorithm::HS256,
                    json!({"token_type": "refresh"})
                )
            ),
            "/echo/x",
            401,
        ),
        (
            "typ_mismatch",
            format!(
                "Bearer {}",
                sign(Algorithm::HS256, SECRET, Some("k1"), &claims(json!({})))
            ),
            "/echo/x",
            401,
        ),
        ("revoked", format!("Bearer {revoked}"), "/echo/x", 401),
        ("unknown_key", "Api-Key wrong-key".into(), "/echo/x", 401),
        (
            "missing_scope",
            format!("Bearer {good}"),
            "/echo/admin/x",
            403,
        ),
    ];
    for (reason, authorization, path, status) in &cases {
        let r = client()
            .get(gw.url(path))
            .header("Authorization", authorization)
            .header("X-Request-Id", *reason)
            .send()
            .unwrap();
        assert_eq!(r.status(), *status, "{reason}");
        let body: Value = r.json().unwrap();
        // The human text stays human, and names no key.
        let message = body["message"].as_str().unwrap_or_default();
        assert!(!message.contains(SECRET), "{reason}: {message}");
    }
    let ok = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(&good)
        .header("X-Request-Id", "fine")
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);

    // Spend the failure budget: then answered unverified, as too_many_failures.
    let junk = |i: usize| {
        format!(
            "Bearer {}",
            jwt(
                "junk-secret-of-at-least-32-bytes!!",
                "k1",
                Algorithm::HS256,
                json!({"jti": format!("x{i}")})
            )
        )
    };
    let mut limited = None;
    for i in 0..40 {
        let r = client()
            .get(gw.url("/echo/x"))
            .header("Authorization", junk(i))
            .header("X-Request-Id", format!("flood-{i}"))
            .send()
            .unwrap();
        if r.status() == 429 {
            limited = Some(format!("flood-{i}"));
            break;
        }
    }
    let limited = limited.expect("the failure limit answers 429");

    let metrics = gw.metrics();
    let reasons: Vec<(&str, &str)> = cases
        .iter()
        .map(|(reason, authorization, ..)| {
            let provider = if authorization.starts_with("Api-Key") {
                "keys"
            } else {
                "jwt"
            };
            (provider, *reason)
        })
        .collect();
    for (provider, reason) in &reasons {
        assert!(
            metric(
                &metrics,
                "authgate_auth_denials_total",
                &[("provider", provider), ("reason", reason)]
            ) >= 1.0,
            "{provider}/{reason}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "authgate_auth_denials_total",
            &[("provider", "none"), ("reason", "too_many_failures")]
        ),
        1.0
    );
    // Every series exists from the start, so a dashboard's rate() never starts from nothing.
    assert!(
        metrics.contains(r#"authgate_auth_denials_total{provider="jwt",reason="dpop_invalid"} 0"#)
    );

    wait_until("access lines", std::time::Duration::from_secs(5), || {
        gw.log_lines()
            .iter()
            .any(|l| l["request_id"] == limited.as_str())
    });
    let lines = gw.log_lines();
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["kind"] == "access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}"))
            .clone()
    };
    for (reason, ..) in &cases {
        assert_eq!(line(reason)["reason"], *reason);
    }
    assert_eq!(line("fine")["reason"], Value::Null);
    assert_eq!(line(&limited)["reason"], "too_many_failures");
}

#[test]
fn draft_11_ratelimit_fields_on_every_answer_of_a_limited_route() {
    let mock = Mock::start("m");
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      issuer: https://issuer
rate_limits:
  ip: {{ rate: 1/s, burst: 100, key: client_ip }}
  user: {{ rate: 1/m, burst: 3, key: subject }}
routes:
  - name: api
    path_prefix: /echo/
    auth: required
    rate_limit: [user, ip]
    cache: {{ ttl: 60s, vary: [subject] }}
    upstream: lms
"#,
        mock = mock.addr
    );
    let gw = Gateway::start(&yaml, &[("JWT_SECRET", SECRET)]);
    let token = sign(Algorithm::HS256, SECRET, None, &claims(json!({})));
    let get = |auth: Option<&str>| {
        let mut rq = client().get(gw.url("/echo/x"));
        if let Some(t) = auth {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().unwrap();
        let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
        (
            r.status().as_u16(),
            h("ratelimit-policy"),
            h("ratelimit"),
            h("x-cache"),
        )
    };
    let policy = Some(r#""user";q=3;w=180, "ip";q=100;w=100"#.to_string());
    // The upstream's answer, then a cache hit with this request's own values.
    let (status, p, state, cache) = get(Some(&token));
    assert_eq!((status, cache.as_deref()), (200, Some("MISS")));
    assert_eq!(p, policy);
    assert_eq!(state.as_deref(), Some(r#""user";r=2;t=60, "ip";r=99;t=1"#));
    let (status, p, state, cache) = get(Some(&token));
    assert_eq!((status, cache.as_deref()), (200, Some("HIT")));
    assert_eq!(p, policy);
    assert_eq!(state.as_deref(), Some(r#""user";r=1;t=120, "ip";r=98;t=2"#));
    // The gateway's own 401: only the policy spent before authentication has a state.
    let (status, p, state, _) = get(None);
    assert_eq!(status, 401);
    assert_eq!(p, policy);
    assert_eq!(state.as_deref(), Some(r#""ip";r=97;t=3"#));
    // And its 429.
    let _ = get(Some(&token));
    let (status, p, state, _) = get(Some(&token));
    assert_eq!(status, 429);
    assert_eq!(p, policy);
    let state = state.unwrap();
    assert!(state.starts_with(r#""user";r=0;t="#), "{state}");
    assert!(state.contains(r#", "ip";r=95;"#), "{state}");
}

fn rules_config(mock: &Mock, redis: Option<&Redis>) -> String {
    let redis = redis.map_or(String::new(), |r| {
        format!("redis: {{ url: \"{}\" }}\n", r.url())
    });
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
{redis}upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      issuer: https://issuer
    knox:
      type: introspection
      url: http://{mock}/api/auth/introspect/
      client_id: authgate
      client_secret_env: INTROSPECTION_SECRET
routes:
  - name: staff
    path_prefix: /echo/staff/
    auth:
      providers: [jwt, knox]
      claims:
        is_staff: true
        realm_access.roles: [lms-admin, lms-owner]
  - name: tenant
    path_prefix: /echo/tenant/
    auth:
      providers: [jwt, knox]
      claims: {{ tenant: acme, level: 2 }}
    upstream: lms
  - name: trial
    path_prefix: /echo/trial/
    auth:
      providers: [jwt]
      scopes: [write]
      claims: {{ tenant: acme }}
      mode: shadow
    upstream: lms
  - {{ name: api, path_prefix: /echo/, auth: {{ providers: [jwt, knox] }}, upstream: lms }}
"#,
        mock = mock.addr
    )
    .replace(
        "        realm_access.roles: [lms-admin, lms-owner]\n",
        "        realm_access.roles: [lms-admin, lms-owner]\n    upstream: lms\n",
    )
}

fn status_and_body(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let mut body: Value = r.json().unwrap_or(Value::Null);
    body["_challenge"] = json!(challenge);
    (status, body)
}

#[test]
fn claim_rules_hold_on_fresh_and_cached_identities_in_both_tiers() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let env = [
        ("JWT_SECRET", SECRET),
        ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
    ];
    let a = Gateway::start(&rules_config(&mock, Some(&redis)), &env);
    let b = Gateway::start(&rules_config(&mock, Some(&redis)), &env);
    let token = |extra: Value| sign(Algorithm::HS256, SECRET, None, &claims(extra));
    let admin = token(
        json!({"is_staff": true, "realm_access": {"roles": ["user", "lms-admin"]}, "tenant": "acme", "level": 2.0}),
    );
    let user = token(
        json!({"is_staff": true, "realm_access": {"roles": ["user"]}, "tenant": "acme", "level": 2}),
    );
    let not_staff = token(json!({"is_staff": false, "realm_access": {"roles": ["lms-owner"]}}));
    let other_tenant = token(json!({"tenant": "globex", "level": 2}));

    // Seen first on a route without rules: cached there, with the claims the provider's rules
    // need, so the cached identity is judged like a fresh one.
    for t in [&admin, &user, &not_staff, &other_tenant] {
        assert_eq!(status_and_body(&a, "/echo/x", t).0, 200);
    }
    for (gw, tier) in [(&a, "local"), (&b, "redis")] {
        let (status, _) = status_and_body(gw, "/echo/staff/x", &admin);
        assert_eq!(status, 200, "{tier}");
        let (status, body) = status_and_body(gw, "/echo/staff/x", &user);
        assert_eq!(
            (status, &body["error"], &body["claim"]),
            (403, &json!("forbidden"), &json!("realm_access.roles")),
            "{tier}: {body}"
        );
        assert_eq!(body["_challenge"], r#"Bearer realm="authgate""#, "{body}");
        let (status, body) = status_and_body(gw, "/echo/staff/x", &not_staff);
        assert_eq!(
            (status, &body["claim"]),
            (403, &json!("is_staff")),
            "{tier}: {body}"
        );
        // Numbers by value (2 == 2.0).
        assert_eq!(
            status_and_body(gw, "/echo/tenant/x", &admin).0,
            200,
            "{tier}"
        );
        assert_eq!(
            status_and_body(gw, "/echo/tenant/x", &user).0,
            200,
            "{tier}"
        );
        let (status, body) = status_and_body(gw, "/echo/tenant/x", &other_tenant);
        assert_eq!(
            (status, &body["claim"]),
            (403, &json!("tenant")),
            "{tier}: {body}"
        );
    }
    let mb = b.metrics();
    assert!(
        metric(
            &mb,
            "authgate_token_cache_total",
            &[("tier", "redis"), ("result", "hit")]
        ) >= 3.0
    );
    assert!(
        metric(
            &mb,
            "authgate_auth_total",
            &[("provider", "jwt"), ("outcome", "forbidden")]
        ) >= 3.0
    );
    assert!(
        metric(
            &mb,
            "authgate_auth_denials_total",
            &[("provider", "jwt"), ("reason", "claim_mismatch")]
        ) >= 3.0
    );

    // Opaque tokens: the rules read the introspection answer.
    let opaque = |extra: Value| -> String {
        let r: Value = client()
            .post(mock.url("/__mock/opaque"))
            .json(&json!({"sub": "7", "extra": extra}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    };
    let acme = opaque(json!({"tenant": "acme", "level": 2}));
    let globex = opaque(json!({"tenant": "globex", "level": 2}));
    assert_eq!(status_and_body(&a, "/echo/tenant/x", &acme).0, 200);
    assert_eq!(
        status_and_body(&a, "/echo/tenant/x", &acme).0,
        200,
        "cached"
    );
    assert_eq!(
        status_and_body(&b, "/echo/tenant/x", &acme).0,
        200,
        "from redis"
    );
    assert_eq!(status_and_body(&a, "/echo/tenant/x", &globex).0, 403);
    assert_eq!(status_and_body(&a, "/echo/staff/x", &acme).0, 403);
}

#[test]
fn shadow_mode_decides_counts_and_logs_but_forwards() {
    let mock = Mock::start("m");
    let env = [
        ("JWT_SECRET", SECRET),
        ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
    ];
    let gw = Gateway::start(&rules_config(&mock, None), &env);
    let token = |extra: Value| sign(Algorithm::HS256, SECRET, None, &claims(extra));
    let good = token(json!({"tenant": "acme", "scope": "write"}));
    let no_scope = token(json!({"tenant": "acme", "scope": "read"}));
    let wrong_tenant = token(json!({"tenant": "globex", "scope": "write"}));
    let forged = sign(
        Algorithm::HS256,
        "not-the-secret-of-at-least-32-bytes",
        None,
        &claims(json!({})),
    );
    let expired = token(json!({"exp": now() - 60}));
    let send = |auth: Option<&str>, id: &str| {
        let mut rq = client()
            .get(gw.url("/echo/trial/x"))
            .header("X-Request-Id", id);
        if let Some(t) = auth {
            rq = rq.bearer_auth(t);
        }
        let r = rq.send().unwrap();
        assert_eq!(r.status(), 200, "{id}: shadow never refuses");
        let v: Value = r.json().unwrap();
        echo_header(&v, "x-auth-subject")
    };
    // Identity headers only for a valid identity, whatever its scopes or claims.
    assert_eq!(send(Some(&good), "s-ok").as_deref(), Some("42"));
    assert_eq!(send(Some(&no_scope), "s-scope").as_deref(), Some("42"));
    assert_eq!(send(Some(&wrong_tenant), "s-claim").as_deref(), Some("42"));
    assert_eq!(send(Some(&forged), "s-forged"), None);
    assert_eq!(send(Some(&expired), "s-expired"), None);
    assert_eq!(send(None, "s-missing"), None);
    assert_eq!(mock.count("GET /echo"), 6);

    let m = gw.metrics();
    for (outcome, n) in [
        ("ok", 1.0),
        ("insufficient_scope", 1.0),
        ("forbidden", 1.0),
        ("invalid_token", 1.0),
        ("token_expired", 1.0),
        ("missing_token", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "authgate_auth_shadow_total",
                &[("route", "trial"), ("outcome", outcome)]
            ),
            n,
            "{outcome}"
        );
    }
    wait_until("access lines", std::time::Duration::from_secs(5), || {
        gw.log_lines()
            .iter()
            .any(|l| l["request_id"] == "s-missing")
    });
    let lines = gw.log_lines();
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap()
            .clone()
    };
    for (id, auth, reason) in [
        ("s-ok", "ok", Value::Null),
        ("s-scope", "insufficient_scope", json!("missing_scope")),
        ("s-claim", "forbidden", json!("claim_mismatch")),
        ("s-forged", "invalid_token", json!("bad_signature")),
        ("s-expired", "token_expired", json!("expired")),
    ] {
        let l = line(id);
        assert_eq!(
            (l["status"].as_u64(), &l["auth"], &l["reason"], &l["shadow"]),
            (Some(200), &json!(auth), &reason, &json!(true)),
            "{id}: {l}"
        );
    }
    // An enforcing route of the same file refuses the same token.
    assert_eq!(status_and_body(&gw, "/echo/tenant/x", &wrong_tenant).0, 403);
    let l = gw.log_lines();
    assert!(l
        .iter()
        .filter(|l| l["kind"] == "access")
        .all(|l| l["shadow"] == json!(l["route"] == "trial")));
}

fn sources_config(mock: &Mock) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      issuer: https://issuer
routes:
  - name: cached
    path_prefix: /echo/cached/
    auth: {{ providers: [jwt], cookie: access_token, query_param: access_token }}
    cache: {{ ttl: 60s, vary: [subject] }}
    upstream: lms
  - name: ws
    path_prefix: /ws
    auth: {{ providers: [jwt], query_param: access_token }}
    upstream: lms
  - name: browser
    path_prefix: /echo/
    auth: {{ providers: [jwt], cookie: access_token, query_param: access_token }}
    upstream: lms
"#,
        mock = mock.addr
    )
}

#[test]
fn tokens_from_a_cookie_or_query_parameter_never_reach_the_upstream() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&sources_config(&mock), &[("JWT_SECRET", SECRET)]);
    let user = |sub: &str, jti: &str| {
        sign(
            Algorithm::HS256,
            SECRET,
            None,
            &claims(json!({"sub": sub, "jti": jti})),
        )
    };
    let (one, two, three) = (user("1", "a"), user("2", "b"), user("3", "c"));
    let echo = |path: &str, bearer: Option<&str>, cookie: Option<&str>| -> (u16, Value) {
        let mut rq = client().get(gw.url(path)).header("X-Request-Id", "src");
        if let Some(t) = bearer {
            rq = rq.bearer_auth(t);
        }
        if let Some(c) = cookie {
            rq = rq.header("Cookie", c);
        }
        let r = rq.send().unwrap();
        (r.status().as_u16(), r.json().unwrap_or(Value::Null))
    };
    let subject = |v: &Value| echo_header(v, "x-auth-subject");
    // Authorization wins over the cookie, the cookie over the query parameter.
    let cookie = format!("theme=dark; access_token={two}; lang=en");
    let (status, v) = echo(
        &format!("/echo/x?q=1&access_token={three}&page=2"),
        Some(&one),
        Some(&cookie),
    );
    assert_eq!((status, subject(&v).as_deref()), (200, Some("1")));
    let (_, v) = echo(
        &format!("/echo/x?q=1&access_token={three}&page=2"),
        None,
        Some(&cookie),
    );
    assert_eq!(subject(&v).as_deref(), Some("2"));
    // What the upstream saw: the other cookies and parameters, never the token.
    assert_eq!(
        echo_header(&v, "cookie").as_deref(),
        Some("theme=dark; lang=en")
    );
    assert_eq!(v["query"], "q=1&page=2");
    let (_, v) = echo(&format!("/echo/x?access_token={three}"), None, None);
    assert_eq!(subject(&v).as_deref(), Some("3"));
    assert_eq!(v["query"], Value::Null, "{v}");
    assert!(
        !v.to_string().contains(&three),
        "the token went upstream: {v}"
    );
    // A bad token from a cookie is refused like a bad bearer token.
    let (status, body) = echo("/echo/x", None, Some("access_token=not.a.token"));
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    let (status, _) = echo("/echo/x", None, Some("other=1"));
    assert_eq!(status, 401);
    // A cookie token counts only from the gateway's own origin (or one `cors` allows): a
    // cross-site page cannot ride on it.
    let with_origin = |origin: &str| {
        client()
            .get(gw.url("/echo/x"))
            .header("Cookie", &cookie)
            .header("Origin", origin)
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(with_origin("https://evil.test"), 403);
    assert_eq!(with_origin(&format!("http://{}", gw.addr)), 200);
    // A client that gives up mid-request: pingora's own error log names the request, never
    // with its query string.
    let impatient = client_with_timeout(std::time::Duration::from_millis(300));
    let _ = impatient
        .get(gw.url(&format!("/echo/x?access_token={three}&delay_ms=1500")))
        .header("X-Request-Id", "impatient")
        .send();
    wait_until(
        "the abandoned request's access line",
        std::time::Duration::from_secs(10),
        || {
            gw.log_lines()
                .iter()
                .any(|l| l["request_id"] == "impatient")
        },
    );

    // The token parameter is not part of the cache key: the same user with another token
    // string is a hit.
    let again = user("3", "d");
    let get = |t: &str| {
        let r = client()
            .get(gw.url(&format!("/echo/cached/x?access_token={t}&q=yoga")))
            .send()
            .unwrap();
        r.headers()["x-cache"].to_str().unwrap().to_string()
    };
    assert_eq!(get(&three), "MISS");
    assert_eq!(get(&again), "HIT");

    // A WebSocket handshake authenticated by its URL.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr)).await;
        assert!(refused.is_err(), "no token, no upgrade");
        let (mut ws, resp) = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{}/ws?access_token={one}", gw.addr)),
        )
        .await
        .expect("in time")
        .expect("handshake");
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("hi")).await.unwrap();
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("in time");
        assert_eq!(msg.unwrap().unwrap().into_text().unwrap(), "hi");
    });
    // Nowhere in the log either.
    let log = gw.proc.output();
    for t in [&one, &two, &three] {
        assert!(!log.contains(t.as_str()), "a token in the log");
    }
}

#[test]
fn cors_preflights_are_answered_before_auth_and_every_answer_carries_cors() {
    let mock = Mock::start("m");
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      issuer: https://issuer
rate_limits:
  tiny: {{ rate: 1/m, burst: 2, key: client_ip }}
routes:
  - name: app
    path_prefix: /echo/app/
    methods: [GET]
    auth: {{ providers: [jwt] }}
    rate_limit: tiny
    cors:
      allow_origins: ["https://app.example.com"]
      allow_methods: [GET, POST]
      allow_headers: [Authorization, Content-Type]
      expose_headers: [X-Request-Id, RateLimit]
      allow_credentials: true
      max_age: 10m
    upstream: lms
  - {{ name: rest, path_prefix: /echo/, auth: {{ providers: [jwt] }}, upstream: lms }}
"#,
        mock = mock.addr
    );
    let gw = Gateway::start(&yaml, &[("JWT_SECRET", SECRET)]);
    let app = "https://app.example.com";
    let call = |method: reqwest::Method, origin: &str, token: Option<&str>, preflight: bool| {
        let mut rq = client()
            .request(method, gw.url("/echo/app/x"))
            .header("Origin", origin);
        if preflight {
            rq = rq
                .header("Access-Control-Request-Method", "GET")
                .header("Access-Control-Request-Headers", "authorization");
        }
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send().unwrap()
    };
    let h = |r: &reqwest::blocking::Response, n: &str| {
        r.headers().get(n).map(|v| v.to_str().unwrap().to_string())
    };
    // The preflight (an OPTIONS the route's `methods` does not list): answered here.
    let r = call(reqwest::Method::OPTIONS, app, None, true);
    assert_eq!(r.status(), 204);
    assert_eq!(h(&r, "access-control-allow-origin").as_deref(), Some(app));
    assert_eq!(
        h(&r, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        h(&r, "access-control-allow-headers").as_deref(),
        Some("Authorization, Content-Type")
    );
    assert_eq!(h(&r, "access-control-max-age").as_deref(), Some("600"));
    assert_eq!(
        h(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(h(&r, "vary").as_deref(), Some("Origin"));
    assert_eq!(h(&r, "content-length"), None);
    let r = call(reqwest::Method::OPTIONS, "https://evil.test", None, true);
    assert_eq!(r.status(), 403);
    assert_eq!(h(&r, "access-control-allow-origin"), None);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        mock.count("OPTIONS /echo"),
        0,
        "preflights never reach the upstream"
    );

    // The gateway's own refusals carry CORS for an allowed origin, so the app can read them.
    let r = call(reqwest::Method::GET, app, None, false);
    assert_eq!(r.status(), 401);
    assert_eq!(h(&r, "access-control-allow-origin").as_deref(), Some(app));
    assert_eq!(
        h(&r, "access-control-expose-headers").as_deref(),
        Some("X-Request-Id, RateLimit")
    );
    assert_eq!(
        h(&r, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    let token = sign(Algorithm::HS256, SECRET, None, &claims(json!({})));
    let r = call(reqwest::Method::GET, app, Some(&token), false);
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "access-control-allow-origin").as_deref(), Some(app));
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    let r = call(reqwest::Method::GET, app, Some(&token), false);
    assert_eq!(r.status(), 429);
    assert_eq!(h(&r, "access-control-allow-origin").as_deref(), Some(app));
    // Another origin gets no CORS headers (its browser keeps the answer from it).
    let r = call(
        reqwest::Method::GET,
        "https://evil.test",
        Some(&token),
        false,
    );
    assert_eq!(h(&r, "access-control-allow-origin"), None);
    // A route without cors: OPTIONS is an ordinary request there.
    let r = client()
        .request(reqwest::Method::OPTIONS, gw.url("/echo/other"))
        .header("Origin", app)
        .header("Access-Control-Request-Method", "GET")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(h(&r, "access-control-allow-origin"), None);

    // "*" with credentials is refused by check.
    let bad = yaml.replace(
        r#"allow_origins: ["https://app.example.com"]"#,
        r#"allow_origins: ["*"]"#,
    );
    std::fs::write(&gw.config, &bad).unwrap();
    let out = std::process::Command::new(bin("authgate"))
        .args(["check", "--config"])
        .arg(&gw.config)
        .env("JWT_SECRET", SECRET)
        .env("AG_LISTEN", "127.0.0.1:1")
        .env("AG_ADMIN", "127.0.0.1:2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].cors.allow_credentials"),
        "{stderr}"
    );
}

#[test]
fn explain_answers_the_decision_without_forwarding_spending_or_counting() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "{redis}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      issuer: https://issuer
rate_limits:
  ip: {{ rate: 1/m, burst: 5, key: client_ip, scope: local }}
  user: {{ rate: 1/m, burst: 3, key: subject, scope: shared }}
routes:
  - name: search
    path_prefix: /echo/search/
    auth: {{ providers: [jwt], scopes: [read] }}
    rate_limit: [ip, user]
    cache: {{ ttl: 60s, vary: [subject] }}
    upstream: lms
"#,
        redis = redis.url(),
        mock = mock.addr
    );
    let gw = Gateway::start(&yaml, &[("JWT_SECRET", SECRET)]);
    let token = sign(
        Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"scope": "read"})),
    );
    let explain = |body: Value| -> Value {
        let r = client()
            .post(gw.admin_url("/admin/explain"))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().unwrap();
        assert!(!text.contains(&token), "the token is echoed: {text}");
        serde_json::from_str(&text).unwrap()
    };
    let described = json!({
        "method": "GET",
        "path": "/echo/search/x?q=yoga",
        "host": "api.example.com",
        "headers": {"Authorization": format!("Bearer {token}")},
        "client_ip": "127.0.0.1",
    });
    let before = gw.metrics();
    let first = explain(described.clone());
    let again = explain(described.clone());
    assert_eq!(first["route"], "search");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], "lms");
    assert_eq!(first["auth"]["outcome"], "ok");
    assert_eq!(first["auth"]["provider"], "jwt");
    assert_eq!(first["auth"]["subject"], "42");
    assert_eq!(first["auth"]["scopes"], json!(["read"]));
    let left = |v: &Value| -> Vec<(String, u64, bool)> {
        v["rate_limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["policy"].as_str().unwrap().to_string(),
                    p["remaining"].as_u64().unwrap(),
                    p["shared"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        left(&first),
        [("ip".into(), 5, false), ("user".into(), 3, true)]
    );
    assert_eq!(left(&again), left(&first), "explaining spends nothing");
    assert_eq!(first["cache"]["hit"], false);
    assert_eq!(mock.total(), 0, "nothing was forwarded");
    let after = gw.metrics();
    assert_eq!(
        metric(
            &before,
            "authgate_auth_total",
            &[("provider", "jwt"), ("outcome", "ok")]
        ),
        metric(
            &after,
            "authgate_auth_total",
            &[("provider", "jwt"), ("outcome", "ok")]
        ),
        "explaining counts nothing"
    );

    // A real request spends one of each; the explanation then sees it, and the cache entry.
    let r = client()
        .get(gw.url("/echo/search/x?q=yoga"))
        .header("Host", "api.example.com")
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let now = explain(described.clone());
    assert_eq!(
        left(&now),
        [("ip".into(), 4, false), ("user".into(), 2, true)]
    );
    assert_eq!(now["cache"]["hit"], true, "{now}");
    assert_eq!(now["cache"]["key"], first["cache"]["key"]);

    // Refusals: their status, outcome and reason.
    let expired = sign(
        Algorithm::HS256,
        SECRET,
        None,
        &claims(json!({"exp": now_secs() - 60, "scope": "read"})),
    );
    let mut d = described.clone();
    d["headers"] = json!({"Authorization": format!("Bearer {expired}")});
    let v = explain(d);
    assert_eq!(
        (
            v["status"].as_u64(),
            &v["auth"]["outcome"],
            &v["auth"]["reason"]
        ),
        (Some(401), &json!("token_expired"), &json!("expired"))
    );
    let mut d = described.clone();
    d["headers"] = json!({"Authorization": format!("Bearer {}", sign(Algorithm::HS256, SECRET, None, &claims(json!({}))))});
    let v = explain(d);
    assert_eq!(
        (v["status"].as_u64(), &v["error"]),
        (Some(403), &json!("insufficient_scope"))
    );
    let v = explain(json!({"path": "/nowhere"}));
    assert_eq!(v["status"], 404);
    let r = client()
        .post(gw.admin_url("/admin/explain"))
        .json(&json!({"path": "/x", "headers": {"bad header": "x"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

fn now_secs() -> u64 {
    now()
}

fn discovery_config(mock: &Mock, issuer: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    hs-a:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: SECRET_A }}]
      issuer: https://a.test
    hs-b:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: SECRET_B }}]
      issuer: https://b.test
    idp:
      type: jwt
      algorithms: [RS256]
      issuer: "{issuer}"
      discovery: true
      audience: [api]
routes:
  - {{ name: api, path_prefix: /echo/, auth: {{ providers: [hs-a, hs-b, idp] }}, upstream: lms }}
"#,
        mock = mock.addr
    )
}

const SECRET_A: &str = "secret-a-of-at-least-thirty-two-bytes!";
const SECRET_B: &str = "secret-b-of-at-least-thirty-two-bytes!";

#[test]
fn discovery_finds_the_keys_and_each_token_goes_to_the_issuer_it_names() {
    let mock = Mock::start("m");
    let issuer = format!("http://{}", mock.addr);
    let env = [("SECRET_A", SECRET_A), ("SECRET_B", SECRET_B)];
    let gw = Gateway::start(&discovery_config(&mock, &issuer), &env);
    gw.wait_ready();
    let status = |t: &str| {
        client()
            .get(gw.url("/echo/x"))
            .bearer_auth(t)
            .send()
            .unwrap()
    };
    // Keys found through <issuer>/.well-known/openid-configuration.
    let rs = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "7", "iss": issuer, "aud": "api", "exp": now() + 600}),
    );
    let r = status(&rs);
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(echo_header(&v, "x-auth-provider").as_deref(), Some("idp"));
    assert!(mock.count("GET /.well-known/openid-configuration") >= 1);

    // A token naming b.test goes to hs-b alone: signed with a's key, it is b's bad signature,
    // not a's wrong issuer.
    let hs = |secret: &str, iss: &str| {
        sign(
            Algorithm::HS256,
            secret,
            None,
            &json!({"sub": "9", "iss": iss, "exp": now() + 600}),
        )
    };
    assert_eq!(status(&hs(SECRET_A, "https://b.test")).status(), 401);
    let m = gw.metrics();
    assert_eq!(
        metric(
            &m,
            "authgate_auth_denials_total",
            &[("provider", "hs-b"), ("reason", "bad_signature")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "authgate_auth_denials_total",
            &[("provider", "hs-a"), ("reason", "wrong_issuer")]
        ),
        0.0
    );
    let r = status(&hs(SECRET_B, "https://b.test"));
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(echo_header(&v, "x-auth-provider").as_deref(), Some("hs-b"));

    // An issuer whose metadata names another issuer is never trusted (OIDC Discovery 4.3):
    // the provider stays without keys, the others work.
    let bad = Gateway::start(&discovery_config(&mock, &format!("{issuer}/")), &env);
    wait_until(
        "the mismatch logged",
        std::time::Duration::from_secs(10),
        || bad.proc.output().contains("names issuer"),
    );
    let r = client().get(bad.admin_url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 503);
    let rs_slash = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "7", "iss": format!("{issuer}/"), "aud": "api", "exp": now() + 600}),
    );
    let r = client()
        .get(bad.url("/echo/x"))
        .bearer_auth(&rs_slash)
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "auth_unavailable while the provider has no keys"
    );
    let r = client()
        .get(bad.url("/echo/x"))
        .bearer_auth(hs(SECRET_A, "https://a.test"))
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "static keys of other providers keep working"
    );
}

#[test]
fn discovery_down_at_start_is_an_outage_not_a_failure_to_start() {
    let mock = Mock::start("m");
    client()
        .post(mock.url("/__mock/jwks/fail?on=true"))
        .send()
        .unwrap();
    let issuer = format!("http://{}", mock.addr);
    let env = [("SECRET_A", SECRET_A), ("SECRET_B", SECRET_B)];
    let gw = Gateway::start(&discovery_config(&mock, &issuer), &env);
    let ready = || {
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .unwrap()
            .status()
    };
    assert_eq!(ready(), 503);
    let rs = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "7", "iss": issuer, "aud": "api", "exp": now() + 600}),
    );
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(&rs)
        .send()
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"], "auth_unavailable");
    client()
        .post(mock.url("/__mock/jwks/fail?on=false"))
        .send()
        .unwrap();
    gw.wait_ready();
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(&rs)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}
