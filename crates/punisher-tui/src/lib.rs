//! The live terminal dashboard of a punisher run: it renders the [`RunView`] that the run loop
//! or the controller publishes once per second and turns keys into the same [`RunCommand`]s that
//! `punisher ctl` sends.
//!
//! # Layout
//! - [`app`]: the dashboard state ([`App`]: the latest view plus the input mode) and the key map.
//!   No terminal, no I/O, so every key is unit tested.
//! - [`mod@render`]: pure drawing of an [`App`] into a ratatui `Frame`, with breakpoints so that a
//!   small terminal shows fewer panels rather than garbage.
//! - `terminal`: [`run_dashboard`], the only code that touches the real terminal: raw mode, the
//!   alternate screen, the event stream, and restoring all of it on exit, panic and Ctrl-C.
//!
//! This is the only crate that knows ratatui and crossterm; it depends on `punisher-core` alone
//! and never talks to the controller itself: views come in on a `watch`, commands go out on a
//! bounded `mpsc`, and the caller wires both.

pub mod app;
mod format;
pub mod render;
mod terminal;

use std::time::Duration;

pub use app::{Action, App, Mode};
pub use punisher_core::view::{RunCommand, RunView};
pub use render::{render, render_text};
pub use terminal::{PANIC_KEY_ENV, run_dashboard};

/// How the dashboard behaves: chosen by the caller (`punisher run` or `punisher ctl watch`).
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Attached to a remote run (`ctl watch`): `q` detaches and the run goes on. When false the
    /// run is local, so quitting ends it and `q` asks first.
    pub attached: bool,
    /// The run waits for `s` (`--wait-for-start`): the header says so while it waits.
    pub wait_for_start: bool,
    /// How often the screen is redrawn even when no view arrives (ages, the clock).
    pub refresh: Duration,
}

/// Why [`run_dashboard`] returned. The caller decides what happens to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DashboardExit {
    /// The run ended (finished or aborted, or its view channel closed) and the user left the
    /// final screen.
    Finished,
    /// The user confirmed quitting a local run that had not ended: the caller should stop it.
    Quit,
    /// The user detached from an attached run, which goes on.
    Detached,
    /// Ctrl-C: raw mode turns it into a key, so the dashboard reports it and the caller does
    /// what it does on SIGINT.
    Interrupted,
}

/// What can go wrong while driving the terminal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TuiError {
    #[error("failed to set up the terminal")]
    Setup(#[source] std::io::Error),
    #[error("failed to draw the dashboard")]
    Draw(#[source] std::io::Error),
    #[error("failed to read terminal input")]
    Input(#[source] std::io::Error),
    #[error("terminal input ended")]
    InputClosed,
}
