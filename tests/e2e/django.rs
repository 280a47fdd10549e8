//! A real Django + DRF API (`tests/django_app`) behind authgate, trusting nothing but the
//! gateway's signed assertion (`integrations/django`): log in through the gateway with
//! simplejwt's own views, search, read a profile only its owner may read, refresh, log out.

use authgate_tests::tokens::now;
use authgate_tests::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "django-e2e-signing-key-of-32-bytes!";
const ISSUER: &str = "https://authgate.test";

struct Stack {
    gw: Gateway,
    django: SocketAddr,
    _django: Proc,
    _dir: TestDir,
}

fn start() -> Stack {
    let keys = repo().join("upstream-mock/keys");
    let django: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let yaml = format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{django}"] }}
auth:
  refresh_endpoint: /api/token/refresh/
  login_endpoint: /api/token/
  providers:
    simplejwt:
      type: jwt
      algorithms: [HS256]
      keys: [{{ secret_env: JWT_SECRET }}]
      subject_claim: user_id
      required_claims: {{ token_type: access }}
upstream_assertion:
  algorithm: EdDSA
  key_file: {keys}/ed-1.key.pem
  issuer: {ISSUER}
  ttl: 60s
routes:
  - {{ name: token, path_prefix: /api/token/, auth: none, upstream: lms }}
  - {{ name: logout, path: /api/auth/logout/, methods: [POST], auth: required, revokes_token: true, upstream: lms }}
  - {{ name: whoami, path: /api/whoami/, auth: optional, upstream: lms }}
  - {{ name: api, path_prefix: /api/, auth: required, upstream: lms }}
"#,
        keys = keys.display()
    );
    let gw = Gateway::start(&yaml, &[("JWT_SECRET", SECRET)]);
    let dir = TestDir::new("django");
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("tests/django_app/serve.py"))
        .arg("--listen")
        .arg(django.to_string())
        .arg("--db")
        .arg(dir.path("db.sqlite3"))
        .env("JWT_SECRET", SECRET)
        .env("AUTHGATE_JWKS_URL", gw.admin_url("/.well-known/jwks.json"))
        .env("AUTHGATE_ISSUER", ISSUER)
        .env("AUTHGATE_AUDIENCE", "lms")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut proc = Proc::spawn("django", &mut cmd, dir.path("django.log"));
    wait_until("Django to say ready", Duration::from_secs(60), || {
        assert!(proc.is_running(), "Django exited:\n{}", proc.output());
        proc.output().contains("ready ")
    });
    wait_port(django, Duration::from_secs(10));
    Stack {
        gw,
        django,
        _django: proc,
        _dir: dir,
    }
}

fn post(url: String, body: Value, bearer: Option<&str>) -> (u16, Value) {
    let mut rq = client().post(url).json(&body);
    if let Some(t) = bearer {
        rq = rq.bearer_auth(t);
    }
    let r = rq.send().expect("send");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn get(url: String, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut rq = client().get(url);
    for (k, v) in headers {
        rq = rq.header(*k, *v);
    }
    let r = rq.send().expect("send");
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn login(s: &Stack, user: &str) -> (String, String) {
    let (status, v) = post(
        s.gw.url("/api/token/"),
        json!({"username": user, "password": format!("{user}-pass")}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    (
        v["access"].as_str().unwrap().to_string(),
        v["refresh"].as_str().unwrap().to_string(),
    )
}

/// An assertion signed directly, as an attacker with (or without) the gateway's key would.
fn assertion(key: &str, alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.typ = Some("authgate+jwt".into());
    h.kid = Some(kid.into());
    let pem = std::fs::read(tokens::key_file(key, "key")).unwrap();
    let k = match alg {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    encode(&h, &claims, &k).unwrap()
}

#[test]
fn a_drf_api_behind_the_gateway_trusts_only_the_assertion() {
    let s = start();
    let bearer = |t: &str| format!("Bearer {t}");

    // Log in through the gateway: simplejwt's real TokenObtainPairView.
    let (access, refresh) = login(&s, "alice");
    let (status, me) = get(
        s.gw.url("/api/whoami/"),
        &[("Authorization", &bearer(&access))],
    );
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["username"], "alice");
    let alice_id = me["user_id"].as_u64().unwrap();
    assert_eq!(me["claims"]["sub"], alice_id.to_string());
    assert_eq!(me["claims"]["aud"], "lms");
    assert_eq!(me["claims"]["iss"], ISSUER);
    assert_eq!(me["claims"]["provider"], "simplejwt");

    // Search, and a profile only its owner may read.
    let (status, page) = get(
        s.gw.url("/api/products/search/?q=a&page=2&page_size=5"),
        &[("Authorization", &bearer(&access))],
    );
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["results"].as_array().unwrap().len(), 5);
    assert!(page["count"].as_u64().unwrap() > 5);
    assert!(
        page["previous"].is_string() && page["next"].is_string(),
        "{page}"
    );
    let (status, profile) = get(
        s.gw.url(&format!("/api/users/{alice_id}/profile/")),
        &[("Authorization", &bearer(&access))],
    );
    assert_eq!(status, 200, "{profile}");
    assert_eq!(profile["username"], "alice");
    let (bob_access, _) = login(&s, "bob");
    let (status, _) = get(
        s.gw.url(&format!("/api/users/{alice_id}/profile/")),
        &[("Authorization", &bearer(&bob_access))],
    );
    assert_eq!(status, 403, "bob cannot read alice's profile");

    // The gateway's key, in an attacker's hands, still cannot pass through the gateway: a
    // client's assertion is removed, with a token (the token's identity wins) or without one.
    let kid = {
        let (_, set) = get(s.gw.admin_url("/.well-known/jwks.json"), &[]);
        set["keys"][0]["kid"].as_str().unwrap().to_string()
    };
    let as_alice = assertion(
        "ed-1",
        Algorithm::EdDSA,
        &kid,
        json!({"iss": ISSUER, "aud": "lms", "sub": alice_id.to_string(), "scope": "", "provider": "simplejwt", "iat": now(), "exp": now() + 60, "jti": "x"}),
    );
    let (status, me) = get(
        s.gw.url("/api/whoami/"),
        &[
            ("Authorization", &bearer(&bob_access)),
            ("X-Auth-Assertion", &as_alice),
        ],
    );
    assert_eq!((status, me["username"].as_str()), (200, Some("bob")));
    let (status, body) = get(s.gw.url("/api/whoami/"), &[("X-Auth-Assertion", &as_alice)]);
    assert_eq!(status, 401, "anonymous through the gateway: {body}");

    // Straight to Django, bypassing the gateway: the plain identity headers mean nothing, a
    // forged or expired assertion is refused, and only the gateway's key makes one that works.
    let direct = |h: &[(&str, &str)]| get(format!("http://{}/api/whoami/", s.django), h);
    let id = alice_id.to_string();
    let (status, body) = direct(&[("X-Auth-Subject", &id), ("X-Auth-Provider", "simplejwt")]);
    assert_eq!(status, 401, "{body}");
    let forged = assertion(
        "ec-1",
        Algorithm::ES256,
        &kid,
        json!({"iss": ISSUER, "aud": "lms", "sub": id, "scope": "", "provider": "simplejwt", "iat": now(), "exp": now() + 60, "jti": "f"}),
    );
    let (status, body) = direct(&[("X-Auth-Assertion", &forged)]);
    assert_eq!(status, 401, "forged: {body}");
    let expired = assertion(
        "ed-1",
        Algorithm::EdDSA,
        &kid,
        json!({"iss": ISSUER, "aud": "lms", "sub": id, "scope": "", "provider": "simplejwt", "iat": now() - 600, "exp": now() - 300, "jti": "e"}),
    );
    let (status, body) = direct(&[("X-Auth-Assertion", &expired)]);
    assert_eq!(status, 401, "expired: {body}");
    let other_upstream = assertion(
        "ed-1",
        Algorithm::EdDSA,
        &kid,
        json!({"iss": ISSUER, "aud": "billing", "sub": id, "scope": "", "provider": "simplejwt", "iat": now(), "exp": now() + 60, "jti": "a"}),
    );
    let (status, body) = direct(&[("X-Auth-Assertion", &other_upstream)]);
    assert_eq!(status, 401, "another upstream's: {body}");
    let (status, body) = direct(&[("X-Auth-Assertion", &as_alice)]);
    assert_eq!(
        (status, body["username"].as_str()),
        (200, Some("alice")),
        "the control: the gateway's own key passes"
    );

    // Refresh through the gateway (simplejwt's TokenRefreshView), then log out: the gateway
    // revokes the presented access token, Django blacklists the refresh token.
    let (status, v) = post(
        s.gw.url("/api/token/refresh/"),
        json!({"refresh": refresh}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let fresh = v["access"].as_str().unwrap().to_string();
    let (status, _) = get(
        s.gw.url("/api/whoami/"),
        &[("Authorization", &bearer(&fresh))],
    );
    assert_eq!(status, 200);
    let (status, v) = post(
        s.gw.url("/api/auth/logout/"),
        json!({"refresh": refresh}),
        Some(&fresh),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = get(
        s.gw.url(&format!("/api/users/{alice_id}/profile/")),
        &[("Authorization", &bearer(&fresh))],
    );
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_token")));
    let (status, v) = post(
        s.gw.url("/api/token/refresh/"),
        json!({"refresh": refresh}),
        None,
    );
    assert_eq!(status, 401, "a blacklisted refresh token: {v}");
}
