//! `upstream_assertion`: the signed identity the upstream receives, verified here with
//! jsonwebtoken against the keys the gateway publishes, and kept across key changes.

use authgate_tests::tokens::{now, sign};
use authgate_tests::*;
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use std::process::Command;

const SECRET: &str = "assertion-test-secret-of-32-bytes!!";

fn config(mock: &Mock, assertion: &str) -> String {
    let keys = repo().join("upstream-mock/keys");
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{mock}"] }}
auth:
  providers:
    lms-jwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      subject_claim: user_id
      required_claims: {{ token_type: access }}
upstream_assertion:
{assertion}
routes:
  - {{ name: public, path_prefix: /echo/public/, auth: none, upstream: lms }}
  - {{ name: optional, path_prefix: /echo/optional/, auth: optional, upstream: lms }}
  - {{ name: api, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        mock = mock.addr,
    )
    .replace("KEYS", &keys.display().to_string())
}

const ED: &str = "  algorithm: EdDSA\n  key_file: KEYS/ed-1.key.pem\n  issuer: https://authgate.test\n  ttl: 60s\n";
const EC: &str = "  header: X-Pomerium-Jwt-Assertion\n  algorithm: ES256\n  key_file: KEYS/ec-1.key.pem\n  issuer: https://authgate.test\n  ttl: 30s\n";

fn token(user: u64) -> String {
    sign(
        Algorithm::HS256,
        SECRET,
        None,
        &json!({"token_type": "access", "user_id": user, "exp": now() + 600, "jti": format!("j{user}"), "scope": "read write"}),
    )
}

fn echo(gw: &Gateway, path: &str, bearer: Option<&str>, extra: &[(&str, &str)]) -> Value {
    let mut rq = client().get(gw.url(path));
    if let Some(t) = bearer {
        rq = rq.bearer_auth(t);
    }
    for (k, v) in extra {
        rq = rq.header(*k, *v);
    }
    let r = rq.send().expect("send");
    assert_eq!(r.status(), 200, "{path}");
    r.json().expect("echo json")
}

fn jwks(gw: &Gateway) -> JwkSet {
    let r = client()
        .get(gw.admin_url("/.well-known/jwks.json"))
        .send()
        .expect("jwks");
    assert_eq!(r.status(), 200);
    r.json().expect("jwk set")
}

/// Verifies an assertion as an upstream would: the key chosen by `kid` from the published set.
fn verify(set: &JwkSet, assertion: &str) -> (jsonwebtoken::Header, Value) {
    let header = decode_header(assertion).expect("jose header");
    let jwk = set
        .find(header.kid.as_deref().expect("kid"))
        .expect("kid is published");
    let mut v = Validation::new(header.alg);
    v.set_audience(&["lms"]);
    v.set_issuer(&["https://authgate.test"]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = decode::<Value>(assertion, &DecodingKey::from_jwk(jwk).expect("key"), &v)
        .expect("assertion verifies")
        .claims;
    (header, claims)
}

#[test]
fn the_upstream_gets_a_verifiable_assertion_and_never_the_clients() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&config(&mock, ED), &[("JWT_SECRET", SECRET)]);
    let set = jwks(&gw);
    assert_eq!(set.keys.len(), 1);

    // A client's own assertion (even one signed with the gateway's key) is replaced.
    let forged = sign(
        Algorithm::EdDSA,
        "ed-1",
        set.keys[0].common.key_id.as_deref(),
        &json!({"iss": "https://authgate.test", "aud": "lms", "sub": "1", "exp": now() + 60, "iat": now()}),
    );
    let alice = token(42);
    let v = echo(
        &gw,
        "/echo/a",
        Some(&alice),
        &[("X-Auth-Assertion", &forged), ("X_Auth_Assertion", &forged)],
    );
    let names: Vec<String> = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap().to_ascii_lowercase())
        .filter(|n| n.replace('_', "-") == "x-auth-assertion")
        .collect();
    assert_eq!(names, ["x-auth-assertion"], "exactly one, the gateway's");
    let assertion = echo_header(&v, "x-auth-assertion").unwrap();
    assert_ne!(assertion, forged);
    let (header, claims) = verify(&set, &assertion);
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("authgate+jwt"));
    assert_eq!(claims["sub"], "42");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["provider"], "lms-jwt");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    assert!(iat.abs_diff(now()) <= 2);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));

    // The same identity gets the same assertion back (no signature per request); another
    // identity its own.
    let again = echo(&gw, "/echo/b", Some(&alice), &[]);
    assert_eq!(echo_header(&again, "x-auth-assertion").unwrap(), assertion);
    let bob = echo(&gw, "/echo/c", Some(&token(7)), &[]);
    let (_, bob_claims) = verify(&set, &echo_header(&bob, "x-auth-assertion").unwrap());
    assert_eq!(bob_claims["sub"], "7");

    // No identity, no assertion, and the client's is gone.
    for path in ["/echo/public/x", "/echo/optional/x"] {
        let v = echo(&gw, path, None, &[("X-Auth-Assertion", &forged)]);
        assert_eq!(echo_header(&v, "x-auth-assertion"), None, "{path}");
    }
    let v = echo(&gw, "/echo/optional/x", Some(&alice), &[]);
    verify(&set, &echo_header(&v, "x-auth-assertion").unwrap());

    // A key change on reload (with another header name): the previous key stays published
    // for one ttl, so assertions already on their way still verify.
    std::fs::write(&gw.config, config(&mock, EC)).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .expect("reload");
    assert_eq!(r.status(), 200);
    let both = jwks(&gw);
    assert_eq!(both.keys.len(), 2);
    verify(&both, &assertion);
    let v = echo(
        &gw,
        "/echo/d",
        Some(&alice),
        &[("X_Pomerium_Jwt_Assertion", &forged)],
    );
    assert_eq!(echo_header(&v, "x-auth-assertion"), None);
    let new = echo_header(&v, "x-pomerium-jwt-assertion").unwrap();
    assert_ne!(new, forged);
    let (header, claims) = verify(&both, &new);
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        30
    );

    // A file whose key does not fit its algorithm is refused whole: same key, same header.
    let bad = EC.replace("ec-1.key.pem", "ed-1.key.pem");
    std::fs::write(&gw.config, config(&mock, &bad)).unwrap();
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .expect("reload");
    assert_eq!(r.status(), 422);
    let body: Value = r.json().unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("upstream_assertion.key_file"),
        "{body}"
    );
    let v = echo(&gw, "/echo/e", Some(&alice), &[]);
    assert_eq!(echo_header(&v, "x-pomerium-jwt-assertion").unwrap(), new);

    // `check` finds the same problem offline.
    let out = Command::new(bin("authgate"))
        .args(["check", "--config"])
        .arg(&gw.config)
        .env("JWT_SECRET", SECRET)
        .env("AG_LISTEN", "127.0.0.1:1")
        .env("AG_ADMIN", "127.0.0.1:2")
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream_assertion.key_file"), "{stderr}");
    assert!(!stderr.contains("BEGIN"), "no key material in messages");
}

#[test]
fn without_assertions_there_is_no_key_set() {
    let mock = Mock::start("m");
    let keys = repo().join("upstream-mock/keys").display().to_string();
    let yaml = config(&mock, ED).replace(
        &format!("upstream_assertion:\n{}", ED.replace("KEYS", &keys)),
        "",
    );
    assert!(!yaml.contains("upstream_assertion"));
    let gw = Gateway::start(&yaml, &[("JWT_SECRET", SECRET)]);
    let r = client()
        .get(gw.admin_url("/.well-known/jwks.json"))
        .send()
        .expect("jwks");
    assert_eq!(r.status(), 404);
    let v = echo(
        &gw,
        "/echo/a",
        Some(&token(42)),
        &[("X-Auth-Assertion", "x.y.z")],
    );
    assert_eq!(echo_header(&v, "x-auth-assertion"), None);
}
