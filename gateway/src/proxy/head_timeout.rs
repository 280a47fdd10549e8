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

use crate::proxy::Shared;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use prometheus::IntCounter;
use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;
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
}

impl<A> HeadTimeout<A> {
    pub fn new(inner: A, shared: Arc<Shared>) -> Self {
        let timeouts = shared.metrics.header_timeouts_total.clone();
        HeadTimeout {
            inner: Arc::new(inner),
            shared,
            timeouts,
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
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // HTTP/2 multiplexes requests on one connection; h2 bounds its own frames.
            return self.inner.process_new(stream, shutdown).await;
        }
        // Read per connection, so a reload applies to connections accepted after it.
        let limit = self.shared.snapshot().config.server.header_timeout;
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

    #[test]
    fn marks_outside_a_watched_connection_are_ignored() {
        head_received();
        awaiting_next_head();
    }
}
