//! The [`Bundle`]: a scenario's entry script, the local modules it imports and the data
//! files it opens, keyed by path. It is what the cluster ships to agents, so nothing in the
//! engine reads the disk once a bundle exists (except `inspect`, which adds opened files).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ScenarioError;

/// Module names served by the engine itself rather than by the bundle.
pub(crate) const NATIVE_MODULES: &[&str] = &[
    "punisher",
    "punisher/http",
    "punisher/ws",
    "punisher/socketio",
];

/// A scenario and everything it needs, keyed by normalised paths (as the user wrote the entry
/// path; imports resolved against their importer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The key of the entry script in `sources`.
    pub entry: String,
    /// JavaScript modules: the entry and its transitive relative imports.
    pub sources: BTreeMap<String, String>,
    /// Files read with `open()` during init.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    /// Reads the entry script and, transitively, every module it imports with a relative
    /// path (`./x.js`, `../lib/y.js`). Files passed to `open()` are added by `inspect`.
    pub fn from_path(path: &Path) -> Result<Bundle, ScenarioError> {
        let entry = normalize(&path.to_string_lossy());
        let mut sources = BTreeMap::new();
        let mut queue = vec![(entry.clone(), None::<(String, String)>)];
        while let Some((name, importer)) = queue.pop() {
            if sources.contains_key(&name) {
                continue;
            }
            let text = std::fs::read_to_string(&name).map_err(|e| match &importer {
                Some((importer, specifier)) => ScenarioError::Import {
                    importer: importer.clone(),
                    specifier: specifier.clone(),
                    reason: format!("cannot read {name}: {e}"),
                },
                None => ScenarioError::Read {
                    path: name.clone(),
                    message: e.to_string(),
                },
            })?;
            for (line, spec) in static_imports(&text) {
                if is_relative(&spec) {
                    let importer = format!("{name}:{line}");
                    queue.push((resolve(&name, &spec), Some((importer, spec))));
                }
            }
            sources.insert(name, text);
        }
        Ok(Bundle {
            entry,
            sources,
            files: BTreeMap::new(),
        })
    }

    /// A bundle of one in-memory script (tests, embedded scenarios).
    pub fn from_source(entry: impl Into<String>, source: impl Into<String>) -> Bundle {
        let entry = entry.into();
        Bundle {
            sources: BTreeMap::from([(entry.clone(), source.into())]),
            entry,
            files: BTreeMap::new(),
        }
    }
}

pub(crate) fn is_relative(spec: &str) -> bool {
    spec.starts_with("./") || spec.starts_with("../")
}

/// Resolves `spec` against the module or file named `base`.
pub(crate) fn resolve(base: &str, spec: &str) -> String {
    if spec.starts_with('/') {
        return normalize(spec);
    }
    let dir = match base.rfind('/') {
        Some(i) => &base[..=i],
        None => "",
    };
    normalize(&format!("{dir}{spec}"))
}

/// Collapses `.` and `..` segments lexically; keeps leading `..` of relative paths.
pub(crate) fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// The string specifiers of `import ... from 'x'`, `import 'x'`, `export ... from 'x'` and
/// `import('x')`, with their 1-based line. A small lexer skips comments, strings and
/// template literals so that commented-out imports are not followed.
pub(crate) fn static_imports(src: &str) -> Vec<(u32, String)> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    // Whether the last significant token was `import`/`export`/`from`, i.e. a string now is a specifier.
    let mut expect_spec = false;
    // Inside an import/export statement (until its specifier or a `;`).
    let mut in_stmt = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
            }
            b'\'' | b'"' | b'`' => {
                let start_line = line;
                let quote = c;
                i += 1;
                let start = i;
                while i < bytes.len() && bytes[i] != quote {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    if bytes.get(i) == Some(&b'\n') {
                        line += 1;
                    }
                    i += 1;
                }
                if expect_spec && quote != b'`' {
                    out.push((start_line, src[start..i.min(bytes.len())].to_owned()));
                    in_stmt = false;
                }
                expect_spec = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b'$' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'$')
                {
                    i += 1;
                }
                let preceded_by_dot = start > 0 && bytes[start - 1] == b'.';
                match &src[start..i] {
                    "import" | "export" if !preceded_by_dot => {
                        in_stmt = true;
                        expect_spec = true;
                    }
                    "from" if in_stmt => expect_spec = true,
                    _ => expect_spec = false,
                }
            }
            b'(' if expect_spec => i += 1, // import('x')
            b';' => {
                in_stmt = false;
                expect_spec = false;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                expect_spec = false;
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_against_the_importer() {
        assert_eq!(
            resolve("scenarios/x.js", "./lib/a.js"),
            "scenarios/lib/a.js"
        );
        assert_eq!(resolve("scenarios/lib/a.js", "../b.js"), "scenarios/b.js");
        assert_eq!(resolve("x.js", "../b.js"), "../b.js");
        assert_eq!(resolve("/tmp/t/x.js", "./data.csv"), "/tmp/t/data.csv");
        assert_eq!(normalize("./scenarios//x.js"), "scenarios/x.js");
    }

    #[test]
    fn imports_are_found_outside_comments() {
        let src = r#"
import http from 'punisher/http';
import { a, b } from "./lib/a.js";
// import x from './commented.js';
/* import y from './also.js'; */
import './side.js';
export { c } from './c.js';
const s = "import z from './string.js'";
const later = () => import('./dyn.js');
obj.import('./not.js');
"#;
        let specs: Vec<_> = static_imports(src).into_iter().map(|(_, s)| s).collect();
        assert_eq!(
            specs,
            [
                "punisher/http",
                "./lib/a.js",
                "./side.js",
                "./c.js",
                "./dyn.js"
            ]
        );
        assert_eq!(static_imports(src)[1].0, 3);
    }
}
