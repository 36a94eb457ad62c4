//! Errors of loading a scenario ([`ScenarioError`]) and of running it ([`RunError`]), and
//! how a JavaScript exception becomes `file:line:col: Kind: message` plus the source line.

use std::fmt;

/// A scenario that cannot run: refused before any user starts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{importer}: cannot import {specifier:?}: {reason}")]
    Import {
        importer: String,
        specifier: String,
        reason: String,
    },
    /// An exception or syntax error in init code, with its location when known.
    #[error("{0}")]
    Script(ScriptError),
    #[error(
        "{entry}: the scenario has no default export function (write `export default async function () {{ ... }}`)"
    )]
    NoDefault { entry: String },
    #[error("{entry}: `export {name}` must be a function")]
    NotAFunction { entry: String, name: String },
    #[error("{entry}: `options` cannot be read as JSON: {message}")]
    Options { entry: String, message: String },
    #[error("init code did not finish within {0:?} (an endless loop at the top level?)")]
    InitTimeout(std::time::Duration),
    #[error(
        "init code awaits something that never settles; init code must not wait for network or timers"
    )]
    InitPending,
    #[error("cannot start the JavaScript engine: {0}")]
    Engine(String),
}

/// A failure of a run (not of a request: those are metrics).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("setup() failed: {0}")]
    Setup(ScriptError),
    #[error("teardown() failed: {0}")]
    Teardown(ScriptError),
    #[error("handleSummary() failed: {0}")]
    HandleSummary(ScriptError),
    /// `handleSummary()` returned something other than an object of file contents.
    #[error("handleSummary() must return an object like {{ 'summary.txt': text }}: {0}")]
    HandleSummaryResult(String),
    #[error("{what} did not finish within {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: std::time::Duration,
    },
    #[error("setup() returned a value that is not JSON: {0}")]
    SetupData(String),
    #[error("cannot build the http client: {0}")]
    Http(String),
    #[error("cannot start worker thread: {0}")]
    Thread(String),
    #[error("worker {0} stopped before it was ready")]
    WorkerLost(usize),
    #[error("invalid engine configuration: {0}")]
    Config(String),
}

/// A JavaScript error with its location: `file:line:col: Kind: message`, then the offending
/// source line and a caret when the source is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError {
    pub location: Option<Location>,
    /// `SyntaxError`, `TypeError`, `Error`, or empty for a thrown non-error value.
    pub kind: String,
    pub message: String,
    /// The source line at `location`, when the file is known.
    pub source_line: Option<String>,
}

/// A place in a script; line and column are 1-based.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{loc}: ")?;
        }
        if self.kind.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.kind, self.message)?;
        }
        if let (Some(loc), Some(line)) = (&self.location, &self.source_line) {
            let number = loc.line.to_string();
            let pad = " ".repeat(number.len());
            let caret_pad: String = line
                .chars()
                .take(loc.column.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            write!(
                f,
                "\n   {number} | {line}\n   {pad} | {caret_pad}^",
                line = line.trim_end()
            )?;
        }
        Ok(())
    }
}

impl ScriptError {
    /// An error with no location (e.g. a thrown string).
    pub(crate) fn plain(message: impl Into<String>) -> Self {
        Self {
            location: None,
            kind: String::new(),
            message: message.into(),
            source_line: None,
        }
    }

    /// The error message with its location only, for one-line logs.
    pub fn short(&self) -> String {
        let mut s = String::new();
        if let Some(loc) = &self.location {
            s.push_str(&format!("{loc}: "));
        }
        if !self.kind.is_empty() {
            s.push_str(&self.kind);
            s.push_str(": ");
        }
        s.push_str(&self.message);
        s
    }
}

/// Finds the first `file:line:col` of a QuickJS stack trace (`    at f (x.js:2:9)` or
/// `    at x.js:2:9`) whose file is one of ours, i.e. passes `known`.
pub(crate) fn location_from_stack(stack: &str, known: impl Fn(&str) -> bool) -> Option<Location> {
    let mut first = None;
    for line in stack.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("at ") else {
            continue;
        };
        let spot = match (rest.rfind('('), rest.ends_with(')')) {
            (Some(open), true) => &rest[open + 1..rest.len() - 1],
            _ => rest,
        };
        let Some(loc) = parse_location(spot) else {
            continue;
        };
        if known(&loc.file) {
            return Some(loc);
        }
        first.get_or_insert(loc);
    }
    first
}

fn parse_location(spot: &str) -> Option<Location> {
    let (rest, column) = spot.rsplit_once(':')?;
    let (file, line) = rest.rsplit_once(':')?;
    Some(Location {
        file: file.to_owned(),
        line: line.parse().ok()?,
        column: column.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_points_at_the_column() {
        let e = ScriptError {
            location: Some(Location {
                file: "scenarios/x.js".into(),
                line: 12,
                column: 9,
            }),
            kind: "SyntaxError".into(),
            message: "unexpected token".into(),
            source_line: Some("let x = ;".into()),
        };
        assert_eq!(
            e.to_string(),
            "scenarios/x.js:12:9: SyntaxError: unexpected token\n   12 | let x = ;\n      |         ^"
        );
    }

    #[test]
    fn stack_locations() {
        let stack = "    at <anonymous> (native)\n    at default (lib/a.js:3:14)\n";
        let loc = location_from_stack(stack, |f| f.ends_with(".js")).unwrap();
        assert_eq!(
            (loc.file.as_str(), loc.line, loc.column),
            ("lib/a.js", 3, 14)
        );
        assert_eq!(
            location_from_stack("    at x.js:2:9\n", |_| true)
                .unwrap()
                .line,
            2
        );
        assert!(location_from_stack("garbage", |_| true).is_none());
    }
}
