//! Configuration problems, each tied to the YAML path it concerns.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted YAML path, e.g. `routes[2].upstream` (`.` for the whole document).
    pub path: String,
    /// 1-based line and column, where the YAML parser knows them.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            location: None,
            message: message.into(),
        }
    }

    /// From a serde_yaml error found at `path`. serde_yaml appends "at line L column C" to its
    /// messages; the position is kept as data and the suffix dropped so it is not printed twice.
    pub fn from_yaml(path: String, err: &serde_yaml::Error) -> Self {
        let location = err.location().map(|l| (l.line(), l.column()));
        let mut message = err.to_string();
        if let Some(idx) = message.rfind(" at line ") {
            if message[idx..].contains(" column ") {
                message.truncate(idx);
            }
        }
        // serde_path_to_error already tells the path; serde_yaml sometimes prefixes it too.
        let prefix = format!("{path}: ");
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.to_string();
        }
        ConfigError {
            path: if path.is_empty() { ".".into() } else { path },
            location,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some((line, col)) = self.location {
            write!(f, " (line {line}, column {col})")?;
        }
        Ok(())
    }
}

/// Every problem found in one file, reported together.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
