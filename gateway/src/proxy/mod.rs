//! The request path: the per-request context and the pingora `ProxyHttp` implementation that
//! walks each request through route -> authenticate -> limit -> forward (`gateway`), what the
//! upstream receives (`forward`) and the answers the gateway makes itself (`respond`). The configuration
//! versions it runs on are in [`crate::snapshot`]; the answers it makes itself in
//! [`crate::answer`].

pub mod access_log;
pub mod caching;
pub mod ctx;
pub mod forward;
pub mod gateway;
pub mod head_timeout;
pub mod headers;
pub mod respond;
