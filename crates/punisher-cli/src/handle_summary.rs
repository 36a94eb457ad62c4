//! The files a scenario's `handleSummary(data)` returned (see
//! `punisher_engine::run_handle_summary`), written as k6 writes them: the keys `stdout` and
//! `stderr` are printed there, every other key is a file path, relative ones resolved
//! against the current directory (not the results folder). Parent folders are created.
//!
//! A file that cannot be written does not stop the others: every failure is listed in one
//! error, which also says where the run's summary is kept, so that nothing is lost.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::anyhow;

/// Writes (or prints) every output of `handleSummary`; `results_dir` is the run's results
/// folder, named in the error so that the user knows the summary is safe there.
pub(crate) fn write_outputs(
    files: &BTreeMap<String, String>,
    results_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (key, content) in files {
        let written = match key.as_str() {
            "stdout" => {
                let mut out = std::io::stdout().lock();
                out.write_all(content.as_bytes()).and_then(|()| out.flush())
            }
            "stderr" => {
                let mut err = std::io::stderr().lock();
                err.write_all(content.as_bytes()).and_then(|()| err.flush())
            }
            path => write_file(Path::new(path), content),
        };
        if let Err(e) = written {
            failures.push(format!("{key}: {e}"));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let kept = match results_dir {
        Some(dir) => format!(
            "; the run's summary is kept in {}",
            dir.join(punisher_results::dir::SUMMARY_JSON).display()
        ),
        None => String::new(),
    };
    Err(anyhow!(
        "handleSummary: cannot write {} of its {} outputs: {}{kept}",
        failures.len(),
        files.len(),
        failures.join("; ")
    ))
}

fn write_file(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_files_relative_to_the_current_directory_and_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("out/deep/summary.txt");
        let files = BTreeMap::from([
            (nested.display().to_string(), "hello".to_owned()),
            ("stderr".to_owned(), String::new()),
        ]);
        write_outputs(&files, None).unwrap();
        assert_eq!(std::fs::read_to_string(&nested).unwrap(), "hello");
    }

    #[test]
    fn a_failed_write_is_reported_and_the_others_are_still_written() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a folder should be: its child cannot be created.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "x").unwrap();
        let bad = blocker.join("summary.txt");
        let good = dir.path().join("good.txt");
        let files = BTreeMap::from([
            (bad.display().to_string(), "a".to_owned()),
            (good.display().to_string(), "b".to_owned()),
        ]);
        let results = dir.path().join("results/run-1");
        let err = write_outputs(&files, Some(&results))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot write 1 of its 2 outputs"), "{err}");
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains("run-1/summary.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&good).unwrap(), "b");
    }
}
