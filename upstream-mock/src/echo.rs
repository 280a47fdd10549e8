//! Endpoints that show the gateway's behaviour from the upstream side: a request echo,
//! a slow chunked stream, and a WebSocket echo.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{
        ws::{Message, WebSocket, WebSocketUpgrade},
        RawQuery, Request, State,
    },
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{app::AppState, respond};

/// Largest body /echo accepts. Far above anything a gateway test sends; it only stops a
/// runaway client from exhausting memory.
pub const MAX_ECHO_BODY: usize = 1 << 30;

/// `ANY /echo` and `ANY /echo/{*rest}`: the request as the mock received it.
///
/// `path` and `query` are the raw request target (not percent-decoded), so tests can
/// check that the gateway forwarded them byte for byte. `X-Mock-Status: NNN` picks
/// the response status.
pub async fn echo(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_ECHO_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return respond::detail(StatusCode::BAD_REQUEST, &format!("reading body: {e}"));
        }
    };
    let status = respond::header_str(&parts.headers, "x-mock-status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let echoed = Echo {
        name: &state.name,
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: respond::header_pairs(&parts.headers),
        body: String::from_utf8_lossy(&body),
        body_len: body.len(),
        body_sha256: hex::encode(Sha256::digest(&body)),
    };
    (status, Json(echoed)).into_response()
}

/// The /echo body; a struct keeps the documented key order.
#[derive(Serialize)]
struct Echo<'a> {
    name: &'a str,
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(String, String)>,
    body: std::borrow::Cow<'a, str>,
    body_len: usize,
    body_sha256: String,
}

/// Limits for /stream, so a typo cannot make the mock allocate gigabytes.
const MAX_CHUNKS: u64 = 1_000_000;
const MAX_CHUNK_SIZE: usize = 1 << 20;
const MAX_INTERVAL_MS: u64 = 60_000;

/// `GET /stream?chunks=N&interval_ms=M&chunk_size=B` (defaults 10, 100, 1024): a
/// chunked `application/octet-stream` body of N chunks of B bytes, the first at once
/// and each next one M ms later. Chunk i is filled with the letter `a + i % 26`, so a
/// reader can tell where chunk boundaries fell.
pub async fn stream(RawQuery(query): RawQuery) -> Response {
    let param = |name: &str| {
        respond::query_param(query.as_deref(), name).and_then(|v| v.trim().parse::<u64>().ok())
    };
    let chunks = param("chunks").unwrap_or(10).min(MAX_CHUNKS);
    let interval = Duration::from_millis(param("interval_ms").unwrap_or(100).min(MAX_INTERVAL_MS));
    let size = param("chunk_size")
        .map_or(1024, |n| usize::try_from(n).unwrap_or(MAX_CHUNK_SIZE))
        .min(MAX_CHUNK_SIZE);

    let body = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let fill = b'a' + (i % 26) as u8;
        Some((Ok::<_, Infallible>(Bytes::from(vec![fill; size])), i + 1))
    });
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `GET /ws`: a WebSocket that sends every text and binary message back.
pub async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(msg).await.is_err() {
                    break;
                }
            }
            // Pings are answered by the library. After a close frame the library
            // queues the closing reply and sends it on the next `recv`, which then
            // ends the stream: keep reading so the handshake completes cleanly.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}
