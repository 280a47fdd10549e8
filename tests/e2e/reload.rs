//! A reload is all or nothing: a file that fails anywhere changes nothing running.

use authgate_tests::certs::self_signed;
use authgate_tests::*;
use jsonwebtoken::Algorithm;
use std::path::Path;

fn reload(gw: &Gateway) -> (u16, Value) {
    let r = client()
        .post(gw.admin_url("/admin/reload"))
        .send()
        .expect("reload");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn config(mock: &Mock, extra_provider: &str, upstream_host: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{m}"] }}
  other: {{ endpoints: ["{upstream_host}"] }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
    {extra_provider}
routes:
  - {{ name: jwks, path_prefix: /echo/jwks/, auth: {{ providers: [issuer] }}, upstream: lms }}
  - {{ name: r, path_prefix: /, auth: required, upstream: lms }}
"#,
        m = mock.addr
    )
}

/// A token the mock's JWKS key `rsa-1` signed, for the `issuer` provider.
fn issuer_token() -> String {
    tokens::sign(
        Algorithm::RS256,
        "rsa-1",
        Some("rsa-1"),
        &json!({"sub": "k", "aud": "api", "exp": tokens::now() + 600}),
    )
}

fn jwks_route_status(gw: &Gateway, token: &str) -> reqwest::StatusCode {
    client()
        .get(gw.url("/echo/jwks/x"))
        .bearer_auth(token)
        .send()
        .expect("send")
        .status()
}

#[test]
fn a_rejected_reload_leaves_no_half_built_jwks_provider_behind() {
    let mock = Mock::start("m");
    let issuer = format!(
        r#"issuer: {{ type: jwt, algorithms: [RS256], jwks_url: "http://{}/.well-known/jwks.json", audience: [api] }}"#,
        mock.addr
    );
    // Start with the issuer on static keys only.
    let pem = tokens::key_file("rsa-1", "pub");
    let static_issuer = format!(
        r#"issuer: {{ type: jwt, algorithms: [RS256], keys: [{{ public_key_file: {} }}], audience: [api] }}"#,
        pem.display()
    );
    let gw = Gateway::start(
        &config(&mock, &static_issuer, &mock.addr.to_string()),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    gw.wait_ready();
    // Reload 1 adds the JWKS and fails later, on an upstream that does not resolve.
    std::fs::write(
        &gw.config,
        config(&mock, &issuer, "no-such-host.invalid:80"),
    )
    .expect("write");
    let (status, body) = reload(&gw);
    assert_eq!(status, 422, "{body}");
    // Reload 2 is good: the JWKS store it needs is new, fetched and kept ready.
    std::fs::write(&gw.config, config(&mock, &issuer, &mock.addr.to_string())).expect("write");
    let (status, body) = reload(&gw);
    assert_eq!(status, 200, "{body}");
    gw.wait_ready();
    assert_eq!(jwks_route_status(&gw, &issuer_token()), 200);
}

#[test]
fn a_reload_that_changes_only_jwks_timers_keeps_the_keys_while_the_issuer_is_down() {
    let mock = Mock::start("m");
    let issuer = |refresh: &str| {
        format!(
            r#"issuer: {{ type: jwt, algorithms: [RS256], jwks_url: "http://{}/.well-known/jwks.json", jwks_refresh: {refresh}, audience: [api] }}"#,
            mock.addr
        )
    };
    let gw = Gateway::start(
        &config(&mock, &issuer("1h"), &mock.addr.to_string()),
        &[("JWT_SECRET", MOCK_JWT_SECRET)],
    );
    gw.wait_ready();
    let t = issuer_token();
    assert_eq!(jwks_route_status(&gw, &t), 200);
    client()
        .post(mock.url("/__mock/jwks/fail?on=true"))
        .send()
        .expect("fail the JWKS");
    // A new store (timers are fixed per store), seeded with the running one's keys: the
    // issuer being down at reload time costs nothing.
    std::fs::write(
        &gw.config,
        config(&mock, &issuer("30m"), &mock.addr.to_string()),
    )
    .expect("write");
    let (code, body) = reload(&gw);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        jwks_route_status(&gw, &t),
        200,
        "the keys were kept across the reload"
    );
    let ready = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .expect("readyz");
    assert_eq!(ready.status(), 200, "still ready: the keys are loaded");
}

fn tls_config(dir: &Path, tls_port: u16, upstream: &str) -> String {
    format!(
        r#"
server:
  listen: ["${{AG_LISTEN}}"]
  tls: {{ listen: "127.0.0.1:{tls_port}", cert_file: {d}/server.pem, key_file: {d}/server.key }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{upstream}"] }} }}
routes: [{{ name: r, path_prefix: /, auth: none, upstream: lms }}]
"#,
        d = dir.display()
    )
}

fn served_by(port: u16, pem: &str) -> bool {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .build()
        .expect("client")
        .get(format!("https://localhost:{port}/echo/x"))
        .send()
        .is_ok_and(|r| r.status() == 200)
}

#[test]
fn a_rejected_reload_keeps_the_running_certificate() {
    let mock = Mock::start("m");
    let dir = TestDir::new("reload-cert");
    let old = self_signed(&dir.0, false);
    let port = free_port();
    let gw = Gateway::start(&tls_config(&dir.0, port, &mock.addr.to_string()), &[]);
    assert!(served_by(port, &old));
    // A renewed certificate in a file that fails elsewhere: rejected, the old one stays.
    let new = self_signed(&dir.0, false);
    std::fs::write(
        &gw.config,
        tls_config(&dir.0, port, "no-such-host.invalid:80"),
    )
    .expect("write");
    let (status, body) = reload(&gw);
    assert_eq!(status, 422, "{body}");
    assert!(
        served_by(port, &old),
        "the rejected reload swapped the certificate"
    );
    assert!(!served_by(port, &new));
    // The same certificate with a good file: served from then on.
    std::fs::write(&gw.config, tls_config(&dir.0, port, &mock.addr.to_string())).expect("write");
    let (status, body) = reload(&gw);
    assert_eq!(status, 200, "{body}");
    assert!(served_by(port, &new));
}
