//! The pingora patches (`third_party/`, `PATCHES.md`), checked through pingora's public API
//! where their behaviour could change: no processes, loopback sockets only.

use bytes::BytesMut;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession as ClientSession;
use pingora_core::protocols::http::v1::server::HttpSession;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::upstreams::peer::{BasicPeer, Peer};
use pingora_http::{RequestHeader, ResponseHeader};
use std::io::{Read, Write};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn wire(req: &RequestHeader) -> String {
    let mut buf = BytesMut::new();
    req.header_to_h1_wire(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

fn wire_resp(resp: &ResponseHeader) -> String {
    let mut buf = BytesMut::new();
    resp.header_to_h1_wire(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

/// A request head as pingora's HTTP/1 server parses `sent`.
async fn parse_request(sent: &str, preserve_case: bool) -> RequestHeader {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = format!("GET /x HTTP/1.1\r\n{sent}\r\n");
    let client = tokio::spawn(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(raw.as_bytes()).await.unwrap();
        c
    });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut session = HttpSession::new(Box::new(Stream::from(tcp)));
    session.set_preserve_header_case(preserve_case);
    tokio::time::timeout(Duration::from_secs(5), session.read_request())
        .await
        .expect("request read in time")
        .unwrap();
    drop(client.await.unwrap());
    session.req_header().clone()
}

/// A response head as pingora's HTTP/1 client parses `sent`.
async fn parse_response(sent: &'static str, preserve_case: bool) -> ResponseHeader {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut c, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tokio::io::AsyncReadExt::read(&mut c, &mut buf)
            .await
            .unwrap();
        c.write_all(sent.as_bytes()).await.unwrap();
        c
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut session = ClientSession::new(Box::new(Stream::from(tcp)));
    session.preserve_header_case = preserve_case;
    let mut req = RequestHeader::build("GET", b"/", None).unwrap();
    req.insert_header("Host", "a").unwrap();
    session.write_request_header(Box::new(req)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), session.read_response())
        .await
        .expect("response read in time")
        .unwrap();
    drop(server.await.unwrap());
    session.resp_header().unwrap().clone()
}

/// Patch 2, default: heads keep their names as they arrived, as in pingora 0.9.1.
#[tokio::test]
async fn header_case_is_kept_by_default() {
    let sent = "Host: a\r\nuser-agent: curl\r\nX-Custom: 1\r\n";
    let req = parse_request(sent, true).await;
    assert!(req.has_case());
    assert_eq!(wire(&req), sent);

    let resp = parse_response(
        "HTTP/1.1 200 OK\r\nX-Trace: t\r\ncontent-length: 0\r\n\r\n",
        true,
    )
    .await;
    assert!(resp.has_case());
    assert_eq!(wire_resp(&resp), "X-Trace: t\r\ncontent-length: 0\r\n");
}

/// Patch 2, opted out (`HttpServerOptions::discard_header_case`,
/// `PeerOptions::discard_header_case`): one header map per head, canonical names, same values.
#[tokio::test]
async fn discarding_header_case_keeps_one_map_and_canonical_names() {
    let req = parse_request(
        "Host: a\r\nuser-agent: curl\r\nX-Custom: 1\r\nx-custom: 2\r\n",
        false,
    )
    .await;
    assert!(!req.has_case(), "no case map was built");
    assert_eq!(
        wire(&req),
        "Host: a\r\nuser-agent: curl\r\nx-custom: 1\r\nx-custom: 2\r\n"
    );
    assert_eq!(req.headers.get_all("X-CUSTOM").iter().count(), 2);

    let resp = parse_response(
        "HTTP/1.1 200 OK\r\nX-Trace: t\r\ncontent-length: 0\r\n\r\n",
        false,
    )
    .await;
    assert!(!resp.has_case());
    assert_eq!(wire_resp(&resp), "x-trace: t\r\nContent-Length: 0\r\n");
}

/// Patch 9: a parsed head has room for eight more fields, so the ones a proxy adds (authgate
/// adds up to eight to a request and to a response) need no growth of the map.
#[tokio::test]
async fn parsed_heads_have_room_for_the_fields_a_proxy_adds() {
    fn has_room(what: &str, headers: &http::HeaderMap) {
        assert!(
            headers.capacity() >= headers.len() + 8,
            "{what}: {} fields, room for {}",
            headers.len(),
            headers.capacity()
        );
    }
    for preserve_case in [false, true] {
        let req = parse_request("Host: a\r\nAccept: */*\r\n", preserve_case).await;
        assert_eq!(req.headers.len(), 2);
        has_room("request", &req.headers);
        let resp = parse_response(
            "HTTP/1.1 200 OK\r\nServer: n\r\nDate: x\r\nContent-Type: a/b\r\n\
             Content-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            preserve_case,
        )
        .await;
        assert_eq!(resp.headers.len(), 5);
        has_room("response", &resp.headers);
    }
}

/// Patch 1: a pooled connection is reused without asking the kernel for its peer, and one
/// the server closed meanwhile is still refused (the liveness read is untouched).
#[tokio::test]
async fn pooled_connections_are_reused_and_dead_ones_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong").unwrap();
        close_rx.recv().unwrap();
        drop(conn);
    });

    let connector = TransportConnector::new(None);
    let peer = BasicPeer::new(&addr.to_string());
    let mut stream = connector.new_stream(&peer).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut got)
        .await
        .unwrap();
    assert_eq!(&got, b"pong");

    connector.release_stream(stream, peer.reuse_hash(), None);
    let stream = connector
        .reused_stream(&peer)
        .await
        .expect("an idle, live connection to the same peer is reused");

    connector.release_stream(stream, peer.reuse_hash(), None);
    close_tx.send(()).unwrap();
    server.join().unwrap();
    // The close reaches the pooled socket within moments; the check at reuse sees it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        match connector.reused_stream(&peer).await {
            None => break,
            Some(s) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a closed connection was reused"
                );
                connector.release_stream(s, peer.reuse_hash(), None);
            }
        }
    }
    let other = BasicPeer::new("127.0.0.1:9");
    assert!(connector.reused_stream(&other).await.is_none());
}

/// The next connection end the test server saw, waited for without blocking the runtime
/// (whose tasks include the connector's sweep).
async fn next_end(
    rx: &std::sync::mpsc::Receiver<(usize, String, Duration)>,
) -> (usize, String, Duration) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(end) => return end,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("no connection end seen within 10 s: {e}"),
        }
    }
}

/// Patch 11: pooled connections are not watched by a task each while they idle. One past its
/// idle timeout is not reused (checked when it is taken) and is closed by the sweep if nobody
/// takes it; one the peer closed is closed by the sweep too; a full pool still tells
/// `keepalive_pool_callback` of the connection it evicts, and only of that one.
#[tokio::test]
async fn idle_pooled_connections_expire_and_the_sweep_closes_them() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // For each accepted connection, in order: how the server saw it end, and after how long.
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<(usize, String, Duration)>();
    let (fin_tx, fin_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut fin_rx = Some(fin_rx);
        for n in 0..6 {
            let (mut conn, _) = listener.accept().unwrap();
            let ended_tx = ended_tx.clone();
            // The third connection: the server closes its side once told to.
            let fin = if n == 2 { fin_rx.take() } else { None };
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
                if let Some(fin) = fin {
                    fin.recv().unwrap();
                    conn.shutdown(std::net::Shutdown::Write).unwrap();
                }
                let started = std::time::Instant::now();
                let mut buf = [0u8; 16];
                let how = match conn.read(&mut buf) {
                    Ok(0) => "closed".to_string(),
                    Ok(k) => format!("{k} bytes"),
                    Err(e) => format!("{:?}", e.kind()),
                };
                let _ = ended_tx.send((n, how, started.elapsed()));
            });
        }
    });
    let evicted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut options = pingora_core::connectors::ConnectorOptions::new(2);
    let counter = evicted.clone();
    options.keepalive_pool_callback = Some(std::sync::Arc::new(move |_idle| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }));
    let connector = TransportConnector::new(Some(options));
    let peer = BasicPeer::new(&addr.to_string());
    let key = peer.reuse_hash();
    let short = Some(Duration::from_millis(100));

    // 0: past its idle timeout, well before the first sweep (1 s after the first release).
    let first = connector.new_stream(&peer).await.unwrap();
    connector.release_stream(first, key, short);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        connector.reused_stream(&peer).await.is_none(),
        "a connection past its idle timeout was reused"
    );
    // 1: expires while nobody takes it; 2: no timeout, but the server closes it.
    let second = connector.new_stream(&peer).await.unwrap();
    connector.release_stream(second, key, short);
    let third = connector.new_stream(&peer).await.unwrap();
    connector.release_stream(third, key, None);
    fin_tx.send(()).unwrap();

    let mut ended = vec![];
    for _ in 0..3 {
        ended.push(next_end(&ended_rx).await);
    }
    ended.sort_by_key(|e| e.0);
    for (n, how, after) in &ended {
        assert_eq!(
            how, "closed",
            "connection {n} was not closed by the gateway side"
        );
        // Within the sweep interval and some slack; the read timeout (8 s) says "never".
        assert!(
            *after < Duration::from_secs(5),
            "connection {n} closed after {after:?}"
        );
    }
    assert_eq!(
        evicted.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "expired or closed connections are not evictions"
    );

    // 3, 4, 5 released to a pool of two: 3, unused, is evicted (and closed) when 5 comes,
    // and that is the one callback; 4 and 5 are reused.
    for _ in 3..6 {
        let s = connector.new_stream(&peer).await.unwrap();
        connector.release_stream(s, key, None);
    }
    let (n, how, _) = next_end(&ended_rx).await;
    assert_eq!((n, how.as_str()), (3, "closed"));
    assert_eq!(evicted.load(std::sync::atomic::Ordering::Relaxed), 1);
    let reused = [
        connector.reused_stream(&peer).await,
        connector.reused_stream(&peer).await,
    ];
    assert!(
        reused.iter().all(Option::is_some),
        "live idle connections were not reused"
    );
    assert_eq!(evicted.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(reused);
    for _ in 0..2 {
        next_end(&ended_rx).await;
    }
    server.join().unwrap();
}

/// Patch 5: the connect path (TLS handshake included) is boxed, so the futures every proxied
/// request builds stay small when a pooled connection is reused. Unpatched 0.9.1: 8,432 bytes
/// for `get_stream`, 8,896 for `get_http_session`.
#[test]
fn the_reuse_path_does_not_carry_the_connect_future() {
    let connector = TransportConnector::new(None);
    let peer = BasicPeer::new("127.0.0.1:9");
    let get_stream = connector.get_stream(&peer);
    assert!(
        std::mem::size_of_val(&get_stream) < 1024,
        "get_stream's future is {} bytes",
        std::mem::size_of_val(&get_stream)
    );
    drop(get_stream);

    let http = pingora_core::connectors::http::Connector::new(None);
    let peer = pingora_core::upstreams::peer::HttpPeer::new("127.0.0.1:9", false, String::new());
    let get_session = http.get_http_session(&peer);
    assert!(
        std::mem::size_of_val(&get_session) < 1536,
        "get_http_session's future is {} bytes",
        std::mem::size_of_val(&get_session)
    );
}

/// Patch 6 (pingora #946): an HTTP/1 upgrade whose 101 is read before the upgrade request's
/// own (empty) body end was torn down at once: the client got its 101, then EOF. It depends on
/// task ordering, so many sessions, several at a time, each must echo.
#[test]
fn every_websocket_session_stays_open_after_its_101() {
    let mock = authgate_tests::Mock::start("ws");
    let gw = authgate_tests::Gateway::start(
        r#"
server: { listen: ["${AG_LISTEN}"] }
admin: { listen: "${AG_ADMIN}" }
upstreams:
  lms: { endpoints: ["${MOCK}"] }
routes:
  - { name: ws, path: /ws, auth: none, upstream: lms }
  - { name: echo, path_prefix: /echo/, auth: none, upstream: lms }
"#,
        &[("MOCK", &mock.addr.to_string())],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("ws://{}/ws", gw.addr);
    let failures = rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let session = |n: usize| {
            let url = url.clone();
            async move {
                let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.ok()?;
                if resp.status() != 101 {
                    return None;
                }
                let text = format!("frame {n}");
                ws.send(Message::text(text.clone())).await.ok()?;
                let got = ws.next().await?.ok()?.into_text().ok()?;
                ws.close(None).await.ok()?;
                (got.as_str() == text).then_some(())
            }
        };
        // The race needs a quick 101, which a pooled upstream connection gives: each batch
        // first leaves idle connections in the gateway's pool with plain requests.
        let http = reqwest::Client::new();
        let echo = format!("http://{}/echo/warm", gw.addr);
        let mut failures = 0;
        for batch in 0..50 {
            let warm = (0..4).map(|_| http.get(&echo).send());
            for r in futures_util::future::join_all(warm).await {
                assert_eq!(r.expect("a plain request").status(), 200);
            }
            let sessions = (0..4).map(|i| session(batch * 4 + i));
            let results = tokio::time::timeout(
                Duration::from_secs(20),
                futures_util::future::join_all(sessions),
            )
            .await
            .expect("the sessions finish in time");
            failures += results.iter().filter(|r| r.is_none()).count();
        }
        failures
    });
    assert_eq!(
        failures, 0,
        "of 200 WebSocket sessions, {failures} closed after their 101"
    );
    // And every tunnel still ends when its client closes it: each logs its access line.
    authgate_tests::wait_until("200 tunnels ended", Duration::from_secs(10), || {
        gw.log_lines()
            .iter()
            .filter(|l| l["kind"] == "access" && l["status"] == 101)
            .count()
            == 200
    });
}
