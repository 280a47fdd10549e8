//! Closed by default: the admin surface, HTTP/2 connection limits, and headers that rewrite a
//! request.

use authgate_tests::*;
use std::path::Path;
use std::sync::Arc;
use tokio::io::AsyncReadExt;

// ---------------------------------------------------------------------------------------------
// The admin surface.

fn admin_config(mock: &Mock, admin: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"] }}
admin: {{ {admin} }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
routes: [{{ name: r, path_prefix: /, auth: none, upstream: lms }}]
"#,
        m = mock.addr
    )
}

fn admin_status(gw: &Gateway, method: &str, path: &str, token: Option<&str>) -> u16 {
    let c = client();
    let mut req = match method {
        "POST" => c.post(gw.admin_url(path)),
        _ => c.get(gw.admin_url(path)),
    };
    if path == "/admin/revoke" {
        req = req.json(&json!({"subject": "42"}));
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().expect("admin").status().as_u16()
}

#[test]
fn admin_operations_on_a_non_loopback_listener_need_a_token() {
    let mock = Mock::start("m");
    // All interfaces, no token: operations refused, probes and metrics open.
    let open = Gateway::start(
        &admin_config(&mock, r#"listen: "0.0.0.0:${AG_ADMIN_PORT}""#),
        &[],
    );
    for (method, path) in [("POST", "/admin/reload"), ("POST", "/admin/revoke")] {
        let r = client().post(open.admin_url(path)).send().expect("admin");
        assert_eq!(r.status(), 403, "{path}");
        let v: Value = r.json().expect("json");
        assert_eq!(v["error"], "forbidden");
        assert!(v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("admin.token_env"));
        assert_eq!(admin_status(&open, method, path, Some("anything")), 403);
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(admin_status(&open, "GET", path, None), 200, "{path}");
    }
    assert!(open
        .proc
        .output()
        .contains("not loopback and no admin.token_env"));

    // With a token: 401 without it, 200 with it.
    let guarded = Gateway::start(
        &admin_config(
            &mock,
            r#"listen: "0.0.0.0:${AG_ADMIN_PORT}", token_env: ADMIN_TOKEN"#,
        ),
        &[("ADMIN_TOKEN", "s3cret-admin")],
    );
    assert_eq!(admin_status(&guarded, "POST", "/admin/revoke", None), 401);
    assert_eq!(
        admin_status(&guarded, "POST", "/admin/revoke", Some("wrong")),
        401
    );
    assert_eq!(
        admin_status(&guarded, "POST", "/admin/revoke", Some("s3cret-admin")),
        200
    );
    assert_eq!(admin_status(&guarded, "GET", "/metrics", None), 200);

    // Loopback without a token stays open to this host, as before.
    let local = Gateway::start(&admin_config(&mock, r#"listen: "${AG_ADMIN}""#), &[]);
    assert_eq!(admin_status(&local, "POST", "/admin/revoke", None), 200);
}

// ---------------------------------------------------------------------------------------------
// Headers that rewrite a request.

fn rewrite_config(mock: &Mock, trusted: &str) -> String {
    format!(
        r#"
server: {{ listen: ["${{AG_LISTEN}}"], trusted_proxies: [{trusted}] }}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
auth:
  providers:
    simple: {{ type: jwt, algorithms: [HS256], keys: [{{ secret_env: JWT_SECRET }}], subject_claim: user_id, required_claims: {{ token_type: access }} }}
routes:
  - {{ name: public, path_prefix: /echo/public/, methods: [GET], auth: none, upstream: lms }}
  - {{ name: private, path_prefix: /echo/, auth: required, upstream: lms }}
"#,
        m = mock.addr
    )
}

const REWRITES: [(&str, &str); 7] = [
    ("Forwarded", "for=10.9.9.9;proto=https"),
    ("X-Real-IP", "10.9.9.9"),
    ("X-Original-URL", "/admin/delete-everything"),
    ("X-Rewrite-URL", "/admin/delete-everything"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
];

fn forwarded_names(gw: &Gateway, path: &str, token: Option<&str>) -> Vec<String> {
    let mut req = client().get(gw.url(path));
    for (k, v) in REWRITES {
        req = req.header(k, v);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().expect("send");
    assert_eq!(r.status(), 200, "{path}");
    let v: Value = r.json().expect("json");
    v["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter_map(|p| p[0].as_str().map(str::to_ascii_lowercase))
        .collect()
}

#[test]
fn rewrite_and_override_headers_from_untrusted_clients_are_removed() {
    let mock = Mock::start("m");
    let token = tokens::sign(
        jsonwebtoken::Algorithm::HS256,
        MOCK_JWT_SECRET,
        None,
        &json!({"user_id": 3, "exp": tokens::now() + 600, "token_type": "access"}),
    );
    let env = [("JWT_SECRET", MOCK_JWT_SECRET)];
    // The test client is 127.0.0.1: untrusted here...
    let untrusted = Gateway::start(&rewrite_config(&mock, r#""10.0.0.0/8""#), &env);
    for (path, t) in [("/echo/public/x", None), ("/echo/x", Some(token.as_str()))] {
        let names = forwarded_names(&untrusted, path, t);
        for (k, _) in REWRITES {
            assert!(
                !names.contains(&k.to_ascii_lowercase()),
                "{path}: {k} reached the upstream from an untrusted client"
            );
        }
    }
    // ...and a trusted proxy here, whose rewrites are passed on.
    let trusted = Gateway::start(&rewrite_config(&mock, r#""127.0.0.1/32""#), &env);
    for (path, t) in [("/echo/public/x", None), ("/echo/x", Some(token.as_str()))] {
        let names = forwarded_names(&trusted, path, t);
        for (k, _) in REWRITES {
            assert!(
                names.contains(&k.to_ascii_lowercase()),
                "{path}: {k} from a trusted proxy"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 connection limits.

struct Tls {
    ca_pem: String,
    dir: TestDir,
}

fn tls_files() -> Tls {
    let dir = TestDir::new("h2");
    let ca = authgate_tests::certs::new_ca("h2 test ca");
    authgate_tests::certs::issue(&ca, &dir.0, "server.pem", "server.key");
    Tls {
        ca_pem: ca.cert.pem(),
        dir,
    }
}

fn h2_gateway(mock: &Mock, dir: &Path, tls_port: u16, extra: &str) -> Gateway {
    Gateway::start(
        &format!(
            r#"
server:
  listen: ["${{AG_LISTEN}}"]
  tls: {{ listen: "127.0.0.1:{tls_port}", cert_file: {d}/server.pem, key_file: {d}/server.key }}
  header_timeout: 1s
  idle_timeout: 2s
  {extra}
admin: {{ listen: "${{AG_ADMIN}}" }}
upstreams: {{ lms: {{ endpoints: ["{m}"] }} }}
routes: [{{ name: r, path_prefix: /, auth: none, upstream: lms }}]
"#,
            d = dir.display(),
            m = mock.addr
        ),
        &[],
    )
}

/// A TLS connection to the gateway that negotiated `h2`.
async fn tls_h2(port: u16, ca_pem: &str) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

use rustls::pki_types::pem::PemObject;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn counter(gw: &Gateway, name: &str) -> f64 {
    metric(&gw.metrics(), name, &[])
}

#[test]
fn an_h2_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let mock = Mock::start("m");
    let tls = tls_files();
    let port = free_port();
    let gw = h2_gateway(&mock, &tls.dir.0, port, "");
    let rt = runtime();
    rt.block_on(async {
        // TLS and ALPN h2, then not even the connection preface.
        let mut silent = tls_h2(port, &tls.ca_pem).await;
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match silent.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's SETTINGS
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a silent HTTP/2 connection must be closed");
    });
    wait_until("the header timeout counted", WAIT, || {
        counter(&gw, "authgate_header_timeouts_total") >= 1.0
    });

    // A preface and SETTINGS, then no request: closed too.
    rt.block_on(async {
        let io = tls_h2(port, &tls.ca_pem).await;
        let (_send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        let ended = tokio::time::timeout(WAIT, conn).await;
        assert!(
            ended.is_ok(),
            "an HTTP/2 connection without a request must be closed"
        );
    });
    wait_until("both header timeouts counted", WAIT, || {
        counter(&gw, "authgate_header_timeouts_total") >= 2.0
    });
    assert_eq!(counter(&gw, "authgate_idle_timeouts_total"), 0.0);
}

#[test]
fn an_h2_connection_serves_long_requests_then_closes_when_idle() {
    let mock = Mock::start("m");
    let tls = tls_files();
    let port = free_port();
    let gw = h2_gateway(&mock, &tls.dir.0, port, "");
    let rt = runtime();
    rt.block_on(async {
        let io = tls_h2(port, &tls.ca_pem).await;
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let mut send = send.ready().await.expect("ready");
        // Slower than both the header (1 s) and idle (2 s) timeouts: never cut.
        let req = http::Request::get(format!("https://localhost:{port}/echo/slow?delay_ms=2500"))
            .body(())
            .expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .expect("answered in time")
            .expect("response");
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("body");
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        // Then nothing: the connection is closed after the idle timeout.
        let ended = tokio::time::timeout(WAIT, conn).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection must be closed");
    });
    wait_until("the idle timeout counted", WAIT, || {
        counter(&gw, "authgate_idle_timeouts_total") >= 1.0
    });
    assert_eq!(counter(&gw, "authgate_header_timeouts_total"), 0.0);
}

#[test]
fn an_h2_connection_gets_the_configured_stream_limit() {
    let mock = Mock::start("m");
    let tls = tls_files();
    let port = free_port();
    let gw = h2_gateway(
        &mock,
        &tls.dir.0,
        port,
        "http2: { max_concurrent_streams: 4 }",
    );
    let rt = runtime();
    rt.block_on(async {
        let io = tls_h2(port, &tls.ca_pem).await;
        let (send, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut send = send.ready().await.expect("ready");
        // The first answer proves the server's SETTINGS have been read.
        let req = http::Request::get(format!("https://localhost:{port}/echo/first"))
            .body(())
            .expect("request");
        let (resp, _) = send.send_request(req, true).expect("send");
        assert_eq!(resp.await.expect("response").status(), 200);
        // Twelve streams at once on the one connection: the client may have four open, the
        // rest wait their turn, and every one is answered.
        let mut answers = Vec::new();
        for i in 0..12 {
            let mut s = send.clone().ready().await.expect("ready");
            let req = http::Request::get(format!(
                "https://localhost:{port}/echo/many/{i}?delay_ms=100"
            ))
            .body(())
            .expect("request");
            let (resp, _) = s.send_request(req, true).expect("send");
            answers.push(resp);
        }
        for a in answers {
            let r = tokio::time::timeout(WAIT, a)
                .await
                .expect("in time")
                .expect("response");
            assert_eq!(r.status(), 200);
        }
        assert_eq!(
            send.current_max_send_streams(),
            4,
            "SETTINGS_MAX_CONCURRENT_STREAMS"
        );
    });
    assert_eq!(mock.count("GET /echo"), 13);
    drop(gw);
}
