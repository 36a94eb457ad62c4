//! Whole-screen tests: the dashboard rendered on ratatui's `TestBackend` with fixed views, at
//! the sizes of each breakpoint, with every overlay.

mod util;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use punisher_core::view::{Charts, RunState, RunView};
use punisher_tui::{App, DashboardConfig, Mode};
use util::{app, assert_contains, config, fixture, line_with, screen};

fn press(app: &mut App, c: char) {
    app.handle_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
}

#[test]
fn full_screen_shows_every_panel() {
    let s = screen(&app(fixture()), 120, 40);
    assert_contains(
        &s,
        &[
            "run r-7f3a · tv_show.js",
            "RUNNING",
            "05:12 / 30:00",
            "users 1200/2000",
            "arrived 1350",
            "523 req/s",
            "errors 0.12%",
            "agents 3: 1 lost, 1 saturated",
            // thresholds, failing first, with their values
            "thresholds: 1 of 4 failing",
            "✗ p(99)<500  612",
            "✓ rate<0.01  0.0012",
            "✓ p(95)<300  181",
            // charts: titles carry the latest values
            "req/s",
            "p50",
            "p95",
            "p99",
            "users",
            "connections",
            "socket.io",
            // tables
            "requests (ms)",
            "agents",
            "loop lag",
            // barrier and log
            "connected 750/1500",
            "no report for 21s",
            "crossed",
            // footer
            "pause",
            "abort",
        ],
    );
    for name in ["login", "info", "poll", "vote"] {
        line_with(&s, &format!("│{name} "));
    }
    let poll = line_with(&s, "│poll ");
    assert_contains(poll, &["98000", "500", "20.4", "150", "411", "1290", "118"]);
}

#[test]
fn the_lost_agent_row_says_lost() {
    let s = screen(&app(fixture()), 120, 40);
    assert_contains(
        line_with(&s, "agent-apn1-a  "),
        &["ap-northeast-1", "21.0s", "lost"],
    );
    assert_contains(
        line_with(&s, "agent-euw1-a  "),
        &["93%", "48.0ms", "saturated"],
    );
    assert_contains(
        line_with(&s, "agent-use1-a  "),
        &["42%", "420ms", "healthy"],
    );
    // Worst first: the lost agent is the first row of the table.
    let lost = s.find("agent-apn1-a  ").unwrap();
    let healthy = s.find("agent-use1-a  ").unwrap();
    assert!(lost < healthy);
}

#[test]
fn barrier_gauge_counts_users_that_left_without_arriving() {
    let mut view = fixture();
    view.barriers[0].arrived = 1400;
    view.barriers[0].departed = 60;
    let s = screen(&app(view.clone()), 120, 40);
    // 1,460 of 1,500 settled: the gauge says so, and says who left.
    assert_contains(&s, &["connected 1400+60 left/1500 97%"]);
    view.barriers[0].departed = 100;
    view.barriers[0].released = true;
    let s = screen(&app(view), 120, 40);
    assert_contains(&s, &["connected released 1400+100 left/1500"]);
}

#[test]
fn medium_screen_puts_tables_before_sparklines() {
    let s = screen(&app(fixture()), 80, 24);
    assert_contains(
        &s,
        &[
            "users 1200/2000",
            "✗ p(99)<500",
            "connected 750/1500",
            "│vote ",
            "lost",
            "healthy",
        ],
    );
    // At 80x24 the four requests and three agents fill the screen: no sparklines.
    assert!(!s.contains("sio ev/s"), "{s}");
    let s = screen(&app(fixture()), 100, 34);
    assert_contains(
        &s,
        &[
            "req/s 517",
            "p99 ms 621",
            "users 1200",
            "sio ev/s 70.5",
            "log",
        ],
    );
}

#[test]
fn small_screen_shows_header_key_numbers_and_thresholds() {
    let s = screen(&app(fixture()), 40, 12);
    assert_contains(
        &s,
        &[
            "punisher",
            "RUNNING",
            "users 1200/2000",
            "✗ p(99)<500",
            "help",
        ],
    );
    // No tables or charts squeezed in.
    assert!(!s.contains("loop lag"), "{s}");
}

#[test]
fn no_size_panics_or_overflows_in_any_mode() {
    let mut modes = vec![app(fixture())];
    for keys in ["?", "a", "u15"] {
        let mut a = app(fixture());
        keys.chars().for_each(|c| press(&mut a, c));
        modes.push(a);
    }
    let mut local = app(fixture());
    press(&mut local, 'q');
    assert_eq!(local.mode(), &Mode::ConfirmQuit);
    modes.push(local);
    // Every breakpoint's edges, plus a coarse sweep between them.
    let edges = [1, 2, 19, 20, 39, 40, 79, 80, 99, 100, 160];
    let heights = [1, 3, 4, 5, 12, 23, 24, 33, 34, 60];
    let sweep = (1..=140)
        .step_by(23)
        .flat_map(|w| (1..=50).step_by(9).map(move |h| (w, h)));
    let sizes: Vec<(u16, u16)> = edges
        .iter()
        .flat_map(|&w| heights.iter().map(move |&h| (w, h)))
        .chain(sweep)
        .collect();
    for a in &modes {
        for &(width, height) in &sizes {
            screen(a, width, height);
        }
    }
    assert!(screen(&modes[0], 10, 3).contains("too small"));
}

#[test]
fn overlays_render_above_the_dashboard() {
    let mut a = app(fixture());
    press(&mut a, '?');
    assert_contains(
        &screen(&a, 120, 40),
        &["keys", "pause / resume arrivals", "graceful stop"],
    );

    let mut a = app(fixture());
    press(&mut a, 'a');
    assert_contains(&screen(&a, 120, 40), &["Abort the run?", "y abort"]);

    let mut a = app(fixture());
    press(&mut a, 'q');
    assert_contains(
        &screen(&a, 80, 24),
        &["Quit? This stops the local run.", "y quit"],
    );

    let mut a = app(fixture());
    "u1500".chars().for_each(|c| press(&mut a, c));
    assert_contains(&screen(&a, 80, 24), &["Target users (now 2000)", "> 1500"]);
}

#[test]
fn feedback_shows_in_the_footer() {
    let mut a = app(fixture());
    press(&mut a, '+');
    assert!(line_with(&screen(&a, 120, 40), "sent: scale to 2200 users").contains("help"));
    press(&mut a, 's');
    assert_contains(&screen(&a, 120, 40), &["the run has already started"]);
}

#[test]
fn banners_say_waiting_and_ended() {
    let mut waiting = fixture();
    waiting.state = RunState::Waiting;
    let cfg = DashboardConfig {
        wait_for_start: true,
        ..config(false)
    };
    assert_contains(
        &screen(&App::new(&cfg, waiting), 80, 24),
        &["WAITING", "press s to start"],
    );

    let mut finished = fixture();
    finished.state = RunState::Finished;
    assert_contains(
        &screen(&app(finished), 120, 40),
        &["FINISHED", "run finished: q to leave"],
    );

    let mut closed = app(fixture());
    closed.close_view();
    assert_contains(&screen(&closed, 120, 40), &["no more updates from the run"]);

    let attached = App::new(&config(true), fixture());
    assert_contains(&screen(&attached, 120, 40), &["detach"]);
}

#[test]
fn an_empty_or_nonsense_view_still_renders() {
    let empty = RunView {
        run_id: String::new(),
        scenario: String::new(),
        state: RunState::Starting,
        elapsed_secs: f64::NAN,
        planned_secs: -1.0,
        users_active: 0,
        users_target: 0,
        users_arrived: 0,
        requests_per_sec: f64::INFINITY,
        error_rate: f64::NAN,
        thresholds: vec![],
        charts: Charts {
            requests_per_sec: vec![(f64::NAN, f64::NAN), (1.0, f64::INFINITY)],
            p99_ms: vec![(3.0, 5.0)],
            ..Charts::default()
        },
        requests: vec![],
        agents: vec![],
        barriers: vec![],
        log: vec![],
    };
    for (w, h) in [(120, 40), (80, 24), (40, 12)] {
        let s = screen(&app(empty.clone()), w, h);
        assert_contains(&s, &["STARTING", "users 0/0", "no thresholds"]);
    }
    let mut no_data = fixture();
    no_data.thresholds[1].observed = None;
    assert_contains(&screen(&app(no_data), 120, 40), &["✗ p(99)<500  no data"]);
}

#[test]
fn many_agents_say_how_many_are_hidden() {
    let mut view = fixture();
    let row = view.agents[0].clone();
    view.agents.extend((0..40).map(|i| {
        let mut r = row.clone();
        r.id = format!("agent-{i:02}");
        r
    }));
    let s = screen(&app(view), 120, 40);
    // The lost agent still shows, and the title says rows were left out.
    assert_contains(&s, &["agent-apn1-a", "of 43)"]);
}

#[test]
#[ignore = "prints screens for a human to look at"]
fn print_screens() {
    for (w, h) in [(120, 40), (100, 34), (80, 24), (40, 12)] {
        println!("{w}x{h}\n{}", screen(&app(fixture()), w, h));
    }
}

#[test]
fn footer_offers_the_keys_that_apply() {
    let footer = |view: RunView, attached: bool| {
        let s = screen(&App::new(&config(attached), view), 120, 40);
        s.lines().last().unwrap().to_owned()
    };
    let mut view = fixture();
    assert_contains(
        &footer(view.clone(), false),
        &["pause", "stop", "abort", "quit"],
    );
    assert!(!footer(view.clone(), false).contains("start"));
    view.state = RunState::Paused;
    assert_contains(&footer(view.clone(), false), &["resume"]);
    view.state = RunState::Waiting;
    assert_contains(&footer(view.clone(), true), &["start", "detach"]);
    view.state = RunState::Aborted;
    let ended = footer(view, false);
    assert_contains(&ended, &["leave", "help"]);
    assert!(!ended.contains("scale"), "{ended}");
}
