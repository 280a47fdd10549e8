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
    // The close reaches the pooled socket (and pingora's idle watcher) within moments.
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
