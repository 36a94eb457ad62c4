//! The dashboard on a real terminal: `punisher` runs inside tmux (a private server, a fixed
//! size), the test reads the screen with `capture-pane` and types with `send-keys`, as a
//! person would. Every wait polls the screen against a deadline.
//!
//! Skipped with a SKIPPED line when tmux is not installed, and failed under CI.

#[path = "../../../test-support/skip.rs"]
mod skip;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use skip::skip;
use tokio::time::Instant;

const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;

fn punisher() -> &'static str {
    env!("CARGO_BIN_EXE_punisher")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A tmux server of our own, killed on drop whatever happens to the test.
struct Tmux {
    socket: String,
    /// The socket's file, removed with the server.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a detached session of `WIDTH` x `HEIGHT`.
    /// The shell prints `EXIT=<code>` and `TTY=<modes>` when the command ends and then stays,
    /// so the final screen can still be read.
    fn start(name: &str, command: &str) -> Tmux {
        Tmux::start_sized(name, command, WIDTH, HEIGHT)
    }

    fn start_sized(name: &str, command: &str, width: u16, height: u16) -> Tmux {
        let socket = format!("punisher-{name}-{}", std::process::id());
        let mut tmux = Tmux {
            socket,
            socket_path: None,
        };
        // After the exit code, the terminal's line discipline: `TTY=icanon echo` when the
        // program gave the terminal back, `-icanon -echo` when it left it raw.
        let shell = format!(
            "{command}; echo EXIT=$?; \
             echo TTY=$(stty -a | tr ' ;' '\\n\\n' | grep -x -e -icanon -e icanon -e -echo -e echo); \
             sleep 600"
        );
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "sh",
            "-c",
            &shell,
        ]);
        // Keep what scrolls off the top (the summary is longer than the screen).
        tmux.run(&["set-option", "-t", "main", "history-limit", "5000"]);
        let out = tmux.run(&["display-message", "-p", "#{socket_path}"]);
        tmux.socket_path = Some(String::from_utf8_lossy(&out.stdout).trim().into());
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The visible screen.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "main"]).stdout).into()
    }

    /// The screen and its scrollback.
    fn history(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "main"]);
        String::from_utf8_lossy(&out.stdout).into()
    }

    /// Whether the program in the pane is on the alternate screen (the dashboard is up).
    fn alternate_on(&self) -> bool {
        let out = self.run(&["display-message", "-p", "-t", "main", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Presses one key by its tmux name (`C-c`, `Enter`).
    fn press(&self, key: &str) {
        self.run(&["send-keys", "-t", "main", key]);
    }

    fn resize(&self, width: u16, height: u16) {
        self.run(&[
            "resize-window",
            "-t",
            "main",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
    }

    /// Types `keys` literally.
    fn type_keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "main", "-l", keys]);
    }

    /// Waits for the command to end and checks that it gave the terminal back: the main
    /// screen, cooked mode (`TTY=icanon echo`) and exit code 0. Returns the whole history.
    async fn wait_for_clean_exit(&self) -> String {
        let screen = self
            .wait_for("the run to end", Duration::from_secs(60), |s| {
                // The last line the shell prints after the command.
                s.contains("TTY=")
            })
            .await;
        assert!(!self.alternate_on(), "{screen}");
        let all = self.history();
        assert!(all.contains("EXIT=0"), "{all}");
        assert!(all.contains("TTY=icanon echo"), "{all}");
        all
    }

    /// Polls the screen until `done` holds or `timeout` passes; returns that screen.
    async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            if screen.contains("TTY=") {
                panic!("the command ended while waiting for {what}; the screen:\n{screen}");
            }
            if Instant::now() >= deadline {
                panic!("timed out waiting for {what}; the screen:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The `users ACTIVE/TARGET` numbers in the dashboard's header.
fn users(screen: &str) -> Option<(u64, u64)> {
    let at = screen.find("users ")? + "users ".len();
    let rest = &screen[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '/'))
        .unwrap_or(rest.len());
    let (active, target) = rest[..end].split_once('/')?;
    Some((active.parse().ok()?, target.parse().ok()?))
}

#[tokio::test]
async fn run_on_a_terminal_shows_the_dashboard_scales_and_stops() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let command = format!(
        "cd {} && {} run scenarios/smoke.js --demo-target --vus 10 --duration 2m \
         --results-dir {}",
        workspace().display(),
        punisher(),
        results.path().display(),
    );
    let tmux = Tmux::start("run", &command);

    let screen = tmux
        .wait_for(
            "the dashboard of a running run",
            Duration::from_secs(60),
            // Every user in and requests in the table: the load is on.
            |s| s.contains("RUNNING") && users(s) == Some((10, 10)) && s.contains("│login "),
        )
        .await;
    assert!(tmux.alternate_on(), "{screen}");
    assert!(screen.contains("smoke.js"), "{screen}");

    // `+`: ten percent more users, 10 -> 11, as `punisher ctl scale 11` would; the new
    // user starts.
    tmux.type_keys("+");
    tmux.wait_for("11 users", Duration::from_secs(20), |s| {
        users(s) == Some((11, 11))
    })
    .await;

    // `p` pauses arrivals (the header says so, the footer offers to resume), `p` again
    // resumes them.
    tmux.type_keys("p");
    tmux.wait_for("the paused header", Duration::from_secs(20), |s| {
        s.contains("PAUSED") && s.contains("sent: pause arrivals") && s.contains("resume")
    })
    .await;
    tmux.type_keys("p");
    tmux.wait_for("the run resumed", Duration::from_secs(20), |s| {
        s.contains("RUNNING") && s.contains("sent: resume arrivals")
    })
    .await;

    // `?` opens the help over the dashboard, `?` closes it.
    tmux.type_keys("?");
    tmux.wait_for("the help", Duration::from_secs(20), |s| {
        s.contains("pause / resume arrivals") && s.contains("graceful stop")
    })
    .await;
    tmux.type_keys("?");
    tmux.wait_for("the help to close", Duration::from_secs(20), |s| {
        !s.contains("pause / resume arrivals") && s.contains("RUNNING")
    })
    .await;

    // `x`: a graceful stop; the dashboard leaves and the summary is printed on the normal
    // screen.
    tmux.type_keys("x");
    let all = tmux.wait_for_clean_exit().await;
    assert!(all.contains("http_req_duration"), "the summary:\n{all}");
    assert!(all.contains("stopped by the operator"), "{all}");
    // Nothing of the dashboard is left on the normal screen.
    assert!(!all.contains("RUNNING"), "{all}");
}

/// A child `punisher` whose stderr is read line by line; killed on drop.
struct Proc {
    child: tokio::process::Child,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = tokio::process::Command::new(punisher())
            .args(args)
            .current_dir(workspace())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("punisher starts");
        let stderr = child.stderr.take().unwrap();
        Proc {
            child,
            stderr: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr)),
        }
    }

    /// The first stderr line containing `needle`, within `timeout`.
    async fn line_with(&mut self, needle: &str, timeout: Duration) -> String {
        let read = async {
            while let Some(line) = self.stderr.next_line().await.unwrap() {
                if line.contains(needle) {
                    return line;
                }
            }
            panic!("stderr ended before a line with {needle:?}");
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| panic!("no line with {needle:?} within {timeout:?}"))
    }
}

/// `punisher run --controller --wait-for-start` loads and holds; `punisher ctl watch` on a
/// terminal attaches the dashboard, which says so; `s` starts the run, `q` detaches and the
/// run goes on until `punisher ctl stop`.
#[tokio::test]
async fn ctl_watch_attaches_starts_a_held_run_and_detaches() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let token = "tui-test-token";
    let mut controller = Proc::spawn(&[
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--insecure-loopback",
        "--token",
        token,
        "--results-dir",
        results.path().to_str().unwrap(),
    ]);
    let line = controller
        .line_with("controller listening on ", Duration::from_secs(30))
        .await;
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    let conn = [
        "--controller",
        addr.as_str(),
        "--token",
        token,
        "--insecure-loopback",
    ];
    let mut target = Proc::spawn(&["target", "--listen", "127.0.0.1:0"]);
    let line = target
        .line_with("listening on http://", Duration::from_secs(30))
        .await;
    let api = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let _agent = Proc::spawn(&[&["agent", "--workers", "1"][..], &conn].concat());
    let env = format!("API={api}");
    let mut run = Proc::spawn(
        &[
            &[
                "run",
                "scenarios/smoke.js",
                "--vus",
                "5",
                "--duration",
                "2m",
                "--wait-for-start",
                "--no-tui",
                "-e",
                env.as_str(),
            ][..],
            &conn,
        ]
        .concat(),
    );
    run.line_with("waits for `punisher ctl start`", Duration::from_secs(30))
        .await;

    let tmux = Tmux::start(
        "watch",
        &format!("{} ctl {} watch", punisher(), conn.join(" ")),
    );
    let screen = tmux
        .wait_for(
            "the held run, loaded on its agent",
            Duration::from_secs(60),
            |s| {
                s.contains("WAITING")
                    && s.contains("press s to start")
                    && s.contains("waiting for a start signal")
            },
        )
        .await;
    assert!(screen.contains("smoke.js"), "{screen}");
    tmux.type_keys("s");
    tmux.wait_for("the run to start", Duration::from_secs(30), |s| {
        s.contains("RUNNING") && s.contains("start signal received")
    })
    .await;
    // Started once: `punisher ctl start` is refused now.
    let out = Command::new(punisher())
        .args([&["ctl"][..], &conn, &["start"]].concat())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not waiting for a start signal"),
        "{stderr}"
    );
    tmux.type_keys("q");
    let screen = tmux
        .wait_for("the watch to detach", Duration::from_secs(30), |s| {
            // The last line the shell prints after the command.
            s.contains("TTY=")
        })
        .await;
    assert!(!tmux.alternate_on(), "{screen}");
    assert!(screen.contains("detached;"), "{screen}");
    assert!(screen.contains("EXIT=0"), "{screen}");

    // The run went on without the watcher; stopping it ends the submitter with its summary.
    let out = Command::new(punisher())
        .args([&["ctl"][..], &conn, &["stop", "--grace", "5s"]].concat())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = tokio::time::timeout(Duration::from_secs(60), run.child.wait())
        .await
        .expect("the run ends after ctl stop")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let mut summary = String::new();
    tokio::io::AsyncReadExt::read_to_string(run.child.stdout.as_mut().unwrap(), &mut summary)
        .await
        .unwrap();
    assert!(summary.contains("http_req_duration"), "{summary}");
}

fn local_run(results: &Path) -> String {
    format!(
        "cd {} && {} run scenarios/smoke.js --demo-target --vus 5 --duration 2m --results-dir {}",
        workspace().display(),
        punisher(),
        results.display(),
    )
}

/// A small terminal gets fewer panels, a resize brings the rest, and `q` on a local run asks
/// before it stops the run.
#[tokio::test]
async fn a_small_terminal_resizes_and_q_asks_before_stopping() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let tmux = Tmux::start_sized("small", &local_run(results.path()), 60, 16);
    let screen = tmux
        .wait_for("the small dashboard", Duration::from_secs(60), |s| {
            s.contains("RUNNING") && users(s) == Some((5, 5))
        })
        .await;
    assert!(!screen.contains("requests (ms)"), "{screen}");
    tmux.resize(WIDTH, HEIGHT);
    tmux.wait_for(
        "every panel after the resize",
        Duration::from_secs(20),
        |s| s.contains("requests (ms)") && s.contains("│login ") && s.contains("agents"),
    )
    .await;
    tmux.type_keys("q");
    tmux.wait_for("the question", Duration::from_secs(20), |s| {
        s.contains("Quit? This stops the local run.")
    })
    .await;
    // `n` keeps it going; `q` then `y` stops it.
    tmux.type_keys("n");
    tmux.wait_for("the question to close", Duration::from_secs(20), |s| {
        !s.contains("Quit? This stops") && s.contains("RUNNING")
    })
    .await;
    tmux.type_keys("q");
    tmux.wait_for("the question", Duration::from_secs(20), |s| {
        s.contains("Quit? This stops the local run.")
    })
    .await;
    tmux.type_keys("y");
    let all = tmux.wait_for_clean_exit().await;
    assert!(all.contains("stopped by the operator"), "{all}");
}

/// Ctrl-C is a key while the dashboard has the terminal: it gives the terminal back and
/// stops the run gracefully, and the summary follows.
#[tokio::test]
async fn ctrl_c_restores_the_terminal_and_stops_the_run() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let tmux = Tmux::start("ctrlc", &local_run(results.path()));
    tmux.wait_for("the dashboard", Duration::from_secs(60), |s| {
        s.contains("RUNNING") && users(s) == Some((5, 5))
    })
    .await;
    tmux.press("C-c");
    let all = tmux.wait_for_clean_exit().await;
    assert!(all.contains("http_req_duration"), "{all}");
    assert!(all.contains("stopped by the operator"), "{all}");
}

/// A panic while the dashboard draws (forced with the test-only key of
/// `PUNISHER_TEST_PANIC_IN_DASHBOARD`) gives the terminal back before the panic message is
/// printed; the run goes on with status lines and ends as usual.
#[tokio::test]
async fn a_panic_in_the_dashboard_restores_the_terminal() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let command = format!(
        "cd {} && {}=Z {} run scenarios/smoke.js --demo-target --vus 3 --duration 8s \
         --results-dir {}",
        workspace().display(),
        punisher_tui::PANIC_KEY_ENV,
        punisher(),
        results.path().display(),
    );
    let tmux = Tmux::start("panic", &command);
    tmux.wait_for("the dashboard", Duration::from_secs(60), |s| {
        s.contains("RUNNING") && users(s) == Some((3, 3))
    })
    .await;
    assert!(tmux.alternate_on());
    tmux.type_keys("Z");
    // In the scrollback too: with RUST_BACKTRACE set, the backtrace pushes the message off
    // the screen at once, and the 8 s run may end before the next look.
    let screen = tmux
        .wait_for("the panic message", Duration::from_secs(20), |_| {
            tmux.history().contains("panicked")
        })
        .await;
    assert!(!tmux.alternate_on(), "{screen}");
    // The run goes on: status lines, then the summary.
    let all = tmux.wait_for_clean_exit().await;
    let panic_at = all.find("panicked").unwrap();
    assert!(
        all[panic_at..].contains(punisher_tui::PANIC_KEY_ENV),
        "the panic message:\n{all}"
    );
    assert!(
        all[panic_at..].contains(" req/s"),
        "no status line after the panic:\n{all}"
    );
    assert!(all.contains("http_req_duration"), "the summary:\n{all}");
    // Nothing of the dashboard is left on the normal screen.
    assert!(!all.contains("RUNNING"), "{all}");
}

/// `--no-tui` on a terminal: status lines on the normal screen, never the alternate one.
#[tokio::test]
async fn no_tui_on_a_terminal_prints_status_lines() {
    if !have_tmux() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let results = tempfile::tempdir().unwrap();
    let command = format!(
        "cd {} && {} run scenarios/smoke.js --demo-target --vus 3 --duration 4s --no-tui \
         --results-dir {}",
        workspace().display(),
        punisher(),
        results.path().display(),
    );
    let tmux = Tmux::start("notui", &command);
    let mut polls = 0;
    let screen = tmux
        .wait_for("the run to end", Duration::from_secs(60), |s| {
            // Checked at every poll while the run goes on.
            polls += 1;
            assert!(!tmux.alternate_on(), "the alternate screen is on:\n{s}");
            s.contains("TTY=")
        })
        .await;
    assert!(polls > 1, "{screen}");
    let all = tmux.history();
    assert!(all.contains("EXIT=0"), "{all}");
    assert!(all.contains("TTY=icanon echo"), "{all}");
    let status_lines = all.lines().filter(|l| l.contains(" req/s")).count();
    assert!(status_lines >= 2, "{status_lines} status lines:\n{all}");
    assert!(all.contains("http_req_duration"), "the summary:\n{all}");
    assert!(!all.contains("RUNNING"), "no dashboard header:\n{all}");
}
