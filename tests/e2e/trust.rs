//! Trust I: tokens mean what they say (checked against the real djangorestframework-simplejwt),
//! TLS to identity providers and upstreams with certificates made here, headers only the
//! gateway writes, and request hygiene.

use authgate_tests::certs::{issue, new_ca, self_signed};
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `tests/python/simplejwt_tokens.py` (real Django + simplejwt) with a bounded wait.
fn simplejwt(args: &[&str], stdin: Option<&Value>) -> Value {
    let script = repo().join("tests/python/simplejwt_tokens.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup installs Django and simplejwt)");
    {
        let mut input = child.stdin.take().expect("stdin");
        if let Some(v) = stdin {
            input.write_all(v.to_string().as_bytes()).expect("write");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("simplejwt_tokens.py {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "simplejwt_tokens.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from simplejwt_tokens.py")
}

fn echo_header_names(v: &Value) -> Vec<String> {
    v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p[0].as_str().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default()
}

/// A shipped example file, with its addresses pointed at this test's ports.
fn shipped_config(name: &str, mock: &Mock) -> String {
    std::fs::read_to_string(repo().join("config").join(name))
        .expect("config file")
        .replace("[\"0.0.0.0:8080\"]", "[\"${AG_LISTEN}\"]")
        .replace("\"127.0.0.1:9090\"", "\"${AG_ADMIN}\"")
        .replace("${LMS_HOST:-127.0.0.1}:8000", &mock.addr.to_string())
}

#[test]
fn only_access_tokens_minted_by_real_simplejwt_pass_as_drf_itself_decides() {
    let mock = Mock::start("m");
    let gw = Gateway::start(
        &shipped_config("simplejwt-hs256.yaml", &mock),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    let tokens = simplejwt(&["mint", MOCK_JWT_SECRET, "42"], None);
    let drf = simplejwt(&["judge", MOCK_JWT_SECRET], Some(&tokens));
    let names = [
        "access",
        "refresh",
        "rotated_refresh",
        "sliding",
        "expired_access",
    ];
    for name in names {
        let token = tokens[name].as_str().expect("token");
        let r = client()
            .get(gw.url("/api/users/42/profile/"))
            .bearer_auth(token)
            .send()
            .expect("send");
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = r.json().unwrap_or(Value::Null);
        // The gateway agrees with DRF's own JWTAuthentication on every token.
        assert_eq!(
            status == 200,
            drf[name] == "ok",
            "{name}: gateway {status} {body}, DRF says {}",
            drf[name]
        );
        match name {
            "access" => assert_eq!(status, 200, "{body}"),
            "expired_access" => assert_eq!(body["error"], "token_expired", "{body}"),
            _ => {
                assert_eq!(status, 401, "{name}: {body}");
                assert_eq!(body["error"], "invalid_token", "{name}: {body}");
                assert!(
                    challenge.contains("token_type"),
                    "{name}: the description names the claim: {challenge}"
                );
            }
        }
    }
    // Only the access token reached the upstream.
    assert_eq!(mock.count("GET /api/users"), 1);
    // A revoked access token (blacklisted, in simplejwt's words) stops working.
    let access = tokens["access"].as_str().expect("token");
    let r = client()
        .post(gw.admin_url("/admin/revoke"))
        .json(&json!({"token": access}))
        .send()
        .expect("revoke");
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/api/users/42/profile/"))
        .bearer_auth(access)
        .send()
        .expect("send");
    assert_eq!(r.status(), 401);
}

#[test]
fn the_embedded_default_refuses_the_mocks_refresh_token() {
    let mock = Mock::start("m");
    let yaml = std::fs::read_to_string(repo().join("config/default.yaml"))
        .expect("default.yaml")
        .replace("${AUTHGATE_LISTEN:-127.0.0.1:8080}", "${AG_LISTEN}")
        .replace("${AUTHGATE_ADMIN_LISTEN:-127.0.0.1:9090}", "${AG_ADMIN}");
    let gw = Gateway::start(
        &yaml,
        &[
            ("JWT_SECRET", MOCK_JWT_SECRET),
            ("UPSTREAM", &mock.addr.to_string()),
        ],
    );
    let pair: Value = client()
        .post(gw.url("/api/token/"))
        .json(&json!({"username": "alice", "password": "alice-pass"}))
        .send()
        .expect("login")
        .json()
        .expect("json");
    let search = |token: &str| {
        client()
            .get(gw.url("/api/products/search/?q=a"))
            .bearer_auth(token)
            .send()
            .expect("search")
    };
    assert_eq!(
        search(pair["access"].as_str().expect("access")).status(),
        200
    );
    let r = search(pair["refresh"].as_str().expect("refresh"));
    assert_eq!(r.status(), 401);
    let body: Value = r.json().expect("json");
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("token_type"),
        "{body}"
    );
}

#[test]
fn check_warns_about_a_jwt_provider_that_accepts_any_token_its_keys_signed() {
    let dir = TestDir::new("check-warn");
    let secret = dir.path("secret");
    std::fs::write(&secret, "a-secret-of-more-than-thirty-two-bytes!!\n").expect("write");
    let file = dir.path("c.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
upstreams: {{ u: {{ endpoints: ["127.0.0.1:1"] }} }}
auth:
  providers:
    loose: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_file: {s} }}] }}
    strict: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_file: {s} }}], required_claims: {{ token_type: access }} }}
routes: [{{ name: r, path_prefix: /, auth: required, upstream: u }}]
"#,
            s = secret.display()
        ),
    )
    .expect("write");
    let out = Command::new(bin("authgate"))
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "warnings do not fail check: {stderr}");
    assert!(
        stderr.contains("warning: auth.providers.loose:") && stderr.contains("required_claims"),
        "{stderr}"
    );
    assert!(!stderr.contains("auth.providers.strict:"), "{stderr}");
    assert!(
        stderr.contains("secret_file: the file ends with a newline"),
        "{stderr}"
    );
}

#[test]
fn secret_file_bytes_are_the_secret_exactly_trailing_newline_included() {
    let mock = Mock::start("m");
    let dir = TestDir::new("secret-file");
    let secret = "file-secret-0123456789-0123456789\n";
    std::fs::write(dir.path("secret"), secret).expect("write");
    let gw = Gateway::start(
        &format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    p: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_file: {d}/secret }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
routes: [{{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}]
"#,
            m = mock.addr,
            d = dir.0.display()
        ),
        &[],
    );
    let claims = json!({"user_id": 1, "exp": tokens::now() + 600, "token_type": "access"});
    let call = |key: &str| {
        client()
            .get(gw.url("/echo/x"))
            .bearer_auth(tokens::sign(Algorithm::HS256, key, None, &claims))
            .send()
            .expect("send")
            .status()
    };
    assert_eq!(
        call(secret),
        200,
        "signed with the file's bytes, newline included"
    );
    assert_eq!(
        call(secret.trim_end()),
        401,
        "the trimmed secret is another key"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS to identity providers and upstreams, with certificates made here.

/// An authgate terminating TLS with `dir`'s certificate in front of the mock, every route
/// public: the https JWKS, introspection endpoint or upstream the test talks to.
fn tls_front(dir: &Path, mock: &Mock) -> (Gateway, u16) {
    let port = free_port();
    let gw = Gateway::start(
        &format!(
            r#"
server:
  listen: ["${{AG_LISTEN}}"]
  tls: {{ listen: "127.0.0.1:{port}", cert_file: {d}/server.pem, key_file: {d}/server.key }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ idp: {{ endpoints: ["{m}"] }} }}
routes: [{{ name: all, path_prefix: /, auth: none, upstream: idp }}]
"#,
            d = dir.display(),
            m = mock.addr
        ),
        &[],
    );
    (gw, port)
}

fn idp_edge(mock: &Mock, front: u16, ca_line: &str) -> Gateway {
    Gateway::start(
        &format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    idp:
      type: jwt
      algorithms: [RS256]
      jwks_url: https://localhost:{front}/.well-known/jwks.json
      audience: [lms-api]
      {ca_line}
    knox:
      type: introspection
      url: https://localhost:{front}/api/auth/introspect/
      client_id: {cid}
      client_secret_env: INTROSPECTION_SECRET
      timeout: 2s
      {ca_line}
routes: [{{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}]
"#,
            m = mock.addr,
            cid = MOCK_INTROSPECTION.0,
        ),
        &[("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1)],
    )
}

fn rs256_token() -> String {
    tokens::sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "jwks-user", "aud": "lms-api", "exp": tokens::now() + 600}),
    )
}

fn opaque_token(mock: &Mock) -> String {
    let v: Value = client()
        .post(mock.url("/__mock/opaque"))
        .json(&json!({"sub": "opaque-user", "ttl_s": 600}))
        .send()
        .expect("opaque")
        .json()
        .expect("json");
    v["token"].as_str().expect("token").to_string()
}

fn subject_seen(gw: &Gateway, token: &str) -> (u16, Option<String>) {
    let r = client()
        .get(gw.url("/echo/x"))
        .bearer_auth(token)
        .send()
        .expect("send");
    let status = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    (status, echo_header(&v, "x-auth-subject"))
}

#[test]
fn jwks_and_introspection_over_https_with_a_certificate_made_here() {
    let mock = Mock::start("m");
    let dir = TestDir::new("idp-tls");
    let ca = new_ca("idp test ca");
    issue(&ca, &dir.0, "server.pem", "server.key");
    std::fs::write(dir.path("ca.pem"), ca.cert.pem()).expect("write");
    let (_front, port) = tls_front(&dir.0, &mock);
    let ca_line = format!("ca_file: {}/ca.pem", dir.0.display());
    let edge = idp_edge(&mock, port, &ca_line);
    edge.wait_ready();
    assert_eq!(
        subject_seen(&edge, &rs256_token()),
        (200, Some("jwks-user".into())),
        "a JWKS fetched over https verified the token"
    );
    assert_eq!(
        subject_seen(&edge, &opaque_token(&mock)),
        (200, Some("opaque-user".into())),
        "introspection over https"
    );

    // Without the CA the identity provider is not trusted: 503, never a pass, and the log
    // says why.
    let untrusted = idp_edge(&mock, port, "");
    assert_eq!(subject_seen(&untrusted, &rs256_token()).0, 503);
    assert_eq!(subject_seen(&untrusted, &opaque_token(&mock)).0, 503);
    wait_until("the TLS cause in the log", WAIT, || {
        let log = untrusted.proc.output();
        log.contains("JWKS fetch failed")
            && log.contains("introspection request failed")
            && log.contains("UnknownIssuer")
    });
    assert_eq!(
        mock.count("GET /echo"),
        2,
        "only the trusted requests went up"
    );
}

#[test]
fn a_pinned_self_signed_ca_true_certificate_is_trusted_for_an_idp_and_an_upstream() {
    let mock = Mock::start("m");
    let dir = TestDir::new("pinned");
    let pem = self_signed(&dir.0, true);
    std::fs::write(dir.path("pin.pem"), &pem).expect("write");
    let (_front, port) = tls_front(&dir.0, &mock);

    // The identity provider's own certificate, pinned.
    let edge = idp_edge(
        &mock,
        port,
        &format!("ca_file: {}/pin.pem", dir.0.display()),
    );
    edge.wait_ready();
    assert_eq!(subject_seen(&edge, &rs256_token()).0, 200);
    assert_eq!(subject_seen(&edge, &opaque_token(&mock)).0, 200);

    // The upstream's own certificate, pinned: accepted; another self-signed one: 502 with
    // the cause in the log.
    let upstream = |ca: &str| {
        Gateway::start(
            &format!(
                r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["127.0.0.1:{port}"], tls: true, sni: localhost, ca_file: {ca} }} }}
routes: [{{ name: r, path_prefix: /, auth: none, upstream: lms }}]
"#
            ),
            &[],
        )
    };
    let pinned = upstream(&format!("{}/pin.pem", dir.0.display()));
    let r = client()
        .get(pinned.url("/echo/pinned"))
        .send()
        .expect("send");
    assert_eq!(r.status(), 200, "pinned CA:TRUE upstream certificate");
    let other_dir = TestDir::new("other-pin");
    self_signed(&other_dir.0, true);
    let wrong = upstream(&format!("{}/server.pem", other_dir.0.display()));
    let r = client().get(wrong.url("/echo/wrong")).send().expect("send");
    assert_eq!(r.status(), 502);
    wait_until("the pin failure in the log", WAIT, || {
        wrong
            .proc
            .output()
            .contains("not the one pinned in ca_file")
    });
    // A CA that did not sign it: 502, with webpki's reason logged.
    let ca_dir = TestDir::new("unrelated-ca");
    std::fs::write(ca_dir.path("ca.pem"), new_ca("unrelated").cert.pem()).expect("write");
    let unrelated = upstream(&format!("{}/ca.pem", ca_dir.0.display()));
    let r = client().get(unrelated.url("/echo/x")).send().expect("send");
    assert_eq!(r.status(), 502);
    wait_until("the TLS cause in the log", WAIT, || {
        let log = unrelated.proc.output();
        log.contains("upstream connection failed") && log.contains("invalid peer certificate")
    });
    assert_eq!(mock.count("GET /echo/wrong"), 0);
}

// ---------------------------------------------------------------------------------------------
// Headers only the gateway writes, and request hygiene.

fn hygiene_config(mock: &Mock, extra_server: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] {extra_server} }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
    keys:
      type: api_key
      header: X-API-Key
      keys: [{{ id: ci, sha256: "{digest}", subject: "service:ci" }}]
    knox:
      type: introspection
      url: http://{m}/api/auth/introspect/
      client_id: {cid}
      client_secret_env: INTROSPECTION_SECRET
    knox-names:
      type: introspection
      url: http://{m}/api/auth/introspect/
      client_id: {cid}
      client_secret_env: INTROSPECTION_SECRET
      subject_field: username
routes:
  - {{ name: public, path_prefix: /echo/public/, auth: none, upstream: lms }}
  - {{ name: optional, path_prefix: /echo/optional/, auth: optional, upstream: lms }}
  - {{ name: keys, path_prefix: /echo/keys/, auth: {{ providers: [keys] }}, upstream: lms }}
  - {{ name: names, path_prefix: /echo/names/, auth: {{ providers: [knox-names] }}, upstream: lms }}
  - {{ name: private, path_prefix: /echo/, auth: {{ providers: [simple, knox] }}, upstream: lms }}
"#,
        m = mock.addr,
        cid = MOCK_INTROSPECTION.0,
        digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"ci-key")),
    )
}

fn hygiene_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("JWT_SECRET", MOCK_JWT_SECRET),
        ("INTROSPECTION_SECRET", MOCK_INTROSPECTION.1),
    ]
}

fn access(user: u64) -> String {
    tokens::sign(
        Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": user, "exp": tokens::now() + 600, "token_type": "access"}),
    )
}

#[test]
fn underscore_spellings_of_gateway_headers_never_reach_the_upstream() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&hygiene_config(&mock, ""), &hygiene_env());
    let spoof = "X_Auth_Subject: 1\r\nX_AUTH_SCOPES: admin\r\nx-auth_provider: root\r\n\
                 X_Forwarded_For: 10.9.9.9\r\nX_Forwarded_Proto: https\r\nX_Forwarded_Host: evil\r\n\
                 X_Real_IP: 10.9.9.9\r\nX_Request_Id: spoofed\r\nX_Request_Timeout_Ms: 1\r\n\
                 X_Custom_Thing: kept\r\n";
    let token = access(42);
    for (target, auth) in [
        ("/echo/public/x", String::new()),
        ("/echo/optional/x", String::new()),
        (
            "/echo/optional/x",
            format!("Authorization: Bearer {token}\r\n"),
        ),
        ("/echo/x", format!("Authorization: Bearer {token}\r\n")),
    ] {
        let r = raw_get(gw.addr, target, &format!("{spoof}{auth}"));
        assert_eq!(r.status, 200, "{target}");
        let v = r.json();
        let names = echo_header_names(&v);
        for n in &names {
            assert!(
                !n.contains('_') || n == "x_custom_thing",
                "{target}: {n} reached the upstream"
            );
        }
        assert!(
            names.contains(&"x_custom_thing".to_string()),
            "{target}: other underscores pass"
        );
        let subject = echo_header(&v, "x-auth-subject");
        if auth.is_empty() {
            assert_eq!(subject, None, "{target}: anonymous stays anonymous");
        } else {
            assert_eq!(subject.as_deref(), Some("42"), "{target}");
        }
        assert_ne!(echo_header(&v, "x-request-id").as_deref(), Some("spoofed"));
    }
}

#[test]
fn more_than_one_credential_header_is_refused_and_nothing_is_forwarded() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&hygiene_config(&mock, ""), &hygiene_env());
    let (a, b) = (access(1), access(2));
    for (target, headers) in [
        (
            "/echo/x",
            format!("Authorization: Bearer {a}\r\nAuthorization: Bearer {b}\r\n"),
        ),
        (
            "/echo/public/x",
            format!("Authorization: Bearer {a}\r\nauthorization: Bearer forged\r\n"),
        ),
        (
            "/echo/keys/x",
            "X-API-Key: ci-key\r\nX-API-Key: other\r\n".to_string(),
        ),
    ] {
        let r = raw_get(gw.addr, target, &headers);
        assert_eq!(r.status, 400, "{target}");
        let v = r.json();
        assert_eq!(v["error"], "bad_request");
        assert!(v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("more than one"));
    }
    // One of each is fine.
    assert_eq!(
        raw_get(gw.addr, "/echo/keys/x", "X-API-Key: ci-key\r\n").status,
        200
    );
    assert_eq!(
        mock.count("GET /echo"),
        1,
        "nothing refused reached the upstream"
    );
}

#[test]
fn introspection_takes_the_subject_from_sub_or_the_named_field_only() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&hygiene_config(&mock, ""), &hygiene_env());
    let opaque = |body: Value| -> String {
        let v: Value = client()
            .post(mock.url("/__mock/opaque"))
            .json(&body)
            .send()
            .expect("opaque")
            .json()
            .expect("json");
        v["token"].as_str().expect("token").to_string()
    };
    let with_sub = opaque(json!({"sub": "7", "username": "alice"}));
    let without_sub = opaque(json!({"sub": "8", "username": "1", "omit_sub": true}));
    let call = |path: &str, t: &str| {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(t)
            .send()
            .expect("send");
        let status = r.status().as_u16();
        let v: Value = r.json().unwrap_or(Value::Null);
        (status, echo_header(&v, "x-auth-subject"))
    };
    assert_eq!(call("/echo/x", &with_sub), (200, Some("7".into())));
    // An answer naming only a username is not a user id: refused, never "1".
    assert_eq!(call("/echo/x", &without_sub).0, 401);
    // A provider that says its subject is the username gets the username.
    assert_eq!(
        call("/echo/names/x", &with_sub),
        (200, Some("alice".into()))
    );
}

#[test]
fn response_headers_named_in_the_upstreams_connection_header_are_dropped() {
    let mock = Mock::start("m");
    let gw = Gateway::start(&hygiene_config(&mock, ""), &hygiene_env());
    let r = client()
        .get(gw.url("/echo/public/x"))
        .header(
            "X-Mock-Response-Header",
            "Connection: X-Internal-Token, x-debug",
        )
        .header("X-Mock-Response-Header", "X-Internal-Token: secret")
        .header("X-Mock-Response-Header", "X-Debug: 1")
        .header("X-Mock-Response-Header", "X-Kept: yes")
        .send()
        .expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-internal-token").is_none());
    assert!(r.headers().get("x-debug").is_none());
    assert_eq!(r.headers()["x-kept"], "yes");
}

#[test]
fn encoded_slashes_are_refused_by_default_or_kept_as_ordinary_characters() {
    let mock = Mock::start("m");
    let reject = Gateway::start(&hygiene_config(&mock, ""), &hygiene_env());
    let r = raw_get(reject.addr, "/echo/public/a%2Fb", "");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    let keep = Gateway::start(
        &hygiene_config(&mock, ", encoded_slashes: keep"),
        &hygiene_env(),
    );
    let r = raw_get(keep.addr, "/echo/public/a%2Fb/../c%5Cd", "");
    assert_eq!(r.status, 200);
    // "a%2Fb" was one segment, so ".." removed it whole; the escape went up as an escape.
    assert_eq!(r.json()["path"], "/echo/public/c%5Cd");
    let r = raw_get(keep.addr, "/echo/public/a%2fb", "");
    assert_eq!(r.json()["path"], "/echo/public/a%2Fb");
    // Routing sees an ordinary character: "%2F" never makes "/echo" + "/x" a new route.
    let r = raw_get(keep.addr, "/echo%2Fpublic/x", "");
    assert_eq!(
        r.status, 404,
        "no route: /echo%2Fpublic is one segment, not /echo/public"
    );
}

#[test]
fn rediss_with_a_ca_file_carries_shared_limits_and_cached_tokens() {
    let mock = Mock::start("m");
    let dir = TestDir::new("rediss");
    let ca = new_ca("redis test ca");
    issue(&ca, &dir.0, "server.pem", "server.key");
    std::fs::write(dir.path("ca.pem"), ca.cert.pem()).expect("write");
    let redis = Redis::start_tls(&dir.0);
    let port = redis.port;
    let gw = Gateway::start(
        &format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
redis: {{ url: "rediss://localhost:{port}/0", ca_file: {d}/ca.pem, command_timeout: 500ms }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
rate_limits:
  shared: {{ rate: 1/m, burst: 2, key: subject, scope: shared }}
routes: [{{ name: r, path_prefix: /echo/, auth: required, rate_limit: shared, upstream: lms }}]
"#,
            d = dir.0.display(),
            m = mock.addr
        ),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    let token = access(5);
    let statuses: Vec<u16> = (0..3)
        .map(|_| {
            client()
                .get(gw.url("/echo/x"))
                .bearer_auth(&token)
                .send()
                .expect("send")
                .status()
                .as_u16()
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let m = gw.metrics();
    for op in ["ratelimit", "cache_set", "cache_get"] {
        assert_eq!(
            metric(&m, "authgate_redis_errors_total", &[("op", op)]),
            0.0,
            "{op}: Redis answered over TLS"
        );
    }
    assert_eq!(
        metric(
            &m,
            "authgate_rate_limit_fallbacks_total",
            &[("policy", "shared")]
        ),
        0.0
    );
    // The limiter state and the cached identity are in that Redis.
    let out = Command::new("redis-cli")
        .args(["--tls", "-h", "localhost", "-p", &port.to_string()])
        .arg("--cacert")
        .arg(dir.path("ca.pem"))
        .args(["--scan", "--pattern", "authgate:*"])
        .output()
        .expect("redis-cli");
    let keys = String::from_utf8_lossy(&out.stdout);
    assert!(keys.contains("authgate:rl:shared:"), "{keys}");
    assert!(keys.contains("authgate:tok:"), "{keys}");
}

/// The same ECDSA signature written as (r, n - s): a different token string that verifies.
fn reencoded_es256(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    // The order of P-256.
    const N: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];
    let (input, sig) = token.rsplit_once('.').expect("jwt");
    let mut sig = B64.decode(sig).expect("b64");
    assert_eq!(sig.len(), 64);
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(N[i]) - i16::from(sig[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        sig[32 + i] = d.rem_euclid(256) as u8;
    }
    format!("{input}.{}", B64.encode(sig))
}

#[test]
fn revoking_an_ecdsa_token_revokes_its_jti_so_a_reencoded_signature_does_not_escape() {
    let mock = Mock::start("m");
    let pem = tokens::key_file("ec-1", "pub");
    let gw = Gateway::start(
        &format!(
            r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    ec: {{ type: jwt, algorithms: [ES256], keys: [{{ public_key_file: {pem} }}], audience: [api] }}
routes:
  - {{ name: logout, path: /echo/logout/, methods: [POST], auth: required, revokes_token: true, upstream: lms }}
  - {{ name: r, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
            m = mock.addr,
            pem = pem.display()
        ),
        &[],
    );
    let status = |t: &str| {
        client()
            .get(gw.url("/echo/x"))
            .bearer_auth(t)
            .send()
            .expect("send")
            .status()
            .as_u16()
    };
    let mint = |jti: &str| {
        tokens::sign(
            Algorithm::ES256,
            "ec-1",
            None,
            &json!({"sub": "u", "aud": "api", "exp": tokens::now() + 600, "jti": jti}),
        )
    };
    // By the admin API.
    let token = mint("jti-admin");
    let twin = reencoded_es256(&token);
    assert_ne!(token, twin);
    assert_eq!(status(&twin), 200, "the re-encoded signature verifies");
    let r = client()
        .post(gw.admin_url("/admin/revoke"))
        .json(&json!({"token": token}))
        .send()
        .expect("revoke");
    assert_eq!(r.status(), 200);
    assert_eq!(status(&token), 401);
    assert_eq!(status(&twin), 401, "the twin has the same jti");
    // By a logout.
    let token = mint("jti-logout");
    let twin = reencoded_es256(&token);
    let r = client()
        .post(gw.url("/echo/logout/"))
        .bearer_auth(&token)
        .send()
        .expect("logout");
    assert_eq!(r.status(), 200);
    assert_eq!(
        status(&twin),
        401,
        "logged out, whatever the signature's encoding"
    );
}

#[test]
fn health_checks_of_a_tls_upstream_trust_its_ca_file_or_pin() {
    let mock = Mock::start("m");
    // A private CA, and a pinned CA:TRUE self-signed certificate.
    let ca_dir = TestDir::new("hc-ca");
    let ca = new_ca("hc ca");
    issue(&ca, &ca_dir.0, "server.pem", "server.key");
    std::fs::write(ca_dir.path("ca.pem"), ca.cert.pem()).expect("write");
    let (_front_ca, ca_port) = tls_front(&ca_dir.0, &mock);
    let pin_dir = TestDir::new("hc-pin");
    let pem = self_signed(&pin_dir.0, true);
    std::fs::write(pin_dir.path("pin.pem"), &pem).expect("write");
    let (_front_pin, pin_port) = tls_front(&pin_dir.0, &mock);
    for (port, ca_file) in [
        (ca_port, ca_dir.path("ca.pem")),
        (pin_port, pin_dir.path("pin.pem")),
    ] {
        let gw = Gateway::start(
            &format!(
                r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms:
    endpoints: ["127.0.0.1:{port}"]
    tls: true
    sni: localhost
    ca_file: {ca}
    health_check: {{ path: /health/, interval: 1s }}
routes: [{{ name: r, path_prefix: /, auth: none, upstream: lms }}]
"#,
                ca = ca_file.display()
            ),
            &[],
        );
        // Checks that reach the mock passed the TLS handshake with the upstream.
        let before = mock.count("GET /health");
        wait_until("two health checks through TLS", WAIT, || {
            mock.count("GET /health") >= before + 2
        });
        gw.wait_ready();
        let r = client().get(gw.url("/echo/hc")).send().expect("send");
        assert_eq!(r.status(), 200, "{}", ca_file.display());
    }
}
