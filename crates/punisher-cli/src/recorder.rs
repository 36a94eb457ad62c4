//! The results folder of a local run, written by a thread of its own: `run.json` at the
//! start, one journalled second at a time (`timeseries.jsonl` and the `.hlog` files) while
//! the run goes on, and `summary.json`, `junit.xml` and `report.html` at the end.
//!
//! Appending a second costs 1-70 ms (deflating histograms, flushing files): far too long
//! for the run loop, which must keep merging worker reports. So the loop hands each second
//! to the [`Recorder`] through a bounded channel and never waits for it; when the thread
//! falls behind (a stalled disk), seconds are merged in the loop and sent as one longer
//! interval once there is room, so that nothing is lost and nothing blocks.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::Context;
use punisher_metrics::{Snapshot, Summary};
use punisher_results::{Journal, LiveNumbers, ResultsDir, RunInfo};
use tokio::sync::{mpsc, oneshot};

/// Seconds waiting for the writer thread. A minute of backlog means the disk is stuck;
/// beyond it the loop merges seconds instead of queueing more of them.
const SECONDS_CHANNEL_CAPACITY: usize = 64;

enum Message {
    Second(Box<Snapshot>, LiveNumbers),
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
    warned_full: bool,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    /// Creates `base/run_id/`, writes `run.json` and starts the writer thread. Errors here
    /// come before any user starts.
    pub(crate) fn start(base: &Path, run_id: &str, info: &RunInfo) -> anyhow::Result<Recorder> {
        let dir = ResultsDir::create(base, run_id)
            .with_context(|| format!("cannot create the results folder in {}", base.display()))?;
        dir.write_run_info(info)
            .context("cannot write the run's run.json")?;
        let journal = dir.journal().context("cannot start the run's journal")?;
        let (tx, rx) = mpsc::channel(SECONDS_CHANNEL_CAPACITY);
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("punisher-results".into())
            .spawn(move || write_loop(thread_dir, journal, rx))
            .context("cannot start the results writer thread")?;
        Ok(Recorder {
            dir,
            tx,
            carry: None,
            warned_full: false,
            thread: Some(thread),
        })
    }

    /// Queues one merged second; never waits.
    pub(crate) fn append(&mut self, second: Snapshot, live: LiveNumbers) {
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
                        "the results writer is behind; merging seconds until it catches up"
                    );
                }
                self.carry = Some((*second, live));
            }
            // The thread is gone (it only stops on a panic); its error comes with `finish`.
            Err(_) => {}
        }
    }

    /// Writes `run.json` with its end time, the summary, JUnit and HTML report; returns the
    /// folder and the problems met on the way (each second's write errors included).
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

fn write_loop(dir: ResultsDir, mut journal: Journal, mut rx: mpsc::Receiver<Message>) {
    let mut problems: Vec<String> = Vec::new();
    let mut failed_seconds = 0u64;
    while let Some(message) = rx.blocking_recv() {
        match message {
            Message::Second(second, live) => {
                if let Err(e) = journal.append(&second, &live) {
                    failed_seconds += 1;
                    if failed_seconds == 1 {
                        tracing::warn!(error = %e, "cannot journal a second of the run");
                        problems.push(format!("journal: {e}"));
                    }
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
                if let Err(e) = dir.write_outputs(Some(&info), &summary, journal.timeline()) {
                    problems.push(format!("report files: {e}"));
                }
                let _ = done.send(std::mem::take(&mut problems));
                return;
            }
        }
    }
}
