//! JWT authentication end to end: algorithms, keys from env, PEM files and JWKS, claims,
//! hostile tokens, the 401/403 contract, identity headers and JWKS behaviour.

use authgate_tests::tokens::{key_file, now, sign};
use authgate_tests::*;
use base64::Engine;
use jsonwebtoken::Algorithm;
use std::time::{Duration, Instant};

const ISS: &str = "https://issuer.test";

fn config(mock: &Mock, jwks_refresh: &str) -> String {
    let dir = repo().join("upstream-mock/keys");
    let dir = dir.display();
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], grace_period: 1s }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  realm: lms-api
  refresh_endpoint: /api/token/refresh/
  login_endpoint: /api/token/
  providers:
    simple:
      type: jwt
      algorithms: [HS256, HS384, HS512]
      keys: [{{ secret_env: JWT_SECRET }}]
      subject_claim: user_id
      leeway: 3s
    issuer:
      type: jwt
      algorithms: [RS256, ES256, EdDSA]
      jwks_url: http://{mock}/.well-known/jwks.json
      jwks_refresh: {jwks_refresh}
      jwks_min_refetch: 1s
      issuer: {ISS}
      audience: [lms-api]
    pem:
      type: jwt
      algorithms: [RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA]
      keys:
        - {{ kid: rsa-1, public_key_file: {dir}/rsa-1.pub.pem }}
        - {{ kid: ec-1, public_key_file: {dir}/ec-1.pub.pem }}
        - {{ kid: ec384-1, public_key_file: {dir}/ec384-1.pub.pem }}
        - {{ kid: ed-1, public_key_file: {dir}/ed-1.pub.pem }}
routes:
  - {{ name: token, path_prefix: /api/token/, auth: none, upstream: lms }}
  - {{ name: profile, path_prefix: /api/users/, auth: {{ providers: [simple] }}, upstream: lms }}
  - {{ name: jwks, path_prefix: /echo/jwks/, auth: {{ providers: [issuer] }}, upstream: lms }}
  - {{ name: pem, path_prefix: /echo/pem/, auth: {{ providers: [pem] }}, upstream: lms }}
  - {{ name: scoped, path_prefix: /echo/scoped/, auth: {{ providers: [simple], scopes: [admin, write] }}, upstream: lms }}
  - {{ name: optional, path_prefix: /echo/optional/, auth: optional, upstream: lms }}
  - {{ name: nofwd, path_prefix: /echo/nofwd/, auth: required, forward_authorization: false, upstream: lms }}
  - {{ name: any, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        mock = mock.addr,
    )
}

fn start_with(mock_args: &[&str], jwks_refresh: &str) -> (Mock, Gateway) {
    let mock = Mock::start_on("m", free_port(), mock_args);
    let gw = Gateway::start(
        &config(&mock, jwks_refresh),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    (mock, gw)
}

fn start() -> (Mock, Gateway) {
    start_with(&[], "1h")
}

fn simple_claims(extra: Value) -> Value {
    let mut c =
        json!({"user_id": 42, "exp": now() + 600, "scope": "read write", "token_type": "access"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn issuer_claims(extra: Value) -> Value {
    let mut c = json!({"sub": "user-7", "exp": now() + 600, "iss": ISS, "aud": "lms-api", "scope": ["read"]});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::blocking::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .expect("send")
}

#[test]
fn simplejwt_login_expiry_and_refresh_flow() {
    let (_mock, gw) = start_with(&["--access-ttl", "2"], "1h");
    let c = client();
    let issued = Instant::now();
    let pair: Value = c
        .post(gw.url("/api/token/"))
        .json(&json!({"username": "alice", "password": "alice-pass"}))
        .send()
        .expect("login")
        .json()
        .expect("json");
    let access = pair["access"].as_str().expect("access").to_string();
    let refresh = pair["refresh"].as_str().expect("refresh").to_string();

    let r = get(&gw, "/api/users/42/profile/", &access);
    assert_eq!(r.status(), 200, "alice reads her own profile");
    assert_eq!(r.json::<Value>().unwrap()["username"], "alice");
    // The upstream decides by X-Auth-Subject, which only the gateway can set.
    let r = client()
        .get(gw.url("/api/users/7/profile/"))
        .bearer_auth(&access)
        .header("X-Auth-Subject", "7")
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a forged X-Auth-Subject must not reach the upstream"
    );

    // The 2 s token plus the 3 s leeway runs out (and not long after: a cached identity
    // never outlives it).
    wait_until("the access token to expire", Duration::from_secs(8), || {
        get(&gw, "/api/users/42/profile/", &access).status() == 401
    });
    assert!(
        issued.elapsed() >= Duration::from_secs(3),
        "expired before exp + leeway"
    );
    let r = get(&gw, "/api/users/42/profile/", &access);
    assert_eq!(r.status(), 401);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "token_expired");
    assert_eq!(v["action"], "refresh");
    assert_eq!(v["refresh_endpoint"], "/api/token/refresh/");
    assert!(
        v["expired_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z') && s.len() == 20),
        "{v}"
    );
    assert!(
        !v.to_string().contains(&access),
        "the token must not be echoed"
    );

    let fresh: Value = c
        .post(gw.url("/api/token/refresh/"))
        .json(&json!({"refresh": refresh}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let access2 = fresh["access"].as_str().expect("new access");
    assert_eq!(get(&gw, "/api/users/42/profile/", access2).status(), 200);
}

#[test]
fn every_algorithm_verifies_with_its_own_key_type() {
    let (_mock, gw) = start();
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, MOCK_JWT_SECRET, None, &simple_claims(json!({})));
        let r = get(&gw, "/echo/any/x", &t);
        assert_eq!(r.status(), 200, "{alg:?}");
        assert_eq!(
            echo_header(&r.json().unwrap(), "x-auth-subject").as_deref(),
            Some("42")
        );
    }
    let cases = [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::RS384, "rsa-1"),
        (Algorithm::RS512, "rsa-1"),
        (Algorithm::PS256, "rsa-1"),
        (Algorithm::PS384, "rsa-1"),
        (Algorithm::PS512, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::ES384, "ec384-1"),
        (Algorithm::EdDSA, "ed-1"),
    ];
    for (alg, kid) in cases {
        let t = sign(
            alg,
            kid,
            Some(kid),
            &json!({"sub": "pem-user", "exp": now() + 60}),
        );
        let r = get(&gw, "/echo/pem/x", &t);
        assert_eq!(r.status(), 200, "{alg:?} with a PEM key");
        let v: Value = r.json().unwrap();
        assert_eq!(echo_header(&v, "x-auth-provider").as_deref(), Some("pem"));
    }
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let t = sign(alg, kid, Some(kid), &issuer_claims(json!({})));
        let r = get(&gw, "/echo/jwks/x", &t);
        assert_eq!(r.status(), 200, "{alg:?} from the JWKS");
        assert_eq!(
            echo_header(&r.json().unwrap(), "x-auth-subject").as_deref(),
            Some("user-7")
        );
    }
    // A provider only takes the algorithms on its allow-list.
    let t = sign(
        Algorithm::RS384,
        "rsa-1",
        Some("rsa-1"),
        &issuer_claims(json!({})),
    );
    assert_eq!(get(&gw, "/echo/jwks/x", &t).status(), 401);
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn hostile_tokens_are_refused_with_the_right_error() {
    let (mock, gw) = start();
    let t = now();
    let good = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &simple_claims(json!({})),
    );
    let rsa_pub = std::fs::read_to_string(key_file("rsa-1", "pub")).unwrap();
    let payload = b64(&simple_claims(json!({})).to_string());
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#)),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "alg none with a signature",
            format!("{}.{payload}.c2ln", b64(r#"{"alg":"none","typ":"JWT"}"#)),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "HS256 signed with the RSA public key",
            sign(
                Algorithm::HS256,
                &rsa_pub,
                Some("rsa-1"),
                &issuer_claims(json!({})),
            ),
            "/echo/jwks/x",
            "invalid_token",
        ),
        (
            "HS256 with the public key on the PEM route",
            sign(
                Algorithm::HS256,
                &rsa_pub,
                Some("rsa-1"),
                &json!({"sub": "x", "exp": t + 60}),
            ),
            "/echo/pem/x",
            "invalid_token",
        ),
        (
            "unknown kid",
            sign(
                Algorithm::RS256,
                "rsa-1",
                Some("no-such-kid"),
                &issuer_claims(json!({})),
            ),
            "/echo/jwks/x",
            "invalid_token",
        ),
        (
            "truncated",
            good[..good.len() - 10].to_string(),
            "/echo/any/x",
            "invalid_token",
        ),
        ("three dots", "...".into(), "/echo/any/x", "invalid_token"),
        (
            "bad base64",
            "@@@.###.$$$".into(),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "non-JSON header",
            format!("{}.{payload}.c2ln", b64("hello")),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "16 KiB token",
            format!(
                "{}.{}.{}",
                b64(r#"{"alg":"HS256"}"#),
                "A".repeat(16 * 1024),
                "c2ln"
            ),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "forged, long expired",
            sign(
                Algorithm::HS256,
                "wrong-secret",
                None,
                &simple_claims(json!({"exp": t - 3600})),
            ),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "nbf ahead",
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &simple_claims(json!({"nbf": t + 300})),
            ),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "wrong iss",
            sign(
                Algorithm::RS256,
                "rsa-1",
                Some("rsa-1"),
                &issuer_claims(json!({"iss": "https://evil.test"})),
            ),
            "/echo/jwks/x",
            "invalid_token",
        ),
        (
            "wrong aud",
            sign(
                Algorithm::RS256,
                "rsa-1",
                Some("rsa-1"),
                &issuer_claims(json!({"aud": "other-api"})),
            ),
            "/echo/jwks/x",
            "invalid_token",
        ),
        (
            "no exp",
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &json!({"user_id": 1}),
            ),
            "/echo/any/x",
            "invalid_token",
        ),
        (
            "leeway edge: just outside",
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &simple_claims(json!({"exp": t - 6})),
            ),
            "/echo/any/x",
            "token_expired",
        ),
        (
            "expired with a valid signature",
            sign(
                Algorithm::HS256,
                MOCK_JWT_SECRET,
                None,
                &simple_claims(json!({"exp": t - 3600})),
            ),
            "/echo/any/x",
            "token_expired",
        ),
    ];
    mock.reset();
    for (name, token, path, want) in &cases {
        let r = client()
            .get(gw.url(path))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .expect(name);
        assert_eq!(r.status(), 401, "{name}");
        let www = r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        let body = r.text().unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], *want, "{name}: {v}");
        assert!(
            www.starts_with("Bearer realm=\"lms-api\", error=\"invalid_token\""),
            "{name}: {www}"
        );
        if *want == "invalid_token" {
            assert_eq!(v["action"], "login", "{name}");
            assert_eq!(v["login_endpoint"], "/api/token/", "{name}");
        }
        if token.len() > 8 {
            assert!(!body.contains(token.as_str()), "{name}: token echoed");
        }
    }
    assert_eq!(mock.total(), 0, "a refused token reached the upstream");
    // Just inside the leeway is still good.
    let inside = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &simple_claims(json!({"exp": now() - 1})),
    );
    assert_eq!(get(&gw, "/echo/any/x", &inside).status(), 200);
}

#[test]
fn missing_token_scope_and_identity_headers() {
    let (_mock, gw) = start();
    let r = client().get(gw.url("/echo/any/x")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"lms-api\"");
    assert_eq!(r.json::<Value>().unwrap()["error"], "missing_token");
    let r = client()
        .get(gw.url("/echo/any/x"))
        .header("authorization", "Basic")
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["error"], "invalid_token");

    let reader = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &simple_claims(json!({"scope": "read write"})),
    );
    let r = get(&gw, "/echo/scoped/x", &reader);
    assert_eq!(r.status(), 403);
    let www = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        www.contains("error=\"insufficient_scope\"") && www.contains("scope=\"admin write\""),
        "{www}"
    );
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"], "insufficient_scope");
    assert_eq!(v["required_scopes"], json!(["admin", "write"]));
    let admin = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &simple_claims(json!({"scope": "admin write"})),
    );
    assert_eq!(get(&gw, "/echo/scoped/x", &admin).status(), 200);

    // Identity headers come from the gateway; client copies are dropped.
    let r = client()
        .get(gw.url("/echo/any/x"))
        .bearer_auth(&reader)
        .header("X-Auth-Subject", "1")
        .header("X-Auth-Scopes", "admin")
        .header("X-Auth-Provider", "fake")
        .header("X-Auth-Extra", "x")
        .send()
        .unwrap();
    let v: Value = r.json().unwrap();
    assert_eq!(echo_header(&v, "x-auth-subject").as_deref(), Some("42"));
    assert_eq!(
        echo_header(&v, "x-auth-scopes").as_deref(),
        Some("read write")
    );
    assert_eq!(
        echo_header(&v, "x-auth-provider").as_deref(),
        Some("simple")
    );
    assert_eq!(echo_header(&v, "x-auth-extra"), None);
    assert_eq!(
        echo_header(&v, "authorization"),
        Some(format!("Bearer {reader}"))
    );
    let v: Value = get(&gw, "/echo/nofwd/x", &reader).json().unwrap();
    assert_eq!(
        echo_header(&v, "authorization"),
        None,
        "forward_authorization: false"
    );
    assert_eq!(echo_header(&v, "x-auth-subject").as_deref(), Some("42"));

    // Optional: anonymous without a token, identified with one, refused with a bad one.
    let v: Value = client()
        .get(gw.url("/echo/optional/x"))
        .header("X-Auth-Subject", "1")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(echo_header(&v, "x-auth-subject"), None);
    let v: Value = get(&gw, "/echo/optional/x", &reader).json().unwrap();
    assert_eq!(echo_header(&v, "x-auth-subject").as_deref(), Some("42"));
    let expired = sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &simple_claims(json!({"exp": now() - 600})),
    );
    let r = get(&gw, "/echo/optional/x", &expired);
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().unwrap()["error"], "token_expired");

    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "authgate_auth_total",
            &[("provider", "none"), ("outcome", "missing_token")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_auth_total",
            &[("provider", "simple"), ("outcome", "insufficient_scope")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "authgate_auth_total",
            &[("provider", "simple"), ("outcome", "token_expired")]
        ),
        1.0
    );
    assert!(
        metric(
            &text,
            "authgate_auth_total",
            &[("provider", "simple"), ("outcome", "ok")]
        ) >= 4.0
    );
}

#[test]
fn jwks_rotation_outage_and_kid_flood() {
    let (mock, gw) = start();
    gw.wait_ready();
    let jwks_fetches = || mock.count("GET /.well-known/jwks.json");
    assert_eq!(jwks_fetches(), 1, "fetched once at start");
    let rsa2 = sign(
        Algorithm::RS256,
        "rsa-2",
        Some("rsa-2"),
        &issuer_claims(json!({})),
    );

    // Rotation: a new kid is picked up without a restart, by its own requests, as soon as the
    // re-fetch limit (1 s here) allows; until then it is refused without asking the issuer.
    client()
        .post(mock.url("/__mock/jwks/rotate"))
        .send()
        .unwrap();
    wait_until(
        "the rotated key to be accepted",
        Duration::from_secs(5),
        || {
            let status = get(&gw, "/echo/jwks/x", &rsa2).status();
            assert!(status == 200 || status == 401, "{status}");
            status == 200
        },
    );
    assert_eq!(jwks_fetches(), 2);

    // A flood of random kids makes at most a handful of fetches.
    let before = jwks_fetches();
    let started = Instant::now();
    for i in 0..200 {
        let t = sign(
            Algorithm::RS256,
            "rsa-1",
            Some(&format!("random-{i}")),
            &issuer_claims(json!({})),
        );
        let r = get(&gw, "/echo/jwks/x", &t);
        assert!(r.status() == 401 || r.status() == 503, "{}", r.status());
    }
    let extra = jwks_fetches() - before;
    let allowed = 1 + started.elapsed().as_secs();
    assert!(
        extra <= allowed,
        "{extra} JWKS fetches for 200 random kids in {:?}",
        started.elapsed()
    );

    // The issuer goes down: keys already loaded keep working...
    client()
        .post(mock.url("/__mock/jwks/fail?on=true"))
        .send()
        .unwrap();
    let rsa1 = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &issuer_claims(json!({})),
    );
    assert_eq!(get(&gw, "/echo/jwks/x", &rsa1).status(), 200);
    // ...and a kid that might be new is not the client's fault once the issuer could not be
    // asked: 503 with Retry-After (401 only while the limit holds and nothing was asked).
    let unknown = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("brand-new"),
        &issuer_claims(json!({})),
    );
    wait_until("a failed fetch", Duration::from_secs(5), || {
        let status = get(&gw, "/echo/jwks/x", &unknown).status();
        assert!(status == 503 || status == 401, "{status}");
        status == 503
    });
    assert_eq!(get(&gw, "/echo/jwks/x", &rsa1).status(), 200);
    let r = get(&gw, "/echo/jwks/x", &unknown);
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().unwrap()["error"], "auth_unavailable");
    assert!(
        metric(
            &gw.metrics(),
            "authgate_jwks_refresh_total",
            &[("provider", "issuer"), ("result", "error")]
        ) >= 1.0
    );
}

/// `/readyz` says 503 because provider `issuer` has no keys yet.
fn assert_waiting_for_issuer_keys(gw: &Gateway) {
    let r = client().get(gw.admin_url("/readyz")).send().unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().unwrap()["jwks_providers_without_keys"],
        json!(["issuer"])
    );
}

#[test]
fn jwks_startup_and_readiness() {
    // No static key and an unreachable JWKS: the gateway starts, is not ready, and answers the
    // provider's tokens with 503 auth_unavailable (never 401, never a pass).
    let dead = free_port();
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["127.0.0.1:{dead}"] }} }}
auth:
  providers:
    issuer: {{ type: jwt, algorithms: [RS256], jwks_url: "http://127.0.0.1:{dead}/jwks" }}
routes: [{{ name: a, path_prefix: /, upstream: lms }}]
"#
    );
    let gw = Gateway::start(&yaml, &[]);
    assert_waiting_for_issuer_keys(&gw);
    let t = sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "s", "exp": now() + 60}),
    );
    let r = get(&gw, "/x", &t);
    assert_eq!(r.status(), 503);
    assert_eq!(r.json::<Value>().unwrap()["error"], "auth_unavailable");
    // Log lines are written by their own thread: wait for it.
    wait_until("the JWKS failure in the log", WAIT, || {
        gw.proc.output().contains("JWKS fetch failed")
    });
    drop(gw);

    // With a static key it starts, but is not ready until the JWKS loads.
    let mock = Mock::start("m");
    client()
        .post(mock.url("/__mock/jwks/fail?on=true"))
        .send()
        .unwrap();
    let pem = key_file("rsa-1", "pub");
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    issuer:
      type: jwt
      algorithms: [RS256]
      keys: [{{ public_key_file: {pem} }}]
      jwks_url: "http://{m}/.well-known/jwks.json"
routes: [{{ name: a, path_prefix: /, upstream: lms }}]
"#,
        m = mock.addr,
        pem = pem.display()
    );
    let gw = Gateway::start(&yaml, &[]);
    assert_waiting_for_issuer_keys(&gw);
    // The static key works meanwhile.
    let t = sign(
        Algorithm::RS256,
        "rsa-1",
        None,
        &json!({"sub": "s", "exp": now() + 60}),
    );
    assert_eq!(get(&gw, "/echo/x", &t).status(), 200);
    client()
        .post(mock.url("/__mock/jwks/fail?on=false"))
        .send()
        .unwrap();
    gw.wait_ready();
}
