//! `${VAR}` expansion in the config file's string values, so an orchestrator can hand a
//! replica its address, its cluster name or a password through the environment without a step
//! that renders the file. Only string values are expanded (never keys, comments or numbers),
//! after TOML parsing, so a value cannot break out of its string whatever it holds.
//!
//! Syntax: `${NAME}` (NAME is letters, digits and `_`, not starting with a digit) is replaced by
//! the variable's value; `$${` is a literal `${`; any other `$` is itself. A variable that is
//! not set (or not UTF-8) refuses the whole config, naming the variable, the key and the line:
//! a silently empty password or address is worse than a failed start.

use std::env::VarError;

use super::ConfigError;

/// Looks a variable up: the process environment in production, a map in tests.
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Result<String, VarError>;

/// Expands every string value under `table`; whether anything was expanded or unescaped.
/// `text` is the file, only to name the line of an error.
pub(crate) fn expand_table(
    table: &mut toml::Table,
    text: &str,
    env: Lookup<'_>,
) -> Result<bool, ConfigError> {
    let mut changed = false;
    // An explicit stack of (path, value) instead of recursion: the nesting is the file's.
    let mut stack: Vec<(String, &mut toml::Value)> = table
        .iter_mut()
        .map(|(key, value)| (key.clone(), value))
        .collect();
    while let Some((path, value)) = stack.pop() {
        match value {
            toml::Value::String(s) => {
                if let Some(expanded) = expand_str(s, env).map_err(|e| e.at(&path, text))? {
                    *s = expanded;
                    changed = true;
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    stack.push((format!("{path}[{i}]"), item));
                }
            }
            toml::Value::Table(inner) => {
                for (key, item) in inner.iter_mut() {
                    stack.push((format!("{path}.{key}"), item));
                }
            }
            _ => {}
        }
    }
    Ok(changed)
}

/// Why a string could not be expanded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    Unset(String),
    NotUnicode(String),
    /// `${` not followed by a name and `}`; the text from `${` on (cut short).
    Malformed(String),
}

impl ExpandError {
    fn at(self, path: &str, text: &str) -> ConfigError {
        let (needle, problem) = match &self {
            ExpandError::Unset(name) => (
                format!("${{{name}}}"),
                format!("environment variable {name} is not set (write $${{ for a literal ${{)"),
            ),
            ExpandError::NotUnicode(name) => (
                format!("${{{name}}}"),
                format!("environment variable {name} is not valid UTF-8"),
            ),
            ExpandError::Malformed(from) => (
                from.clone(),
                format!(
                    "\"{from}\" is not ${{NAME}} (NAME: letters, digits, '_'); write $${{ for a literal ${{"
                ),
            ),
        };
        // The first line that shows the reference; a key path alone can be hard to find in a
        // file with many [[tenants]].
        // Comment lines are skipped; a line that also names the key is preferred.
        let field = path.rsplit('.').next().unwrap_or(path);
        let field = field.split('[').next().unwrap_or(field);
        let candidates: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle.as_str()) && !l.trim_start().starts_with('#'))
            .map(|(n, _)| n)
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        let line = candidates
            .iter()
            .find(|&&n| lines[n].contains(field))
            .or(candidates.first())
            .map(|n| format!(" (line {})", n + 1))
            .unwrap_or_default();
        super::err(format!("{path}{line}"), problem)
    }
}

/// `s` with its references replaced, or `None` when it has none (nor any `$${`).
pub(crate) fn expand_str(s: &str, env: Lookup<'_>) -> Result<Option<String>, ExpandError> {
    if !s.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail.find('}');
            let name = end.map(|e| &tail[..e]);
            match name {
                Some(name) if is_name(name) => {
                    match env(name) {
                        Ok(value) => out.push_str(&value),
                        Err(VarError::NotPresent) => {
                            return Err(ExpandError::Unset(name.to_owned()));
                        }
                        Err(VarError::NotUnicode(_)) => {
                            return Err(ExpandError::NotUnicode(name.to_owned()));
                        }
                    }
                    rest = &tail[name.len() + 1..];
                }
                _ => {
                    let shown: String = after.chars().take(24).collect();
                    return Err(ExpandError::Malformed(shown));
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Result<String, VarError> {
        match name {
            "HOST" => Ok("db.internal".into()),
            "EMPTY" => Ok(String::new()),
            "DOLLAR" => Ok("${HOST}".into()),
            _ => Err(VarError::NotPresent),
        }
    }

    fn expand(s: &str) -> Result<Option<String>, ExpandError> {
        expand_str(s, &env)
    }

    #[test]
    fn references_are_replaced_and_escapes_unescaped() {
        assert_eq!(expand("no refs $HOST $ {x}"), Ok(None));
        assert_eq!(
            expand("postgres://u@${HOST}:5432/d"),
            Ok(Some("postgres://u@db.internal:5432/d".into()))
        );
        assert_eq!(
            expand("${HOST}/${HOST}"),
            Ok(Some("db.internal/db.internal".into()))
        );
        assert_eq!(expand("a${EMPTY}b"), Ok(Some("ab".into())));
        assert_eq!(
            expand("$${HOST} costs $5"),
            Ok(Some("${HOST} costs $5".into()))
        );
        assert_eq!(expand("$$${HOST}"), Ok(Some("$${HOST}".into())));
        // A value is never expanded again.
        assert_eq!(expand("${DOLLAR}"), Ok(Some("${HOST}".into())));
    }

    #[test]
    fn unset_and_malformed_references_are_refused() {
        assert_eq!(expand("x${NOPE}"), Err(ExpandError::Unset("NOPE".into())));
        assert!(matches!(expand("${}"), Err(ExpandError::Malformed(_))));
        assert!(matches!(expand("${HOST"), Err(ExpandError::Malformed(_))));
        assert!(matches!(expand("${1X}"), Err(ExpandError::Malformed(_))));
        assert!(matches!(expand("${A-B}"), Err(ExpandError::Malformed(_))));
        assert!(matches!(
            expand("${HOST:-x}"),
            Err(ExpandError::Malformed(_))
        ));
    }

    #[test]
    fn errors_name_the_variable_the_key_and_the_line() {
        let text = "[server]\n# ${NOPE} in a comment is ignored\nlisten = \"${NOPE}:8080\"\n";
        let mut table: toml::Table = toml::from_str(text).unwrap();
        let error = expand_table(&mut table, text, &env)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("server.listen (line 3)") && error.contains("NOPE is not set"),
            "{error}"
        );
    }

    #[test]
    fn arrays_and_nested_tables_are_walked_and_other_values_left_alone() {
        let text = "n = 3\n[a]\nlist = [\"${HOST}\", \"plain\"]\n[a.b]\nc = \"$${x}\"\n";
        let mut table: toml::Table = toml::from_str(text).unwrap();
        assert!(expand_table(&mut table, text, &env).unwrap());
        assert_eq!(table["a"]["list"][0].as_str(), Some("db.internal"));
        assert_eq!(table["a"]["list"][1].as_str(), Some("plain"));
        assert_eq!(table["a"]["b"]["c"].as_str(), Some("${x}"));
        assert_eq!(table["n"].as_integer(), Some(3));
    }

    proptest::proptest! {
        /// Text without `$` is returned untouched; an escaped text round-trips.
        #[test]
        fn escaping_round_trips(s in "[^$]{0,20}(\\$\\{[a-z]{0,4}\\}?)?[^$]{0,20}") {
            let escaped = s.replace("${", "$${");
            let expanded = expand(&escaped).unwrap().unwrap_or(escaped.clone());
            proptest::prop_assert_eq!(expanded, s);
        }
    }
}
