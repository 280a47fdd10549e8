//! Configuration: the YAML file (`raw`), its validation (`compile`) and the validated,
//! immutable result (`model`).

pub mod compile;
pub mod env;
pub mod error;
pub mod model;
pub mod raw;
pub mod units;

pub use error::{ConfigError, ConfigErrors};
pub use model::Config;

use env::Env;
use raw::ConfigFile;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The configuration `authgate` runs with when no file is given: the demo in front of
/// upstream-mock on 127.0.0.1:8000, no Redis.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.yaml");

/// Where a configuration came from; reloads read the same place again.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => "<embedded default>".into(),
        }
    }
}

/// Reads, expands, parses and validates a configuration.
pub fn load(source: &Source, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let (text, base_dir) = match source {
        Source::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigErrors(vec![ConfigError::new(
                    ".",
                    format!("cannot read {}: {e}", path.display()),
                )])
            })?;
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            (text, dir)
        }
        Source::Embedded => (EMBEDDED_DEFAULT.to_string(), PathBuf::from(".")),
    };
    load_str(&text, &base_dir, env).map_err(ConfigErrors)
}

/// Logs what `authgate check` would print as warnings, when the gateway starts or reloads.
pub fn log_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!(path = %w.path, warning = %w.message, "configuration warning");
    }
}

pub fn load_str(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, Vec<ConfigError>> {
    let expanded = env::expand(text, env)?;
    let file = parse(&expanded)?;
    compile::compile(file, &compile::Context { base_dir, env })
}

/// Parses the whole document. serde stops at the first problem, so on failure each section and
/// each list or map item is parsed again on its own to report every structural problem, not
/// just the first. Only the first carries a line and column (serde_yaml's `Value` has none).
pub fn parse(text: &str) -> Result<ConfigFile, Vec<ConfigError>> {
    let de = serde_yaml::Deserializer::from_str(text);
    let first = match serde_path_to_error::deserialize::<_, ConfigFile>(de) {
        Ok(file) => return Ok(file),
        Err(e) => ConfigError::from_yaml(e.path().to_string(), e.inner()),
    };
    let mut errors = vec![first];
    for more in scan_items(text) {
        if !errors.iter().any(|e| e.path == more.path) {
            errors.push(more);
        }
    }
    Err(errors)
}

fn scan_items(text: &str) -> Vec<ConfigError> {
    use serde_yaml::Value;
    let Ok(Value::Mapping(top)) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (key, value) in &top {
        let Some(key) = key.as_str() else { continue };
        match key {
            "server" => check::<raw::ServerConfig>("server", value, &mut errors),
            "admin" => check::<raw::AdminConfig>("admin", value, &mut errors),
            "redis" => check::<raw::RedisConfig>("redis", value, &mut errors),
            "upstreams" => each_entry::<raw::UpstreamConfig>("upstreams", value, &mut errors),
            "rate_limits" => each_entry::<raw::RateLimitConfig>("rate_limits", value, &mut errors),
            "response_cache" => {
                check::<raw::ResponseCacheConfig>("response_cache", value, &mut errors)
            }
            "auth" => {
                if let Value::Mapping(m) = value {
                    let mut rest = m.clone();
                    if let Some(p) = rest.remove("providers") {
                        each_entry::<raw::ProviderConfig>("auth.providers", &p, &mut errors);
                    }
                    check::<raw::AuthConfig>("auth", &Value::Mapping(rest), &mut errors);
                }
            }
            "routes" => {
                if let Value::Sequence(items) = value {
                    for (i, item) in items.iter().enumerate() {
                        check::<raw::RouteConfig>(&format!("routes[{i}]"), item, &mut errors);
                    }
                }
            }
            _ => {}
        }
    }
    errors
}

fn each_entry<T: DeserializeOwned>(
    path: &str,
    value: &serde_yaml::Value,
    errors: &mut Vec<ConfigError>,
) {
    if let serde_yaml::Value::Mapping(m) = value {
        for (k, v) in m {
            let name = k.as_str().unwrap_or("?");
            check::<T>(&format!("{path}.{name}"), v, errors);
        }
    }
}

fn check<T: DeserializeOwned>(
    path: &str,
    value: &serde_yaml::Value,
    errors: &mut Vec<ConfigError>,
) {
    if let Err(e) = serde_path_to_error::deserialize::<_, T>(value.clone()) {
        let inner = e.path().to_string();
        let full = if inner == "." || inner.is_empty() {
            path.to_string()
        } else if inner.starts_with('[') {
            format!("{path}{inner}")
        } else {
            format!("{path}.{inner}")
        };
        errors.push(ConfigError::from_yaml(full, e.inner()));
    }
}

#[cfg(test)]
mod tests;
