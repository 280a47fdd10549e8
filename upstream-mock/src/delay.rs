//! Delay on demand, for every endpoint: `?delay_ms=N` or `X-Mock-Delay-Ms: N` holds
//! the request for N ms before the handler runs, which is how tests produce slow
//! upstreams (deadlines, timeouts, stale-if-error).

use std::time::Duration;

use axum::{extract::Request, http::HeaderMap, middleware::Next, response::Response};

use crate::respond;

/// A forgotten zero must not hang a test run for hours.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The requested delay: the query parameter wins over the header; values that are not
/// a non-negative integer are ignored; anything above [`MAX_DELAY`] is capped.
pub fn requested(query: Option<&str>, headers: &HeaderMap) -> Option<Duration> {
    let parse = |s: &str| s.trim().parse::<u64>().ok();
    respond::query_param(query, "delay_ms")
        .and_then(|v| parse(&v))
        .or_else(|| respond::header_str(headers, "x-mock-delay-ms").and_then(parse))
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY))
        .filter(|d| !d.is_zero())
}

pub async fn delay(req: Request, next: Next) -> Response {
    if let Some(d) = requested(req.uri().query(), req.headers()) {
        tokio::time::sleep(d).await;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn query_wins_and_values_are_capped() {
        let mut h = HeaderMap::new();
        assert_eq!(requested(None, &h), None);
        h.insert("x-mock-delay-ms", HeaderValue::from_static("250"));
        assert_eq!(requested(None, &h), Some(Duration::from_millis(250)));
        assert_eq!(
            requested(Some("a=1&delay_ms=40"), &h),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            requested(Some("delay_ms=x"), &h),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            requested(Some("delay_ms=99999999"), &HeaderMap::new()),
            Some(MAX_DELAY)
        );
        assert_eq!(requested(Some("delay_ms=0"), &HeaderMap::new()), None);
    }
}
