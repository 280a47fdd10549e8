//! authgate: an edge authentication gateway on pingora.
//!
//! A request's journey: `route` picks the route from the normalised path, `auth` decides who
//! the caller is, limits and deadlines apply, and `proxy` forwards it with identity headers.
//! `config` compiles the YAML once into immutable types that `reload` swaps whole.

pub mod admin;
pub mod answer;
pub mod assertion;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod deadline;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod redis_link;
pub mod reload;
pub mod respcache;
pub mod route;
pub mod runtime;
pub mod signing;
pub mod snapshot;
pub mod tier;
pub mod tls;
pub mod upstream;
