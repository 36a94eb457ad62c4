//! The dashboard loop on the real terminal: raw mode and the alternate screen for as long as
//! [`run_dashboard`] runs, one `select!` over keys, new views and a refresh tick, and the
//! terminal restored however the loop ends.
//!
//! Restoring happens in three places: `ratatui::try_init` installs a panic hook that restores
//! before the previous hook prints (tested end to end with [`PANIC_KEY_ENV`]); [`TerminalGuard`]'s `Drop` restores on every return, on `?`
//! and when the caller drops the future (its own SIGINT/SIGTERM handling wins a `select!`);
//! Ctrl-C is a key in raw mode and ends the loop like any other exit.

use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind};
use futures_util::{Stream, StreamExt};
use punisher_core::view::{RunCommand, RunView};
use ratatui::backend::Backend;
use ratatui::{DefaultTerminal, Terminal};
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::app::{Action, App};
use crate::{DashboardConfig, DashboardExit, TuiError, render};

/// A floor on the refresh period, so a zero `refresh` cannot spin the loop.
const MIN_REFRESH: Duration = Duration::from_millis(50);

/// For tests of the terminal's restoration (they need a dashboard that panics): set to one
/// character, pressing that key makes the next draw panic, half-way through a frame, as a
/// rendering bug would. Read once per dashboard; nothing sets it but tests.
pub const PANIC_KEY_ENV: &str = "PUNISHER_TEST_PANIC_IN_DASHBOARD";

fn test_panic_key() -> Option<char> {
    let value = std::env::var(PANIC_KEY_ENV).ok()?;
    let mut chars = value.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// Owns the terminal while the dashboard runs and gives it back on drop.
struct TerminalGuard {
    terminal: DefaultTerminal,
}

impl TerminalGuard {
    fn new() -> Result<Self, TuiError> {
        match ratatui::try_init() {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                // try_init may fail after raw mode is on (no alternate screen, no size); when
                // it failed before, restoring would only write escape codes to a non-terminal.
                if crossterm::terminal::is_raw_mode_enabled().unwrap_or(false) {
                    ratatui::restore();
                }
                Err(TuiError::Setup(e))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        // Errors are printed by ratatui and otherwise ignored: nothing better to do while
        // leaving. The cursor is shown again because the draws hid it.
        let _ = self.terminal.show_cursor();
        ratatui::restore();
    }
}

/// Runs the dashboard on the real terminal until the run ends and the user leaves its final
/// screen, or the user quits, detaches or presses Ctrl-C. Commands go out with `try_send`: a
/// full queue is shown in the footer rather than freezing the screen.
///
/// The terminal is restored on every exit, on panic (ratatui's hook) and when this future is
/// dropped. The caller must drop it (not `process::exit`) to get that.
pub async fn run_dashboard(
    cfg: DashboardConfig,
    views: watch::Receiver<RunView>,
    commands: mpsc::Sender<RunCommand>,
) -> Result<DashboardExit, TuiError> {
    let mut guard = TerminalGuard::new()?;
    drive(
        &mut guard.terminal,
        EventStream::new(),
        &cfg,
        views,
        commands,
    )
    .await
}

/// The loop itself, over any backend and any event stream, so tests drive it with a
/// `TestBackend` and scripted keys.
pub(crate) async fn drive<B, E>(
    terminal: &mut Terminal<B>,
    mut events: E,
    cfg: &DashboardConfig,
    mut views: watch::Receiver<RunView>,
    commands: mpsc::Sender<RunCommand>,
) -> Result<DashboardExit, TuiError>
where
    B: Backend,
    E: Stream<Item = std::io::Result<Event>> + Unpin,
{
    let mut app = App::new(cfg, views.borrow_and_update().clone());
    let mut tick = tokio::time::interval(cfg.refresh.max(MIN_REFRESH));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut views_open = true;
    let panic_key = test_panic_key();
    let mut panic_now = false;
    loop {
        // Drawing writes a diff of the screen to the tty: a few KB at most, in microseconds
        // unless the terminal itself stalls, so it stays on this task.
        terminal
            .draw(|frame| {
                render(frame, &app);
                if panic_now {
                    panic!("{PANIC_KEY_ENV}: the dashboard panics while drawing, as asked");
                }
            })
            .map_err(|e| TuiError::Draw(std::io::Error::other(e.to_string())))?;
        tokio::select! {
            // A new view first, so that a key acts on the freshest state (a `+` scales the
            // current target); views come once per second, so they cannot starve the keys.
            biased;
            changed = views.changed(), if views_open => match changed {
                Ok(()) => app.set_view(views.borrow_and_update().clone()),
                // The publisher is gone: keep the last view on screen until the user leaves.
                Err(_) => {
                    views_open = false;
                    app.close_view();
                }
            },
            event = events.next() => match event {
                Some(Ok(Event::Key(key)))
                    if key.kind == KeyEventKind::Press
                        && panic_key.is_some_and(|c| key.code == KeyCode::Char(c)) =>
                {
                    panic_now = true;
                }
                Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                    match app.handle_key(key) {
                        None => {}
                        Some(Action::Send(command)) => send(&commands, command, &mut app),
                        Some(Action::Quit) if app.run_ended() => return Ok(DashboardExit::Finished),
                        Some(Action::Quit) => return Ok(DashboardExit::Quit),
                        Some(Action::Detach) => return Ok(DashboardExit::Detached),
                        Some(Action::Interrupt) => return Ok(DashboardExit::Interrupted),
                    }
                }
                // A resize needs nothing but the redraw at the top of the loop: `draw`
                // resizes its buffers to the new terminal size.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(TuiError::Input(e)),
                None => return Err(TuiError::InputClosed),
            },
            _ = tick.tick() => {}
        }
    }
}

fn send(commands: &mpsc::Sender<RunCommand>, command: RunCommand, app: &mut App) {
    match commands.try_send(command) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            app.set_status("command not sent: the run is busy, try again", true);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            app.set_status("command not sent: the run no longer takes commands", true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use punisher_core::view::RunState;
    use ratatui::backend::TestBackend;

    use super::*;

    fn view(state: RunState, target: u64) -> RunView {
        RunView {
            run_id: "r1".into(),
            state,
            elapsed_secs: 1.0,
            planned_secs: 60.0,
            users_active: target,
            users_target: target,
            users_arrived: target,
            requests_per_sec: 1.0,
            ..crate::render::testing::empty_view()
        }
    }

    fn key(code: KeyCode) -> std::io::Result<Event> {
        Ok(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
    }

    fn ctrl_c() -> std::io::Result<Event> {
        Ok(Event::Key(KeyEvent::new(
            KeyCode::Char('c'),
            KeyModifiers::CONTROL,
        )))
    }

    fn screen(terminal: &Terminal<TestBackend>) -> String {
        let buf = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    /// Scripted keys on a channel, so the test sends them one at a time.
    fn keys() -> (
        mpsc::Sender<std::io::Result<Event>>,
        impl Stream<Item = std::io::Result<Event>> + Unpin,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        (tx, Box::pin(stream))
    }

    fn cfg(attached: bool) -> DashboardConfig {
        DashboardConfig {
            attached,
            wait_for_start: false,
            refresh: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn keys_become_commands_and_ctrl_c_ends_the_loop() {
        let (views_tx, views) = watch::channel(view(RunState::Running, 100));
        let (commands, mut sent) = mpsc::channel(4);
        let (keys_tx, events) = keys();
        let mut terminal = Terminal::new(TestBackend::new(100, 40)).unwrap();
        let run = tokio::spawn(async move {
            let exit = drive(&mut terminal, events, &cfg(false), views, commands).await;
            (exit.unwrap(), terminal)
        });

        keys_tx.send(key(KeyCode::Char('+'))).await.unwrap();
        assert_eq!(sent.recv().await, Some(RunCommand::Scale { users: 110 }));
        views_tx.send(view(RunState::Running, 110)).unwrap();
        for code in [
            KeyCode::Char('u'),
            KeyCode::Char('7'),
            KeyCode::Char('5'),
            KeyCode::Enter,
        ] {
            keys_tx.send(key(code)).await.unwrap();
        }
        assert_eq!(sent.recv().await, Some(RunCommand::Scale { users: 75 }));
        keys_tx.send(Ok(Event::Resize(80, 24))).await.unwrap();
        keys_tx.send(key(KeyCode::Char('x'))).await.unwrap();
        assert_eq!(
            sent.recv().await,
            Some(RunCommand::Stop { grace_secs: 30.0 })
        );
        keys_tx.send(ctrl_c()).await.unwrap();

        let (exit, terminal) = run.await.unwrap();
        assert_eq!(exit, DashboardExit::Interrupted);
        assert!(
            screen(&terminal).contains("sent: stop (30s grace)"),
            "{}",
            screen(&terminal)
        );
    }

    #[tokio::test]
    async fn a_full_command_queue_shows_in_the_footer() {
        let (_views_tx, views) = watch::channel(view(RunState::Running, 100));
        // Room for one command, and nobody reads it.
        let (commands, _sent) = mpsc::channel(1);
        let (keys_tx, events) = keys();
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        let run = tokio::spawn(async move {
            let exit = drive(&mut terminal, events, &cfg(true), views, commands).await;
            (exit.unwrap(), terminal)
        });
        keys_tx.send(key(KeyCode::Char('+'))).await.unwrap();
        keys_tx.send(key(KeyCode::Char('+'))).await.unwrap();
        keys_tx.send(key(KeyCode::Char('q'))).await.unwrap();
        let (exit, terminal) = run.await.unwrap();
        assert_eq!(exit, DashboardExit::Detached);
        assert!(
            screen(&terminal).contains("the run is busy"),
            "{}",
            screen(&terminal)
        );
    }

    #[tokio::test]
    async fn a_closed_view_shows_the_last_screen_until_q() {
        let (views_tx, views) = watch::channel(view(RunState::Running, 100));
        let (commands, _sent) = mpsc::channel(4);
        let (keys_tx, events) = keys();
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        let run = tokio::spawn(async move {
            let exit = drive(&mut terminal, events, &cfg(false), views, commands).await;
            (exit.unwrap(), terminal)
        });
        views_tx.send(view(RunState::Finished, 100)).unwrap();
        // The publisher goes away; the loop must neither exit nor spin, and q leaves at once.
        drop(views_tx);
        // Views are handled before keys, so both keys meet an ended run: x is refused and q
        // leaves without asking.
        keys_tx.send(key(KeyCode::Char('x'))).await.unwrap();
        keys_tx.send(key(KeyCode::Char('q'))).await.unwrap();
        let (exit, terminal) = run.await.unwrap();
        assert_eq!(exit, DashboardExit::Finished);
        let s = screen(&terminal);
        assert!(s.contains("run finished: q to leave"), "{s}");
        assert!(s.contains("the run has ended"), "{s}");
    }

    #[tokio::test]
    async fn input_ending_is_an_error_not_a_hang() {
        let (_views_tx, views) = watch::channel(view(RunState::Running, 100));
        let (commands, _sent) = mpsc::channel(4);
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let events = futures_util::stream::iter(Vec::<std::io::Result<Event>>::new());
        let exit = drive(&mut terminal, events, &cfg(false), views, commands).await;
        assert!(matches!(exit, Err(TuiError::InputClosed)));
    }
}
