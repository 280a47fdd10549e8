//! Opaque tokens (RFC 7662), API keys, the two-tier token cache shared through Redis, and
//! revocation across replicas.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

const ADMIN: &str = "e2e-admin-token";

fn config(mock: &Mock, redis: Option<&Redis>, introspect_query: &str) -> String {
    let redis_section = redis.map_or(String::new(), |r| {
        format!("redis: {{ url: \"{}\", command_timeout: 200ms }}", r.url())
    });
    let ci = hex::encode(Sha256::digest(b"ci-key"));
    let hdr = hex::encode(Sha256::digest(b"header-key"));
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}", token_env: ADMIN_TOKEN }}
{redis_section}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  realm: lms
  login_endpoint: /api/auth/login/
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id }}
    knox:
      type: introspection
      url: "http://{m}/api/auth/introspect/{introspect_query}"
      client_id: authgate
      client_secret_env: INTROSPECTION_SECRET
      timeout: 300ms
    service-keys:
      type: api_key
      scheme: Api-Key
      keys: [{{ id: ci, sha256: "{ci}", subject: "service:ci", scopes: [search] }}]
    header-keys:
      type: api_key
      header: X-API-Key
      keys: [{{ id: hk, sha256: "{hdr}", subject: "service:hdr" }}]
  cache: {{ max_entries: 1000, max_ttl: 5m, negative_ttl: 2s }}
routes:
  - {{ name: token, path_prefix: /api/token/, auth: none, upstream: lms }}
  - {{ name: login, path: /api/auth/login/, auth: none, upstream: lms }}
  - {{ name: logout, path: /api/auth/logout/, methods: [POST], auth: required, revokes_token: true, upstream: lms }}
  - {{ name: svc, path_prefix: /echo/svc/, auth: {{ providers: [service-keys, header-keys], scopes: [search] }}, upstream: lms }}
  - {{ name: api, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        m = mock.addr
    )
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("JWT_SECRET", MOCK_JWT_SECRET),
        ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
        ("ADMIN_TOKEN", ADMIN),
    ]
}

fn opaque(mock: &Mock, sub: &str, ttl_s: i64) -> String {
    let v: Value = client()
        .post(mock.url("/__mock/opaque"))
        .json(&json!({"sub": sub, "scope": "read write", "ttl_s": ttl_s}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    v["token"].as_str().unwrap().to_string()
}

fn call(gw: &Gateway, token: &str) -> reqwest::blocking::Response {
    client()
        .get(gw.url("/echo/x"))
        .bearer_auth(token)
        .send()
        .unwrap()
}

fn status(gw: &Gateway, token: &str) -> u16 {
    call(gw, token).status().as_u16()
}

fn introspections(mock: &Mock) -> u64 {
    mock.count("POST /api/auth/introspect")
}

fn revoke(gw: &Gateway, body: Value) -> reqwest::blocking::Response {
    client()
        .post(gw.admin_url("/admin/revoke"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .unwrap()
}

fn subject_seen(r: reqwest::blocking::Response) -> Option<String> {
    let v: Value = r.json().ok()?;
    v["headers"]
        .as_array()?
        .iter()
        .find(|p| p[0] == "x-auth-subject")
        .and_then(|p| p[1].as_str().map(str::to_owned))
}

#[test]
fn replicas_share_what_one_of_them_learned() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let a = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let b = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let token = opaque(&mock, "7", 600);
    let r = call(&a, &token);
    assert_eq!(r.status(), 200);
    assert_eq!(subject_seen(r).as_deref(), Some("7"));
    assert_eq!(introspections(&mock), 1);
    for _ in 0..5 {
        assert_eq!(status(&a, &token), 200);
        assert_eq!(status(&b, &token), 200);
    }
    assert_eq!(
        introspections(&mock),
        1,
        "replica b asked the introspection endpoint again"
    );
    let ta = a.metrics();
    let tb = b.metrics();
    assert_eq!(
        metric(
            &ta,
            "authgate_token_cache_total",
            &[("tier", "local"), ("result", "hit")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &tb,
            "authgate_token_cache_total",
            &[("tier", "redis"), ("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &tb,
            "authgate_auth_total",
            &[("provider", "knox"), ("outcome", "ok")]
        ),
        5.0
    );

    // Nothing in Redis holds a raw token, in a key or a value.
    let jwt = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 9, "exp": now() + 600}),
    );
    assert_eq!(status(&a, &jwt), 200);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .arg("-p")
            .arg(redis.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let keys = cli(&["--scan"]);
    assert!(
        keys.lines().any(|k| k.starts_with("authgate:tok:")),
        "{keys}"
    );
    for key in keys.lines() {
        let value = cli(&["GET", key]);
        for secret in [&token, &jwt] {
            assert!(
                !key.contains(secret.as_str()) && !value.contains(secret.as_str()),
                "raw token in {key}"
            );
        }
    }
    let token_key = format!(
        "authgate:tok:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    assert!(
        keys.contains(&token_key),
        "the cache key is the token's sha256"
    );
}

#[test]
fn concurrent_misses_make_one_introspection_call() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, None, "?delay_ms=150"), &env());
    let token = opaque(&mock, "11", 600);
    std::thread::scope(|s| {
        for _ in 0..50 {
            s.spawn(|| assert_eq!(status(&gw, &token), 200));
        }
    });
    assert_eq!(introspections(&mock), 1);
}

#[test]
fn inactive_slow_and_down_introspection() {
    let mut mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, None, ""), &env());
    // Unknown to the issuer: active false.
    let r = call(&gw, "0123456789abcdef0123456789abcdef");
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"], "invalid_token");
    let expired = opaque(&mock, "3", -5);
    assert_eq!(status(&gw, &expired), 401);

    // Slower than the provider's timeout: 503, never 200.
    let slow = Gateway::start(&config(&mock, None, "?delay_ms=1000"), &env());
    let t = opaque(&mock, "4", 600);
    let started = Instant::now();
    let r = call(&slow, &t);
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(900));
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().unwrap()["error"], "auth_unavailable");

    // Down: cached tokens still work, others get 503.
    let cached = opaque(&mock, "5", 600);
    assert_eq!(status(&gw, &cached), 200);
    mock.proc.kill();
    assert_eq!(status(&gw, "ffffffffffffffffffffffffffffffff"), 503);
    let text = gw.metrics();
    assert!(
        metric(
            &text,
            "authgate_auth_total",
            &[("provider", "knox"), ("outcome", "auth_unavailable")]
        ) >= 1.0
    );
    // The cached token passes auth; the upstream is the same dead mock, hence 502.
    let r = call(&gw, &cached);
    assert_eq!(
        r.status(),
        502,
        "a cached token must pass auth while the issuer is down"
    );
}

#[test]
fn api_keys_by_scheme_and_header() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, None, ""), &env());
    let r = client()
        .get(gw.url("/echo/svc/x"))
        .header("Authorization", "Api-Key ci-key")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(subject_seen(r).as_deref(), Some("service:ci"));
    let r = client()
        .get(gw.url("/echo/svc/x"))
        .header("Authorization", "Api-Key ci-kex")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"], "invalid_token");
    // The header key authenticates but lacks the route's scope.
    let r = client()
        .get(gw.url("/echo/svc/x"))
        .header("X-API-Key", "header-key")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .get(gw.url("/echo/x"))
        .header("X-API-Key", "header-key")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(subject_seen(r).as_deref(), Some("service:hdr"));
    // An API key is not a bearer token, and a bearer token is not an API key.
    assert_eq!(
        client()
            .get(gw.url("/echo/svc/x"))
            .bearer_auth("ci-key")
            .send()
            .unwrap()
            .status(),
        401
    );
}

#[test]
fn revocation_reaches_every_replica_within_a_second() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let a = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let b = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let token = opaque(&mock, "21", 600);
    assert_eq!(status(&a, &token), 200);
    assert_eq!(status(&b, &token), 200);
    // The admin endpoint needs the admin token.
    let r = client()
        .post(a.admin_url("/admin/revoke"))
        .json(&json!({"token": token}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = revoke(&a, json!({"token": token}));
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["replicas"], "all");
    assert_eq!(status(&a, &token), 401);
    wait_until(
        "replica b to refuse the revoked token",
        Duration::from_secs(1),
        || status(&b, &token) == 401,
    );
    let v: Value = call(&b, &token).json().unwrap();
    assert_eq!(v["error"], "invalid_token");

    // By jti, and by subject (tokens issued before the revocation).
    let t = now();
    let with_jti = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 30, "exp": t + 600, "jti": "jti-30", "iat": t - 10}),
    );
    assert_eq!(status(&b, &with_jti), 200);
    assert_eq!(revoke(&a, json!({"jti": "jti-30"})).status(), 200);
    wait_until("jti revocation on b", Duration::from_secs(1), || {
        status(&b, &with_jti) == 401
    });
    let old = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 31, "exp": t + 600, "iat": t - 10}),
    );
    assert_eq!(status(&b, &old), 200);
    assert_eq!(revoke(&a, json!({"subject": "31"})).status(), 200);
    wait_until("subject revocation on b", Duration::from_secs(1), || {
        status(&b, &old) == 401
    });
    // `iat` has whole seconds: a token issued after the revocation needs the next one.
    let revoked_by = now();
    wait_until("the next second", Duration::from_secs(2), || {
        now() > revoked_by
    });
    let fresh = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 31, "exp": now() + 600, "iat": now()}),
    );
    assert_eq!(
        status(&b, &fresh),
        200,
        "a token issued after the subject revocation works"
    );

    // A replica started after the revocation learns it from Redis.
    let c = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    assert_eq!(status(&c, &token), 401);
    assert_eq!(status(&c, &with_jti), 401);
}

#[test]
fn logout_through_a_revokes_token_route() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let a = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let b = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let pair: Value = client()
        .post(a.url("/api/token/"))
        .json(&json!({"username": "alice", "password": "alice-pass"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access = pair["access"].as_str().unwrap().to_string();
    assert_eq!(status(&b, &access), 200);
    let r = client()
        .post(a.url("/api/auth/logout/"))
        .bearer_auth(&access)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        status(&a, &access),
        401,
        "the logged-out JWT is refused at once"
    );
    wait_until(
        "replica b to refuse the logged-out token",
        Duration::from_secs(1),
        || status(&b, &access) == 401,
    );
}

#[test]
fn redis_dying_mid_test_fails_nothing_open() {
    let mut redis = Redis::start();
    let port = redis.port;
    let mock = Mock::start("m");
    let a = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let b = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let cached = opaque(&mock, "40", 600);
    assert_eq!(status(&a, &cached), 200);
    redis.proc.kill();
    // Tier 1 keeps answering; new tokens go to their providers; bad ones are still refused.
    assert_eq!(status(&a, &cached), 200);
    let before = introspections(&mock);
    let fresh = opaque(&mock, "41", 600);
    assert_eq!(status(&b, &fresh), 200);
    assert_eq!(introspections(&mock), before + 1);
    let jwt = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 42, "exp": now() + 600}),
    );
    assert_eq!(status(&a, &jwt), 200);
    assert_eq!(status(&a, "not-a-valid-token-at-all-000000"), 401);
    let forged = sign(
        Algorithm::HS256,
        "wrong",
        None,
        &json!({"user_id": 42, "exp": now() + 600}),
    );
    assert_eq!(status(&b, &forged), 401);
    let errors: f64 = ["cache_get", "cache_set", "revoke_check"]
        .iter()
        .map(|op| metric(&b.metrics(), "authgate_redis_errors_total", &[("op", op)]))
        .sum();
    assert!(errors >= 1.0, "redis errors were not counted");

    // Redis comes back: sharing resumes by itself.
    let _redis = Redis::start_on(port);
    let later = opaque(&mock, "43", 600);
    wait_until(
        "the shared cache to work again",
        Duration::from_secs(10),
        || {
            let t = opaque(&mock, "44", 600);
            status(&a, &t);
            let n = introspections(&mock);
            status(&b, &t);
            introspections(&mock) == n
        },
    );
    assert_eq!(status(&a, &later), 200);
}

#[test]
fn an_entry_never_outlives_its_token() {
    let redis = Redis::start();
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, Some(&redis), ""), &env());
    let minted = Instant::now();
    let token = opaque(&mock, "50", 3);
    assert_eq!(status(&gw, &token), 200);
    let key = format!(
        "authgate:tok:{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PTTL", &key])
        .output()
        .unwrap();
    let pttl: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 3000,
        "redis entry lives {pttl} ms for a 3 s token"
    );
    // Refused within a moment of its exp (whole seconds), however often it is presented.
    let limit = Duration::from_millis(4500).saturating_sub(minted.elapsed());
    wait_until("the cached identity to end with its token", limit, || {
        call(&gw, &token).status() == 401
    });
    assert!(
        minted.elapsed() >= Duration::from_secs(2),
        "refused before its exp"
    );
}
