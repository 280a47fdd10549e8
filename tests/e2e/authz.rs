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
