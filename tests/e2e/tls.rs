//! TLS termination with HTTP/2, HSTS, TLS to upstreams, and certificate reload.

use authgate_tests::certs::{issue, new_ca, Ca};
use authgate_tests::*;
use std::path::Path;

fn tls_client(ca: &Ca) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn config(dir: &Path, upstream: &str, upstream_tls: &str) -> String {
    format!(
        r#"
server:
  listen: ["${{AG_LISTEN}}"]
  tls: {{ listen: "${{AG_TLS}}", cert_file: {d}/server.pem, key_file: {d}/server.key }}
  grace_period: 1s
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams:
  lms: {{ endpoints: ["{upstream}"] {upstream_tls} }}
routes:
  - {{ name: secure, path_prefix: /echo/secure/, auth: none, response_headers: {{ X-Frame-Options: DENY, X-Content-Type-Options: nosniff }}, upstream: lms }}
  - {{ name: open, path_prefix: /, auth: none, upstream: lms }}
"#,
        d = dir.display()
    )
}

#[test]
fn https_with_http2_hsts_and_security_headers() {
    let dir = TestDir::new("tls");
    let ca = new_ca("test ca");
    issue(&ca, &dir.0, "server.pem", "server.key");
    let mock = Mock::start("m");
    let tls_port = free_port();
    let gw = Gateway::start(
        &config(&dir.0, &mock.addr.to_string(), ""),
        &[("AG_TLS", &format!("127.0.0.1:{tls_port}"))],
    );
    let c = tls_client(&ca);
    let r = c
        .get(format!("https://localhost:{tls_port}/echo/secure/x"))
        .send()
        .expect("https request");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.version(),
        reqwest::Version::HTTP_2,
        "ALPN should pick HTTP/2"
    );
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let v: Value = r.json().unwrap();
    assert_eq!(
        echo_header(&v, "x-forwarded-proto").as_deref(),
        Some("https")
    );
    // Gateway-made answers over TLS carry them too.
    let r = c
        .get(format!("https://127.0.0.1:{tls_port}/echo/secure/%zz"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.headers().contains_key("strict-transport-security"));
    // HTTP/1.1 over TLS still works, and the plain listener stays HTTP/1.1 without HSTS.
    let h1 = reqwest::blocking::Client::builder()
        .no_proxy()
        .http1_only()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        h1.get(format!("https://localhost:{tls_port}/echo/x"))
            .send()
            .unwrap()
            .version(),
        reqwest::Version::HTTP_11
    );
    let r = client().get(gw.url("/echo/x")).send().unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(!r.headers().contains_key("strict-transport-security"));
    let v: Value = r.json().unwrap();
    assert_eq!(
        echo_header(&v, "x-forwarded-proto").as_deref(),
        Some("http")
    );
}

#[test]
fn tls_to_the_upstream_is_verified() {
    let dir = TestDir::new("tls-up");
    let ca = new_ca("internal ca");
    issue(&ca, &dir.0, "server.pem", "server.key");
    std::fs::write(dir.0.join("ca.pem"), ca.cert.pem()).unwrap();
    let mock = Mock::start("m");
    // Front: terminates TLS in front of the mock.
    let front_tls = free_port();
    let _front = Gateway::start(
        &config(&dir.0, &mock.addr.to_string(), ""),
        &[("AG_TLS", &format!("127.0.0.1:{front_tls}"))],
    );
    // Edge: speaks TLS to the front, trusting only the internal CA, with SNI localhost.
    let tls = format!(
        ", tls: true, sni: localhost, ca_file: {}/ca.pem",
        dir.0.display()
    );
    let edge_dir = TestDir::new("edge");
    issue(&ca, &edge_dir.0, "server.pem", "server.key");
    let edge = Gateway::start(
        &config(&edge_dir.0, &format!("127.0.0.1:{front_tls}"), &tls),
        &[("AG_TLS", &format!("127.0.0.1:{}", free_port()))],
    );
    let r = client().get(edge.url("/echo/through")).send().unwrap();
    assert_eq!(r.status(), 200, "edge -> TLS -> front -> mock");
    let v: Value = r.json().unwrap();
    assert_eq!(
        echo_header(&v, "x-forwarded-proto").as_deref(),
        Some("https"),
        "the front saw TLS"
    );
    // Without the CA the upstream's certificate is not trusted: 502, never a silent pass.
    let untrusted = Gateway::start(
        &config(
            &edge_dir.0,
            &format!("127.0.0.1:{front_tls}"),
            ", tls: true, sni: localhost",
        ),
        &[("AG_TLS", &format!("127.0.0.1:{}", free_port()))],
    );
    assert_eq!(
        client()
            .get(untrusted.url("/echo/through"))
            .send()
            .unwrap()
            .status(),
        502
    );
}

#[test]
fn a_renewed_certificate_is_picked_up_on_reload() {
    let dir = TestDir::new("tls-reload");
    let old_ca = new_ca("old ca");
    let new_ca_ = new_ca("new ca");
    issue(&old_ca, &dir.0, "server.pem", "server.key");
    let mock = Mock::start("m");
    let tls_port = free_port();
    let gw = Gateway::start(
        &config(&dir.0, &mock.addr.to_string(), ""),
        &[("AG_TLS", &format!("127.0.0.1:{tls_port}"))],
    );
    let url = format!("https://localhost:{tls_port}/echo/x");
    assert_eq!(tls_client(&old_ca).get(&url).send().unwrap().status(), 200);
    assert!(
        tls_client(&new_ca_).get(&url).send().is_err(),
        "not yet renewed"
    );
    issue(&new_ca_, &dir.0, "server.pem", "server.key");
    gw.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until("the renewed certificate", WAIT, || {
        tls_client(&new_ca_)
            .get(&url)
            .send()
            .is_ok_and(|r| r.status() == 200)
    });
    // A broken certificate file is refused and the renewed one stays.
    std::fs::write(dir.0.join("server.pem"), "not a certificate").unwrap();
    let r = client().post(gw.admin_url("/admin/reload")).send().unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(tls_client(&new_ca_).get(&url).send().unwrap().status(), 200);
}
