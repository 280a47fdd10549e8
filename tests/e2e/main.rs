//! Black-box tests: real authgate, upstream-mock and redis-server processes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod assertion;
mod authz;
mod cache;
mod closed;
mod deadline;
mod deploy;
mod django;
mod dpop;
mod faults;
mod foundation;
mod hostile;
mod jwt;
mod observe;
mod patches;
mod ratelimit;
mod reload;
mod state;
mod tls;
mod tokens;
mod topology;
mod trust;
