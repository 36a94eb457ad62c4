//! The dashboard's state between two frames: the latest [`RunView`], the input mode (overlays,
//! confirmations, the number being typed) and the last feedback line, plus the key map that
//! turns a key into an [`Action`]. Pure: no terminal and no channel, so it is unit tested.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use punisher_core::view::{RunCommand, RunState, RunView};

use crate::DashboardConfig;

/// Seconds of grace that `x` gives running iterations, as `punisher ctl stop` does by default.
pub const STOP_GRACE_SECS: f64 = 30.0;

/// The longest number `u` accepts: nine digits is already more users than any cluster holds,
/// and it keeps the input box from growing without bound.
const MAX_TYPED_DIGITS: usize = 9;

/// What the keyboard is doing right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// The `?` overlay.
    Help,
    /// `u` was pressed: the digits typed so far.
    TypingUsers(String),
    /// `a` was pressed: waiting for y/n.
    ConfirmAbort,
    /// `q` on a local run that has not ended: waiting for y/n.
    ConfirmQuit,
}

/// What a key asks the dashboard loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send this command to the run.
    Send(RunCommand),
    /// Leave the dashboard (a local run: confirmed, or the run has ended).
    Quit,
    /// Leave an attached run running.
    Detach,
    /// Ctrl-C.
    Interrupt,
}

/// A feedback line for the footer: what was sent, or why a key did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub text: String,
    pub is_error: bool,
}

/// The dashboard state that [`crate::render()`] draws.
#[derive(Debug, Clone)]
pub struct App {
    view: RunView,
    mode: Mode,
    attached: bool,
    wait_for_start: bool,
    view_closed: bool,
    status: Option<Status>,
}

impl App {
    pub fn new(cfg: &DashboardConfig, view: RunView) -> Self {
        Self {
            view,
            mode: Mode::Normal,
            attached: cfg.attached,
            wait_for_start: cfg.wait_for_start,
            view_closed: false,
            status: None,
        }
    }

    pub fn view(&self) -> &RunView {
        &self.view
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    pub fn attached(&self) -> bool {
        self.attached
    }

    pub fn wait_for_start(&self) -> bool {
        self.wait_for_start
    }

    /// Replaces the view with the latest one published.
    pub fn set_view(&mut self, view: RunView) {
        self.view = view;
        // A question about a run that has just ended no longer makes sense.
        if self.run_ended() && matches!(self.mode, Mode::ConfirmAbort | Mode::TypingUsers(_)) {
            self.mode = Mode::Normal;
        }
    }

    /// The publisher went away: the last view is final.
    pub fn close_view(&mut self) {
        self.view_closed = true;
        if matches!(self.mode, Mode::ConfirmAbort | Mode::TypingUsers(_)) {
            self.mode = Mode::Normal;
        }
    }

    pub fn view_closed(&self) -> bool {
        self.view_closed
    }

    /// The run is over (or we will hear nothing more of it): commands are pointless and `q`
    /// leaves without asking.
    pub fn run_ended(&self) -> bool {
        self.view_closed || matches!(self.view.state, RunState::Finished | RunState::Aborted)
    }

    /// Shows a feedback line; the dashboard loop uses it when a command could not be queued.
    pub fn set_status(&mut self, text: impl Into<String>, is_error: bool) {
        self.status = Some(Status {
            text: text.into(),
            is_error,
        });
    }

    fn info(&mut self, text: impl Into<String>) {
        self.set_status(text, false);
    }

    fn refuse(&mut self, text: impl Into<String>) -> Option<Action> {
        self.set_status(text, true);
        None
    }

    fn send(&mut self, command: RunCommand) -> Option<Action> {
        let text = match &command {
            RunCommand::Start => "sent: start".to_owned(),
            RunCommand::Scale { users } => format!("sent: scale to {users} users"),
            RunCommand::PauseArrivals => "sent: pause arrivals".to_owned(),
            RunCommand::ResumeArrivals => "sent: resume arrivals".to_owned(),
            RunCommand::Stop { grace_secs } => format!("sent: stop ({grace_secs:.0}s grace)"),
            RunCommand::Abort => "sent: abort".to_owned(),
        };
        self.info(text);
        Some(Action::Send(command))
    }

    /// Maps one key to what the dashboard should do, updating the mode on the way.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        // Terminals that report releases (Windows, the kitty protocol) would act twice.
        if key.kind != KeyEventKind::Press {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Interrupt);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key.code),
            Mode::Help => {
                if !matches!(key.code, KeyCode::Esc | KeyCode::Char('?' | 'q')) {
                    self.mode = Mode::Help;
                }
                None
            }
            Mode::TypingUsers(typed) => self.typing_key(typed, key.code),
            Mode::ConfirmAbort => match key.code {
                KeyCode::Char('y' | 'Y') => self.send(RunCommand::Abort),
                KeyCode::Char('n' | 'N') | KeyCode::Esc => {
                    self.info("abort cancelled");
                    None
                }
                _ => {
                    self.mode = Mode::ConfirmAbort;
                    None
                }
            },
            Mode::ConfirmQuit => match key.code {
                KeyCode::Char('y' | 'Y') => Some(Action::Quit),
                KeyCode::Char('n' | 'N') | KeyCode::Esc => {
                    self.info("quit cancelled");
                    None
                }
                _ => {
                    self.mode = Mode::ConfirmQuit;
                    None
                }
            },
        }
    }

    fn normal_key(&mut self, code: KeyCode) -> Option<Action> {
        let state = self.view.state;
        let KeyCode::Char(c) = code else {
            return None;
        };
        match c {
            'q' if self.attached => Some(Action::Detach),
            'q' if self.run_ended() => Some(Action::Quit),
            'q' => {
                self.mode = Mode::ConfirmQuit;
                None
            }
            '?' => {
                self.mode = Mode::Help;
                None
            }
            _ if self.run_ended() => self.refuse("the run has ended: q to leave"),
            's' if state == RunState::Waiting => self.send(RunCommand::Start),
            's' => self.refuse("the run has already started"),
            '+' | '=' => {
                let target = self.view.users_target;
                let users = scaled(target, 1.1).max(target.saturating_add(1));
                self.send(RunCommand::Scale { users })
            }
            '-' | '_' => {
                let target = self.view.users_target;
                if target == 0 {
                    return self.refuse("the target is already 0 users");
                }
                let users = scaled(target, 0.9).min(target - 1);
                self.send(RunCommand::Scale { users })
            }
            'u' => {
                self.mode = Mode::TypingUsers(String::new());
                None
            }
            'p' => match state {
                RunState::Running | RunState::Starting => self.send(RunCommand::PauseArrivals),
                RunState::Paused => self.send(RunCommand::ResumeArrivals),
                RunState::Waiting => self.refuse("nothing to pause: the run is waiting"),
                _ => self.refuse("nothing to pause: the run is stopping"),
            },
            'x' if state == RunState::Stopping => self.refuse("the run is already stopping"),
            'x' => self.send(RunCommand::Stop {
                grace_secs: STOP_GRACE_SECS,
            }),
            'a' => {
                self.mode = Mode::ConfirmAbort;
                None
            }
            _ => None,
        }
    }

    fn typing_key(&mut self, mut typed: String, code: KeyCode) -> Option<Action> {
        match code {
            // Digits past the limit fall through to `_` and are dropped.
            KeyCode::Char(c) if c.is_ascii_digit() && typed.len() < MAX_TYPED_DIGITS => {
                typed.push(c);
            }
            KeyCode::Backspace => {
                typed.pop();
            }
            KeyCode::Esc => {
                self.info("scale cancelled");
                return None;
            }
            KeyCode::Enter => {
                // At most nine digits, so the parse cannot overflow; empty is the only failure.
                return match typed.parse::<u64>() {
                    Ok(users) => self.send(RunCommand::Scale { users }),
                    Err(_) => self.refuse("no number typed"),
                };
            }
            _ => {}
        }
        self.mode = Mode::TypingUsers(typed);
        None
    }
}

/// `target * factor` rounded to the nearest user.
fn scaled(target: u64, factor: f64) -> u64 {
    // u64 -> f64 loses precision only beyond 2^53 users; the cast back saturates.
    (target as f64 * factor).round() as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn view(state: RunState, target: u64) -> RunView {
        RunView {
            run_id: "r1".into(),
            state,
            planned_secs: 60.0,
            users_target: target,
            ..crate::render::testing::empty_view()
        }
    }

    fn app(attached: bool, state: RunState, target: u64) -> App {
        let cfg = DashboardConfig {
            attached,
            wait_for_start: false,
            refresh: Duration::from_secs(1),
        };
        App::new(&cfg, view(state, target))
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn code(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    fn scale(users: u64) -> Option<Action> {
        Some(Action::Send(RunCommand::Scale { users }))
    }

    #[test]
    fn plus_scales_up_by_ten_percent() {
        assert_eq!(
            app(false, RunState::Running, 2000).handle_key(key('+')),
            scale(2200)
        );
        assert_eq!(
            app(false, RunState::Running, 15).handle_key(key('+')),
            scale(17)
        );
        // 10% of a tiny target rounds to nothing: still one more user.
        assert_eq!(
            app(false, RunState::Running, 3).handle_key(key('+')),
            scale(4)
        );
        assert_eq!(
            app(false, RunState::Running, 0).handle_key(key('+')),
            scale(1)
        );
    }

    #[test]
    fn minus_scales_down_by_ten_percent() {
        assert_eq!(
            app(false, RunState::Running, 2000).handle_key(key('-')),
            scale(1800)
        );
        assert_eq!(
            app(false, RunState::Running, 3).handle_key(key('-')),
            scale(2)
        );
        let mut a = app(false, RunState::Running, 0);
        assert_eq!(a.handle_key(key('-')), None);
        assert!(a.status().unwrap().is_error);
    }

    #[test]
    fn u_then_digits_then_enter_scales_to_that_number() {
        let mut a = app(false, RunState::Running, 2000);
        assert_eq!(a.handle_key(key('u')), None);
        for c in "15x00".chars() {
            assert_eq!(a.handle_key(key(c)), None);
        }
        assert_eq!(a.mode(), &Mode::TypingUsers("1500".into()));
        assert_eq!(a.handle_key(code(KeyCode::Enter)), scale(1500));
        assert_eq!(a.mode(), &Mode::Normal);
    }

    #[test]
    fn typing_supports_backspace_escape_and_a_length_limit() {
        let mut a = app(false, RunState::Running, 2000);
        a.handle_key(key('u'));
        a.handle_key(key('1'));
        a.handle_key(key('2'));
        a.handle_key(code(KeyCode::Backspace));
        assert_eq!(a.mode(), &Mode::TypingUsers("1".into()));
        assert_eq!(a.handle_key(code(KeyCode::Esc)), None);
        assert_eq!(a.mode(), &Mode::Normal);

        a.handle_key(key('u'));
        for _ in 0..20 {
            a.handle_key(key('9'));
        }
        assert_eq!(a.handle_key(code(KeyCode::Enter)), scale(999_999_999));

        a.handle_key(key('u'));
        assert_eq!(a.handle_key(code(KeyCode::Enter)), None);
        assert!(a.status().unwrap().is_error);
    }

    #[test]
    fn abort_needs_a_yes() {
        let mut a = app(false, RunState::Running, 10);
        assert_eq!(a.handle_key(key('a')), None);
        assert_eq!(a.mode(), &Mode::ConfirmAbort);
        // Keys other than y/n keep the question open.
        assert_eq!(a.handle_key(key('x')), None);
        assert_eq!(a.mode(), &Mode::ConfirmAbort);
        assert_eq!(a.handle_key(key('n')), None);
        assert_eq!(a.mode(), &Mode::Normal);

        a.handle_key(key('a'));
        assert_eq!(
            a.handle_key(key('y')),
            Some(Action::Send(RunCommand::Abort))
        );
        assert_eq!(a.mode(), &Mode::Normal);
    }

    #[test]
    fn q_detaches_when_attached_and_asks_when_local() {
        let mut attached = app(true, RunState::Running, 10);
        assert_eq!(attached.handle_key(key('q')), Some(Action::Detach));

        let mut local = app(false, RunState::Running, 10);
        assert_eq!(local.handle_key(key('q')), None);
        assert_eq!(local.mode(), &Mode::ConfirmQuit);
        assert_eq!(local.handle_key(code(KeyCode::Esc)), None);
        assert_eq!(local.mode(), &Mode::Normal);
        local.handle_key(key('q'));
        assert_eq!(local.handle_key(key('y')), Some(Action::Quit));
    }

    #[test]
    fn q_leaves_at_once_when_the_run_has_ended() {
        let mut a = app(false, RunState::Finished, 10);
        assert_eq!(a.handle_key(key('q')), Some(Action::Quit));
        let mut a = app(false, RunState::Running, 10);
        a.close_view();
        assert_eq!(a.handle_key(key('q')), Some(Action::Quit));
    }

    #[test]
    fn p_pauses_or_resumes_depending_on_state() {
        let pause = Some(Action::Send(RunCommand::PauseArrivals));
        let resume = Some(Action::Send(RunCommand::ResumeArrivals));
        assert_eq!(app(false, RunState::Running, 1).handle_key(key('p')), pause);
        assert_eq!(
            app(false, RunState::Starting, 1).handle_key(key('p')),
            pause
        );
        assert_eq!(app(false, RunState::Paused, 1).handle_key(key('p')), resume);
        assert_eq!(app(false, RunState::Waiting, 1).handle_key(key('p')), None);
        assert_eq!(app(false, RunState::Stopping, 1).handle_key(key('p')), None);
    }

    #[test]
    fn s_starts_only_a_waiting_run() {
        assert_eq!(
            app(false, RunState::Waiting, 1).handle_key(key('s')),
            Some(Action::Send(RunCommand::Start))
        );
        let mut a = app(false, RunState::Running, 1);
        assert_eq!(a.handle_key(key('s')), None);
        assert!(a.status().unwrap().is_error);
    }

    #[test]
    fn x_stops_gracefully() {
        assert_eq!(
            app(false, RunState::Running, 1).handle_key(key('x')),
            Some(Action::Send(RunCommand::Stop {
                grace_secs: STOP_GRACE_SECS
            }))
        );
        assert_eq!(app(false, RunState::Stopping, 1).handle_key(key('x')), None);
    }

    #[test]
    fn commands_are_refused_once_the_run_has_ended() {
        for c in ['s', '+', '-', 'p', 'x', 'a', 'u'] {
            let mut a = app(false, RunState::Aborted, 10);
            assert_eq!(a.handle_key(key(c)), None, "{c}");
            assert_eq!(a.mode(), &Mode::Normal, "{c}");
        }
    }

    #[test]
    fn help_opens_and_closes() {
        let mut a = app(false, RunState::Running, 10);
        a.handle_key(key('?'));
        assert_eq!(a.mode(), &Mode::Help);
        // Keys do nothing under the overlay.
        assert_eq!(a.handle_key(key('+')), None);
        assert_eq!(a.mode(), &Mode::Help);
        a.handle_key(code(KeyCode::Esc));
        assert_eq!(a.mode(), &Mode::Normal);
    }

    #[test]
    fn ctrl_c_interrupts_in_every_mode_and_releases_are_ignored() {
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        let mut a = app(false, RunState::Running, 10);
        a.handle_key(key('u'));
        assert_eq!(a.handle_key(ctrl_c), Some(Action::Interrupt));
        let mut release = key('+');
        release.kind = KeyEventKind::Release;
        assert_eq!(app(false, RunState::Running, 10).handle_key(release), None);
    }

    #[test]
    fn a_run_ending_closes_its_questions() {
        let mut a = app(false, RunState::Running, 10);
        a.handle_key(key('a'));
        a.set_view(view(RunState::Finished, 10));
        assert_eq!(a.mode(), &Mode::Normal);
    }
}
