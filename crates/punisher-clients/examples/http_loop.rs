//! CPU per request of the HTTP client: N virtual users on one current_thread runtime loop
//! GETs for a while; prints requests, errors and user+sys CPU microseconds per request.
//!
//! `cargo run --release -p punisher-clients --example http_loop -- [URL] [USERS] [SECONDS]
//! [MAX_REQUESTS]`
//!
//! `MAX_REQUESTS` stops the run after that many requests, so that instruction counts
//! (`valgrind --tool=callgrind`) of two run lengths can be subtracted: the difference divided
//! by the extra requests is the cost of one request without the start-up.
#![allow(clippy::print_stdout)]

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use punisher_clients::cookies::CookieJar;
use punisher_clients::http::{HttpClient, HttpConfig, HttpShared, Request};

/// (user, sys) CPU seconds of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18080/".to_owned());
    let users: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let max_requests: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(u64::MAX);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let shared = Arc::new(HttpShared::new(HttpConfig::new_defaults()).expect("http config"));
    let requests = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));

    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(seconds);
    local.block_on(&rt, async {
        let mut tasks = Vec::with_capacity(users);
        for _ in 0..users {
            let (shared, url) = (shared.clone(), url.clone());
            let (requests, errors) = (requests.clone(), errors.clone());
            tasks.push(tokio::task::spawn_local(async move {
                let client = HttpClient::new(shared, CookieJar::shared(), false);
                while Instant::now() < deadline && requests.get() < max_requests {
                    let resp = client.request(Request::get(url.clone())).await;
                    requests.set(requests.get() + 1);
                    if resp.status != 200 {
                        errors.set(errors.get() + 1);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds();
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let cpu = user + sys;
    let n = requests.get();
    println!(
        "requests {n} errors {} wall {wall:.2}s rps {:.0} cpu {cpu:.2}s (user {user:.2} sys {sys:.2}) cpu_us_per_req {:.2}",
        errors.get(),
        n as f64 / wall,
        cpu * 1e6 / n.max(1) as f64
    );
}
