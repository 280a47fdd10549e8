//! Per-request deadlines: the route's, or a shorter one the client asks for with
//! `X-Request-Timeout-Ms`. A deadline bounds the time from the request's arrival until the
//! upstream's response header.

use http::{HeaderName, HeaderValue};
use std::time::{Duration, Instant};

/// `X-Request-Timeout-Ms`, a name parsed once (a lookup by `&str` parses it on every request).
pub const CLIENT_HEADER: HeaderName = HeaderName::from_static("x-request-timeout-ms");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    /// The budget that applied, reported as `deadline_ms` when it runs out.
    pub budget: Duration,
}

impl Deadline {
    /// The route's deadline, shortened (never lengthened) by a well-formed client header. A
    /// client may also bound a route that has none.
    pub fn for_request(
        route: Option<Duration>,
        client: Option<&HeaderValue>,
        arrived: Instant,
    ) -> Option<Self> {
        let asked = client
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0 && *ms <= u64::from(u32::MAX))
            .map(Duration::from_millis);
        let budget = match (route, asked) {
            (Some(r), Some(a)) => r.min(a),
            (Some(r), None) => r,
            (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some(Deadline {
            at: arrived + budget,
            budget,
        })
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    /// Passed, allowing for timers that fire a little early.
    pub fn passed(&self, now: Instant) -> bool {
        self.remaining(now) <= Duration::from_millis(2)
    }

    pub fn budget_ms(&self) -> u64 {
        self.budget.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("value")
    }

    #[test]
    fn client_can_shorten_but_not_lengthen() {
        let t = Instant::now();
        let route = Some(Duration::from_millis(500));
        let d = Deadline::for_request(route, Some(&hv("200")), t).expect("deadline");
        assert_eq!(d.budget, Duration::from_millis(200));
        let d = Deadline::for_request(route, Some(&hv("9000")), t).expect("deadline");
        assert_eq!(d.budget, Duration::from_millis(500));
        let d = Deadline::for_request(None, Some(&hv("150")), t).expect("deadline");
        assert_eq!(d.budget_ms(), 150);
        assert_eq!(Deadline::for_request(None, None, t), None);
        for junk in ["", "0", "-5", "abc", "1.5", "99999999999999"] {
            let d = Deadline::for_request(route, Some(&hv(junk)), t).expect("deadline");
            assert_eq!(
                d.budget,
                Duration::from_millis(500),
                "{junk:?} must be ignored"
            );
        }
    }

    #[test]
    fn remaining_saturates() {
        let t = Instant::now();
        let d = Deadline::for_request(Some(Duration::from_millis(100)), None, t).expect("deadline");
        assert_eq!(d.remaining(t), Duration::from_millis(100));
        assert_eq!(d.remaining(t + Duration::from_secs(1)), Duration::ZERO);
        assert!(d.passed(t + Duration::from_millis(99)));
        assert!(!d.passed(t + Duration::from_millis(50)));
    }
}
