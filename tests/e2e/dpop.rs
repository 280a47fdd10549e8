//! Sender-constrained tokens (RFC 9449) end to end: upstream-mock's token endpoint binds an
//! access token to the key of the login's proof, and the gateway accepts it only with a fresh
//! proof by that key, once.

use authgate_tests::dpop::Key;
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const ALGS: &str = r#"DPoP error="invalid_dpop_proof", algs="ES256 EdDSA PS256 RS256""#;

fn config(mock: &Mock, redis: Option<&Redis>, nonce: bool) -> String {
    let redis = redis.map_or(String::new(), |r| format!("url: \"{}\"", r.url()));
    config_with(mock, &redis, nonce)
}

/// With `redis` the inside of a `redis:` block (`url: ...`, `sentinel: ...`), or "" for none.
fn config_with(mock: &Mock, redis: &str, nonce: bool) -> String {
    let redis = if redis.is_empty() {
        String::new()
    } else {
        format!("redis: {{ {redis}, key_prefix: \"dp:\" }}\n")
    };
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
{redis}upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    lms-jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      required_claims: {{ token_type: access }}
      subject_claim: user_id
      dpop: optional
      dpop_nonce: {nonce}
    strict-jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      required_claims: {{ token_type: access }}
      subject_claim: user_id
      dpop: required
      dpop_algorithms: [ES256, EdDSA]
    knox:
      type: introspection
      url: "{introspect}"
      client_id: {cid}
      client_secret_env: INTROSPECTION_SECRET
      dpop: required
routes:
  - {{ name: token, path_prefix: /api/token/, auth: none, upstream: lms }}
  - {{ name: strict, path_prefix: /echo/strict/, auth: {{ providers: [strict-jwt] }}, upstream: lms }}
  - {{ name: opaque, path_prefix: /echo/opaque/, auth: {{ providers: [knox] }}, upstream: lms }}
  - {{ name: api, path_prefix: /echo/, auth: {{ providers: [lms-jwt] }}, upstream: lms }}
"#,
        mock = mock.addr,
        introspect = mock.url("/api/auth/introspect/"),
        cid = MOCK_INTROSPECTION.0,
    )
}

fn env() -> [(&'static str, &'static str); 4] {
    [
        ("JWT_SECRET", MOCK_JWT_SECRET),
        ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
        // For the Sentinel and Cluster fixtures.
        ("REDIS_PASSWORD", ACL_PASS),
        ("SENTINEL_PASSWORD", SENTINEL_PASS),
    ]
}

/// Logs in through the gateway with a proof of `key`: the access token comes back bound.
fn login(gw: &Gateway, key: &Key) -> String {
    let url = gw.url("/api/token/");
    let r = client()
        .post(&url)
        .header("DPoP", key.proof("POST", &url, None))
        .json(&json!({"username": "alice", "password": "alice-pass"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["token_type"], "DPoP");
    body["access"].as_str().unwrap().to_string()
}

/// Status, `WWW-Authenticate` and body of one request with the given headers.
fn send(url: &str, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut req = client().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().unwrap();
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, www, r.json().unwrap_or(Value::Null))
}

#[test]
fn a_bound_token_works_only_with_a_fresh_proof_by_its_key() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, None, false), &env());
    let key = Key::load("ec-1", Algorithm::ES256);
    let token = login(&gw, &key);
    let url = gw.url("/echo/x");
    let dpop = format!("DPoP {token}");

    // The flow: a new proof with every request, the first one and a cached one alike.
    for _ in 0..2 {
        let proof = key.proof("GET", &url, Some(&token));
        let (status, _, body) = send(&url, &[("Authorization", &dpop), ("DPoP", &proof)]);
        assert_eq!(status, 200, "{body}");
        assert_eq!(echo_header(&body, "x-auth-subject").as_deref(), Some("42"));
    }

    // Each check refuses with the DPoP challenge.
    let other = Key::load("ed-1", Algorithm::EdDSA);
    let proof = |m: &str, u: &str, t: Option<&str>| key.proof(m, u, t);
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "as Bearer",
            vec![("Authorization", format!("Bearer {token}"))],
        ),
        ("without a proof", vec![("Authorization", dpop.clone())]),
        (
            "for another method",
            vec![
                ("Authorization", dpop.clone()),
                ("DPoP", proof("POST", &url, Some(&token))),
            ],
        ),
        (
            "for another URI",
            vec![
                ("Authorization", dpop.clone()),
                ("DPoP", proof("GET", &gw.url("/echo/y"), Some(&token))),
            ],
        ),
        (
            "for another token",
            vec![
                ("Authorization", dpop.clone()),
                ("DPoP", proof("GET", &url, Some("another"))),
            ],
        ),
        (
            "by another key",
            vec![
                ("Authorization", dpop.clone()),
                ("DPoP", other.proof("GET", &url, Some(&token))),
            ],
        ),
        (
            "too old",
            vec![
                ("Authorization", dpop.clone()),
                (
                    "DPoP",
                    key.proof_with(
                        "GET",
                        &url,
                        Some(&token),
                        json!({"iat": tokens::now() - 600}),
                    ),
                ),
            ],
        ),
        (
            "with two proofs",
            vec![
                ("Authorization", dpop.clone()),
                ("DPoP", proof("GET", &url, Some(&token))),
                ("DPoP", proof("GET", &url, Some(&token))),
            ],
        ),
        (
            "with a junk proof",
            vec![("Authorization", dpop.clone()), ("DPoP", "a.b.c".into())],
        ),
    ];
    for (what, headers) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, www, body) = send(&url, &headers);
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(www, ALGS, "{what}");
        assert_eq!(body["error"], "invalid_token", "{what}");
    }

    // A proof is spent by its first use.
    let once = key.proof("GET", &url, Some(&token));
    let h = [("Authorization", dpop.as_str()), ("DPoP", once.as_str())];
    assert_eq!(send(&url, &h).0, 200);
    let (status, www, body) = send(&url, &h);
    assert_eq!((status, www.as_str()), (401, ALGS), "{body}");
    assert!(body["message"].as_str().unwrap().contains("used before"));

    // An unbound token: a plain bearer token where DPoP is optional, refused where required,
    // and refused with the DPoP scheme (nothing to bind the proof to).
    let plain = tokens::sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"token_type": "access", "user_id": 7, "exp": tokens::now() + 600}),
    );
    let bearer = format!("Bearer {plain}");
    assert_eq!(send(&url, &[("Authorization", &bearer)]).0, 200);
    let strict = gw.url("/echo/strict/x");
    let (status, www, _) = send(&strict, &[("Authorization", &bearer)]);
    assert_eq!(status, 401);
    assert_eq!(
        www,
        r#"DPoP error="invalid_dpop_proof", algs="ES256 EdDSA""#
    );
    let unbound = format!("DPoP {plain}");
    let p = key.proof("GET", &url, Some(&plain));
    assert_eq!(
        send(&url, &[("Authorization", &unbound), ("DPoP", &p)]).0,
        401
    );

    // `dpop_algorithms` is the provider's: an RSA proof is refused where only EC and EdDSA are.
    let strict_token = login(&gw, &Key::load("rsa-1", Algorithm::PS256));
    let rsa = Key::load("rsa-1", Algorithm::PS256);
    let p = rsa.proof("GET", &strict, Some(&strict_token));
    let h = format!("DPoP {strict_token}");
    assert_eq!(send(&strict, &[("Authorization", &h), ("DPoP", &p)]).0, 401);
    let p = rsa.proof("GET", &url, Some(&strict_token));
    assert_eq!(
        send(&url, &[("Authorization", &h), ("DPoP", &p)]).0,
        200,
        "PS256 is among lms-jwt's default algorithms"
    );

    let m = gw.metrics();
    assert!(
        metric(
            &m,
            "authgate_auth_denials_total",
            &[("provider", "lms-jwt"), ("reason", "dpop_invalid")]
        ) >= cases.len() as f64
    );
    assert_eq!(
        metric(&m, "authgate_dpop_replay_total", &[("result", "replay")]),
        1.0
    );
    // The access log names the reason; no token or proof reaches it.
    let log = gw.proc.output();
    assert!(log.contains(r#""reason":"dpop_invalid""#));
    assert!(!log.contains(&token) && !log.contains(&once));
}

#[test]
fn opaque_tokens_are_bound_by_their_introspection_answer() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, None, false), &env());
    let key = Key::load("ed-1", Algorithm::EdDSA);
    let r: Value = client()
        .post(mock.url("/__mock/opaque"))
        .json(&json!({"sub": "7", "extra": {"cnf": {"jkt": key.thumbprint()}}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = r["token"].as_str().unwrap().to_string();
    let url = gw.url("/echo/opaque/x");
    let auth = format!("DPoP {token}");
    let p = key.proof("GET", &url, Some(&token));
    let (status, _, body) = send(&url, &[("Authorization", &auth), ("DPoP", &p)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo_header(&body, "x-auth-subject").as_deref(), Some("7"));
    let (status, www, _) = send(&url, &[("Authorization", &format!("Bearer {token}"))]);
    assert_eq!((status, www.as_str()), (401, ALGS));
    let other = Key::load("ec-1", Algorithm::ES256).proof("GET", &url, Some(&token));
    assert_eq!(
        send(&url, &[("Authorization", &auth), ("DPoP", &other)]).0,
        401
    );
}

#[test]
fn a_proof_is_spent_across_replicas_and_explain_spends_none() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let yaml = config(&mock, Some(&redis), false);
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());
    let key = Key::load("ec-1", Algorithm::ES256);
    let token = login(&a, &key);
    // One name for both replicas, as behind a load balancer.
    let htu = "http://api.test/echo/x";
    let auth = format!("DPoP {token}");
    let proof = key.proof("GET", htu, Some(&token));
    let h = [
        ("Host", "api.test"),
        ("Authorization", auth.as_str()),
        ("DPoP", proof.as_str()),
    ];

    // Explaining the request decides it without spending the proof.
    let r: Value = client()
        .post(a.admin_url("/admin/explain"))
        .json(
            &json!({"method": "GET", "path": "/echo/x", "host": "api.test",
                      "headers": {"Authorization": &auth, "DPoP": &proof}}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(r["auth"]["outcome"], "ok", "{r}");
    assert!(!r.to_string().contains(&proof), "explain echoes no proof");

    assert_eq!(send(&a.url("/echo/x"), &h).0, 200);
    let (status, www, body) = send(&b.url("/echo/x"), &h);
    assert_eq!((status, www.as_str()), (401, ALGS), "{body}");
    assert_eq!(
        metric(
            &b.metrics(),
            "authgate_dpop_replay_total",
            &[("result", "replay")]
        ),
        1.0
    );

    // Redis gone: each replica still refuses what it saw itself, and says it decided alone.
    drop(redis);
    let fresh = key.proof("GET", htu, Some(&token));
    let h = [
        ("Host", "api.test"),
        ("Authorization", auth.as_str()),
        ("DPoP", fresh.as_str()),
    ];
    assert_eq!(send(&a.url("/echo/x"), &h).0, 200);
    assert_eq!(send(&a.url("/echo/x"), &h).0, 401);
    assert!(
        metric(
            &a.metrics(),
            "authgate_dpop_replay_total",
            &[("result", "local_only")]
        ) >= 1.0
    );
}

#[test]
fn server_nonces_are_handed_out_and_accepted_by_every_replica() {
    let mock = Mock::start("m");
    let redis = Redis::start();
    let yaml = config(&mock, Some(&redis), true);
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());
    let key = Key::load("ec-1", Algorithm::ES256);
    let token = login(&a, &key);
    let htu = "http://api.test/echo/x";
    let auth = format!("DPoP {token}");
    let ask = |gw: &Gateway, nonce: Option<&str>| {
        let extra = nonce.map_or(json!({}), |n| json!({ "nonce": n }));
        let proof = key.proof_with("GET", htu, Some(&token), extra);
        client()
            .get(gw.url("/echo/x"))
            .header("Host", "api.test")
            .header("Authorization", &auth)
            .header("DPoP", proof)
            .send()
            .unwrap()
    };
    let r = ask(&a, None);
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        r#"DPoP error="use_dpop_nonce", algs="ES256 EdDSA PS256 RS256""#
    );
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_string();
    assert_eq!(ask(&a, Some(&nonce)).status(), 200);
    assert_eq!(ask(&a, Some("made-up")).status(), 401);
    // The replicas share the nonce key through Redis: once both have it, a nonce from one
    // is good at the other.
    wait_until("b to accept a's nonces", WAIT, || {
        let n = ask(&a, None).headers()["dpop-nonce"]
            .to_str()
            .unwrap()
            .to_string();
        ask(&b, Some(&n)).status() == 200
    });
    let log = a.proc.output();
    assert!(!log.contains(&token));
}

/// A proof spent on one gateway is refused by another sharing the Redis described by
/// `redis` (the inside of a `redis:` block): for the Sentinel and Cluster tests.
pub fn assert_a_proof_is_spent_across(redis: &str) {
    let mock = Mock::start("m");
    let yaml = config_with(&mock, redis, false);
    let a = Gateway::start(&yaml, &env());
    let b = Gateway::start(&yaml, &env());
    let key = Key::load("ec-1", Algorithm::ES256);
    let token = login(&a, &key);
    let htu = "http://api.test/echo/x";
    let auth = format!("DPoP {token}");
    for _ in 0..3 {
        let proof = key.proof("GET", htu, Some(&token));
        let h = [
            ("Host", "api.test"),
            ("Authorization", auth.as_str()),
            ("DPoP", proof.as_str()),
        ];
        assert_eq!(send(&a.url("/echo/x"), &h).0, 200);
        let (status, www, body) = send(&b.url("/echo/x"), &h);
        assert_eq!((status, www.as_str()), (401, ALGS), "{body}");
    }
    assert_eq!(
        metric(
            &b.metrics(),
            "authgate_dpop_replay_total",
            &[("result", "replay")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &b.metrics(),
            "authgate_dpop_replay_total",
            &[("result", "local_only")]
        ),
        0.0
    );
}
