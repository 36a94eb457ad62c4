//! The run's results folder (punisher-results' format, the same as every `punisher run`
//! leaves): `run.json` when the run is accepted and again as it learns its agents, its start
//! and its end; one merged second at a time `timeseries.jsonl` and the `.hlog` files; and at
//! the end `summary.json`, `junit.xml` and `report.html`.
//!
//! Appending a second costs 1-70 ms (deflating histograms, flushing files), far too long
//! for the hub, which must keep merging agents' reports. So the hub hands each second to
//! the [`Recorder`]'s thread through a bounded channel before it shows that second, and
//! never waits for it. When the thread falls behind (a stalled disk), seconds are merged in
//! the hub and sent as one longer interval once there is room: nothing is lost, nothing
//! blocks, and a crash loses only what the thread had not written yet (the second in
//! flight, unless the disk stalls).

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use punisher_metrics::{Snapshot, Summary};
use punisher_results::{Journal, LiveNumbers, ResultsDir, RunInfo};
use tokio::sync::{mpsc, oneshot};

/// Seconds waiting for the writer thread. A minute of backlog means the disk is stuck;
/// beyond it the hub merges seconds instead of queueing more of them.
const SECONDS_CHANNEL_CAPACITY: usize = 64;

enum Message {
    Second(Box<Snapshot>, LiveNumbers),
    /// `run.json` again, with what the run learnt since (agents, start time).
    Info(Box<RunInfo>),
    Finish {
        info: Box<RunInfo>,
        summary: Box<Summary>,
        done: oneshot::Sender<Vec<String>>,
    },
}

/// The writer of one run's results folder.
pub(crate) struct Recorder {
    dir: ResultsDir,
    tx: mpsc::Sender<Message>,
    /// A second (or several, merged) that did not fit in the channel yet.
    carry: Option<(Snapshot, LiveNumbers)>,
    /// A `run.json` update that did not fit in the channel yet.
    carry_info: Option<RunInfo>,
    warned_full: bool,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Starts the writer thread of a created folder; the thread writes `run.json` first.
    pub(crate) fn start(dir: ResultsDir, info: RunInfo) -> std::io::Result<Recorder> {
        let (tx, rx) = mpsc::channel(SECONDS_CHANNEL_CAPACITY);
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("punisher-results".into())
            .spawn(move || write_loop(thread_dir, info, rx))?;
        Ok(Recorder {
            dir,
            tx,
            carry: None,
            carry_info: None,
            warned_full: false,
            thread: Some(thread),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites `run.json`; never waits.
    pub(crate) fn update_info(&mut self, info: RunInfo) {
        match self.tx.try_send(Message::Info(Box::new(info))) {
            Ok(()) => self.carry_info = None,
            Err(mpsc::error::TrySendError::Full(Message::Info(info))) => {
                self.carry_info = Some(*info);
            }
            // The thread is gone (it only stops on a panic); `finish` says so.
            Err(_) => {}
        }
    }

    /// Queues one merged second; never waits.
    pub(crate) fn append(&mut self, second: Snapshot, live: LiveNumbers) {
        if let Some(info) = self.carry_info.take() {
            self.update_info(info);
        }
        let (second, live) = match self.carry.take() {
            Some((mut earlier, _)) => {
                if let Err(e) = earlier.merge(&second) {
                    tracing::warn!(error = %e, "a journalled second could not be merged");
                }
                (earlier, live)
            }
            None => (second, live),
        };
        match self.tx.try_send(Message::Second(Box::new(second), live)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Message::Second(second, live))) => {
                if !self.warned_full {
                    self.warned_full = true;
                    tracing::warn!(
                        dir = %self.dir.path().display(),
                        "the results writer is behind; merging seconds until it catches up"
                    );
                }
                self.carry = Some((*second, live));
            }
            Err(_) => {}
        }
    }

    /// The end of the run: `run.json` with its end time and agents, `summary.json`,
    /// `junit.xml` and `report.html`. The future (spawn it: it waits for the disk) yields
    /// the folder and the problems met on the way, each second's write errors included.
    pub(crate) async fn finish(
        mut self,
        info: RunInfo,
        summary: Summary,
    ) -> (PathBuf, Vec<String>) {
        let mut problems = Vec::new();
        if let Some((second, live)) = self.carry.take()
            && self
                .tx
                .send(Message::Second(Box::new(second), live))
                .await
                .is_err()
        {
            problems.push("the results writer stopped early".to_owned());
        }
        // A `run.json` update still waiting is superseded by the final one.
        self.carry_info = None;
        let (done, result) = oneshot::channel();
        let sent = self
            .tx
            .send(Message::Finish {
                info: Box::new(info),
                summary: Box::new(summary),
                done,
            })
            .await;
        match (sent, result.await) {
            (Ok(()), Ok(mut reported)) => problems.append(&mut reported),
            _ => problems.push("the results writer stopped early".to_owned()),
        }
        if let Some(thread) = self.thread.take() {
            // It has answered (or died): joining does not wait for work.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                problems.push("the results writer panicked".to_owned());
            }
        }
        (self.dir.path().to_owned(), problems)
    }
}

fn write_loop(dir: ResultsDir, info: RunInfo, mut rx: mpsc::Receiver<Message>) {
    let mut problems: Vec<String> = Vec::new();
    if let Err(e) = dir.write_run_info(&info) {
        tracing::warn!(error = %e, "cannot write run.json");
        problems.push(format!("run.json: {e}"));
    }
    let mut journal: Option<Journal> = match dir.journal() {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the run's journal");
            problems.push(format!("journal: {e}"));
            None
        }
    };
    let mut failed_seconds = 0u64;
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Second(second, live) => {
                let Some(journal) = journal.as_mut() else {
                    continue;
                };
                if let Err(e) = journal.append(&second, &live) {
                    failed_seconds += 1;
                    if failed_seconds == 1 {
                        tracing::warn!(error = %e, "cannot journal a second of the run");
                        problems.push(format!("journal: {e}"));
                    }
                }
            }
            Message::Info(info) => {
                if let Err(e) = dir.write_run_info(&info) {
                    tracing::warn!(error = %e, "cannot write run.json");
                }
            }
            Message::Finish {
                info,
                summary,
                done,
            } => {
                if failed_seconds > 1 {
                    problems.push(format!("{failed_seconds} seconds could not be journalled"));
                }
                if let Err(e) = dir.write_run_info(&info) {
                    problems.push(format!("run.json: {e}"));
                }
                let empty = punisher_results::Timeline::new();
                let timeline = journal.as_ref().map_or(&empty, Journal::timeline);
                if let Err(e) = dir.write_outputs(Some(&info), &summary, timeline) {
                    problems.push(format!("report files: {e}"));
                }
                let _ = done.send(std::mem::take(&mut problems));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punisher_metrics::{MetricKind, Recorder as Metrics, SummaryMeta, Tags, Totals, ValueType};
    use punisher_results::dir::{JUNIT_XML, REPORT_HTML, RUN_JSON, SUMMARY_JSON, TIMESERIES_JSONL};

    #[tokio::test]
    async fn writes_every_file_of_the_folder_from_its_thread() {
        let base = tempfile::tempdir().unwrap();
        let dir = ResultsDir::create(base.path(), "run-1").unwrap();
        let info = RunInfo::new(
            "run-1",
            "0.0.0",
            "s.js",
            "export default function () {}",
            serde_json::json!({}),
            vec!["punisher".into()],
            1_000,
        );
        let mut recorder = Recorder::start(dir, info.clone()).unwrap();
        let mut metrics = Metrics::new();
        let id = metrics
            .series(
                MetricKind::Trend,
                ValueType::Time,
                "http_req_duration",
                &Tags::new([("name", "x")]),
            )
            .unwrap();
        let mut totals = Totals::new();
        for s in 0..3u64 {
            for ms in 1..=10 {
                metrics.add_trend(id, ms as f64);
            }
            let second = metrics.take_snapshot(1_000 + s * 1000, 2_000 + s * 1000);
            totals.add(&second).unwrap();
            recorder.append(second, LiveNumbers::default());
        }
        let mut info = info;
        info.finish(4_000);
        recorder.update_info(info.clone());
        let summary = Summary::build(
            &totals,
            &[],
            SummaryMeta::new("s.js", "shared-iterations", Default::default(), 1),
        );
        let (path, problems) = recorder.finish(info, summary).await;
        assert!(problems.is_empty(), "{problems:?}");
        for file in [
            RUN_JSON,
            SUMMARY_JSON,
            TIMESERIES_JSONL,
            JUNIT_XML,
            REPORT_HTML,
        ] {
            assert!(path.join(file).is_file(), "{file}");
        }
        assert!(path.join("http_req_duration.hlog").is_file());
        let replayed = Journal::replay(&path).unwrap();
        assert_eq!(replayed.seconds, 3);
    }
}
