//! `${VAR}` expansion and secret lookup, behind a small trait so tests need not touch the
//! process environment.

use super::error::ConfigError;
use std::collections::HashMap;

/// Where `${VAR}` and `*_env` names are looked up.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in the file text; `$${` stays a literal `${`.
/// Comment lines are left alone so a commented-out reference cannot break loading.
pub fn expand(text: &str, env: &dyn Env) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(escaped) = after.strip_prefix("${") {
                out.push_str("${");
                rest = escaped;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let Some(end) = body.find('}') else {
                errors.push(located(lineno, pos, "unterminated ${ in the file"));
                out.push_str(&rest[pos..]);
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                errors.push(located(
                    lineno,
                    pos,
                    &format!("invalid variable name {name:?} in ${{...}}"),
                ));
            } else {
                match (env.var(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(located(
                        lineno,
                        pos,
                        &format!(
                            "environment variable {name} is not set (referenced as ${{{name}}})"
                        ),
                    )),
                }
            }
            rest = &body[end + 1..];
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn located(line: usize, col: usize, msg: &str) -> ConfigError {
    ConfigError {
        path: ".".into(),
        location: Some((line + 1, col + 1)),
        message: msg.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("HOST".into(), "10.0.0.1".into()),
            ("EMPTY".into(), String::new()),
        ])
    }

    #[test]
    fn expands_variables_and_defaults() {
        let out = expand("a: ${HOST}:80\nb: ${PORT:-9090}\nc: '${EMPTY}'\n", &env()).expect("ok");
        assert_eq!(out, "a: 10.0.0.1:80\nb: 9090\nc: ''\n");
    }

    #[test]
    fn escapes_and_comments_are_left_alone() {
        let out = expand("# ${MISSING}\na: $${HOST} $5\n", &env()).expect("ok");
        assert_eq!(out, "# ${MISSING}\na: ${HOST} $5\n");
    }

    #[test]
    fn missing_variables_are_reported_with_their_line() {
        let errs = expand("a: 1\nb: ${NOPE}\nc: ${ALSO_NOPE}\n", &env()).expect_err("must fail");
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].location, Some((2, 4)));
        assert!(errs[0].message.contains("NOPE"));
        assert!(expand("a: ${bad-name}\n", &env()).is_err());
        assert!(expand("a: ${HOST\n", &env()).is_err());
    }
}
