//! `server.header_timeout`: a client that has not sent a request's whole header block within
//! the timeout is disconnected, so slow clients (slowloris) cannot hold connections open.
//!
//! pingora reads request heads itself, with a 60 s timeout per read and no hook until the head
//! is complete (pingora #447), so the clock lives around the connection instead: [`HeadTimeout`]
//! wraps pingora's HTTP app, and the gateway marks on the connection's task when a head has
//! arrived ([`head_received`], from `new_ctx`) and when the next one is awaited
//! ([`awaiting_next_head`], from `logging`). A watchdog beside the connection drops it once a
//! head has been awaited longer than the timeout. As with HAProxy's `timeout http-request`,
//! waiting for the next request on a kept-alive connection counts: an idle connection is
//! closed after the timeout too.
//!
//! The marks cost a task-local write per request; the watchdog's timer is re-armed only when
//! it fires, not per request.
//!
//! HTTP/2 runs each stream on a task of its own, so an HTTP/2 connection is watched through
//! [`H2Conn`], found from a stream by its connection's TLS digest (one `Arc` per connection):
//! the handshake and first request head must arrive within `server.header_timeout` (a client
//! that opens a connection and sends nothing, or only a preface, is closed), and a connection
//! with no stream in flight for `server.idle_timeout` is closed.

use crate::snapshot::Shared;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static HEAD: Cell<HeadState>;
}

#[derive(Clone, Copy, Debug)]
enum HeadState {
    /// Waiting for a request head since this instant (connection accepted or last answer sent).
    Awaited { since: Instant },
    /// A head has arrived; the request is being served (bodies have their own timeouts).
    Received,
}

/// The current request's head has been read. A no-op outside a watched connection (HTTP/2
/// streams run on tasks of their own).
pub fn head_received() {
    let _ = HEAD.try_with(|h| h.set(HeadState::Received));
}

/// The current request is finished; from now the connection waits for the next head.
pub fn awaiting_next_head() {
    let _ = HEAD.try_with(|h| {
        h.set(HeadState::Awaited {
            since: Instant::now(),
        })
    });
}

/// A pingora app (the HTTP proxy) whose HTTP/1 connections are closed when a request head is
/// awaited longer than `server.header_timeout`.
pub struct HeadTimeout<A> {
    inner: Arc<A>,
    shared: Arc<Shared>,
    timeouts: IntCounter,
    idle_timeouts: IntCounter,
}

impl<A> HeadTimeout<A> {
    pub fn new(inner: A, shared: Arc<Shared>) -> Self {
        let timeouts = shared.metrics.header_timeouts_total.clone();
        let idle_timeouts = shared.metrics.idle_timeouts_total.clone();
        HeadTimeout {
            inner: Arc::new(inner),
            shared,
            timeouts,
            idle_timeouts,
        }
    }
}

/// One HTTP/2 connection's streams in flight, and since when the count is what it is.
#[derive(Debug)]
pub struct H2Conn {
    epoch: Instant,
    active: AtomicUsize,
    /// Milliseconds after `epoch` of the last stream's start or end.
    changed_ms: AtomicU64,
    served_any: AtomicBool,
}

impl H2Conn {
    fn new() -> Self {
        H2Conn {
            epoch: Instant::now(),
            active: AtomicUsize::new(0),
            changed_ms: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.changed_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn changed(&self) -> Instant {
        self.epoch + Duration::from_millis(self.changed_ms.load(Ordering::Acquire))
    }
}

/// HTTP/2 connections being watched, by the address of their TLS digest.
fn h2_conns() -> &'static Mutex<HashMap<usize, Weak<H2Conn>>> {
    static CONNS: OnceLock<Mutex<HashMap<usize, Weak<H2Conn>>>> = OnceLock::new();
    CONNS.get_or_init(Default::default)
}

/// Held (in the request context) while an HTTP/2 stream is served; its connection is busy.
#[derive(Debug)]
pub struct H2Stream(Arc<H2Conn>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.touch();
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a stream of a watched HTTP/2 connection as started; `None` for HTTP/1 (watched by
/// the task-local marks) and for connections not watched.
pub fn h2_stream_started(session: &pingora_proxy::Session) -> Option<H2Stream> {
    if !session.is_http2() {
        return None;
    }
    let ssl = session.digest()?.ssl_digest.as_ref()?;
    let key = Arc::as_ptr(ssl) as usize;
    let conn = h2_conns()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)?
        .upgrade()?;
    conn.active.fetch_add(1, Ordering::AcqRel);
    conn.served_any.store(true, Ordering::Release);
    conn.touch();
    Some(H2Stream(conn))
}

#[derive(Debug, PartialEq, Eq)]
enum H2Watched<T> {
    Done(T),
    /// No request head within the header timeout of the connection's start.
    HeadTimedOut,
    /// Nothing in flight for the idle timeout after a request.
    Idle,
}

/// Drives an HTTP/2 connection until it ends, or until it has had nothing in flight for
/// `header` (before its first request) or `idle` (after one).
async fn watch_h2<T>(
    conn: impl Future<Output = T>,
    state: &H2Conn,
    header: Duration,
    idle: Duration,
) -> H2Watched<T> {
    tokio::pin!(conn);
    let alarm = tokio::time::sleep(header);
    tokio::pin!(alarm);
    loop {
        tokio::select! {
            biased;
            out = &mut conn => return H2Watched::Done(out),
            () = &mut alarm => {
                let served = state.served_any.load(Ordering::Acquire);
                let limit = if served { idle } else { header };
                let now = Instant::now();
                if state.active.load(Ordering::Acquire) > 0 {
                    alarm.as_mut().reset(now + limit);
                    continue;
                }
                let until = state.changed() + limit;
                if now >= until {
                    return if served { H2Watched::Idle } else { H2Watched::HeadTimedOut };
                }
                alarm.as_mut().reset(until);
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadTimeout<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Read per connection, so a reload applies to connections accepted after it.
        let (limit, idle) = {
            let snap = self.shared.snapshot();
            (
                snap.config.server.header_timeout,
                snap.config.server.idle_timeout,
            )
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let Some(key) = stream.get_ssl_digest().map(|d| Arc::as_ptr(&d) as usize) else {
                return self.inner.process_new(stream, shutdown).await;
            };
            let state = Arc::new(H2Conn::new());
            h2_conns()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Arc::downgrade(&state));
            let served = watch_h2(
                self.inner.process_new(stream, shutdown),
                &state,
                limit,
                idle,
            )
            .await;
            {
                let mut conns = h2_conns().lock().unwrap_or_else(|p| p.into_inner());
                if conns
                    .get(&key)
                    .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&state)))
                {
                    conns.remove(&key);
                }
            }
            return match served {
                H2Watched::Done(out) => out,
                H2Watched::HeadTimedOut => {
                    self.timeouts.inc();
                    tracing::debug!(?limit, "HTTP/2: no request head in time; connection closed");
                    None
                }
                H2Watched::Idle => {
                    self.idle_timeouts.inc();
                    tracing::debug!(?idle, "HTTP/2: idle; connection closed");
                    None
                }
            };
        }
        let state = Cell::new(HeadState::Awaited {
            since: Instant::now(),
        });
        let served = HEAD
            .scope(
                state,
                watch(self.inner.process_new(stream, shutdown), limit),
            )
            .await;
        match served {
            Watched::Done(out) => out,
            Watched::HeadTimedOut => {
                self.timeouts.inc();
                tracing::debug!(
                    ?limit,
                    "request head not received in time; connection closed"
                );
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[derive(Debug)]
enum Watched<T> {
    Done(T),
    HeadTimedOut,
}

/// Drives `conn` (inside a `HEAD` scope) until it ends or a head is awaited past `limit`;
/// dropping `conn` closes the connection.
async fn watch<T>(conn: impl Future<Output = T>, limit: Duration) -> Watched<T> {
    tokio::pin!(conn);
    let alarm = tokio::time::sleep(limit);
    tokio::pin!(alarm);
    loop {
        tokio::select! {
            biased;
            out = &mut conn => return Watched::Done(out),
            () = &mut alarm => {
                let now = Instant::now();
                // The alarm only ever fires at or before the real deadline: it is set from
                // an instant no later than the one `awaiting_next_head` records next.
                match HEAD.with(Cell::get) {
                    HeadState::Awaited { since } if now >= since + limit => {
                        return Watched::HeadTimedOut
                    }
                    HeadState::Awaited { since } => alarm.as_mut().reset(since + limit),
                    HeadState::Received => alarm.as_mut().reset(now + limit),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(100);

    /// Runs `conn` the way `HeadTimeout` does, bounded so a broken watchdog fails, not hangs.
    async fn run<T>(conn: impl Future<Output = T>) -> Watched<T> {
        let state = Cell::new(HeadState::Awaited {
            since: Instant::now(),
        });
        tokio::time::timeout(
            Duration::from_secs(10),
            HEAD.scope(state, watch(conn, LIMIT)),
        )
        .await
        .expect("the watchdog ends a connection that waits forever")
    }

    #[tokio::test]
    async fn a_head_that_never_arrives_closes_the_connection() {
        let out = run(std::future::pending::<()>()).await;
        assert!(matches!(out, Watched::HeadTimedOut), "{out:?}");
    }

    #[tokio::test]
    async fn a_request_slower_than_the_limit_is_not_cut_once_its_head_arrived() {
        let out = run(async {
            head_received();
            tokio::time::sleep(LIMIT * 4).await;
            "answered"
        })
        .await;
        assert!(matches!(out, Watched::Done("answered")), "{out:?}");
    }

    /// Three kept-alive requests, each head within the limit and each answer slower than it.
    async fn three_requests() {
        for _ in 0..3 {
            tokio::time::sleep(LIMIT / 2).await;
            head_received();
            tokio::time::sleep(LIMIT * 2).await;
            awaiting_next_head();
        }
    }

    #[tokio::test]
    async fn keepalive_requests_each_get_the_limit_and_idle_time_counts() {
        let out = run(async {
            three_requests().await;
            // The next head never comes: the connection is closed.
            std::future::pending::<&str>().await
        })
        .await;
        assert!(matches!(out, Watched::HeadTimedOut), "{out:?}");
    }

    #[tokio::test]
    async fn three_requests_then_close_ends_normally() {
        let out = run(async {
            three_requests().await;
            "closed by client"
        })
        .await;
        assert!(matches!(out, Watched::Done("closed by client")), "{out:?}");
    }

    #[tokio::test]
    async fn an_h2_connection_without_a_request_is_closed_at_the_header_timeout() {
        let state = H2Conn::new();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            watch_h2(std::future::pending::<()>(), &state, LIMIT, LIMIT * 50),
        )
        .await
        .expect("bounded");
        assert_eq!(out, H2Watched::HeadTimedOut);
    }

    #[tokio::test]
    async fn an_h2_connection_is_kept_while_streams_run_then_closed_when_idle() {
        let state = Arc::new(H2Conn::new());
        let s2 = state.clone();
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            watch_h2(
                async move {
                    // A stream that runs far longer than both limits.
                    s2.active.fetch_add(1, Ordering::AcqRel);
                    s2.served_any.store(true, Ordering::Release);
                    let stream = H2Stream(s2.clone());
                    tokio::time::sleep(LIMIT * 5).await;
                    drop(stream);
                    std::future::pending::<()>().await
                },
                &state,
                LIMIT,
                LIMIT * 2,
            ),
        )
        .await
        .expect("bounded");
        assert_eq!(out, H2Watched::Idle);
        assert!(
            started.elapsed() >= LIMIT * 7,
            "kept while the stream ran, then idle"
        );
    }

    #[test]
    fn marks_outside_a_watched_connection_are_ignored() {
        head_received();
        awaiting_next_head();
    }
}
