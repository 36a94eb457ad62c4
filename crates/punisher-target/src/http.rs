//! The HTTP contract of the demo TV show: `/login`, `/api/*` and `/admin/*` (see the crate
//! documentation for the exact statuses). Bodies are parsed by hand from bytes, so that
//! every malformed request gets a JSON 400 and is counted, whatever is wrong with it.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header::{CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::App;
use crate::sessions::{COOKIE_NAME, Kind, VoteOutcome, format_id, session_from_headers};
use crate::stats::inc;

const INFO: &str = r#"{"show":"Punisher Live","episode":42,"channel":"PNS-1","choices":[1,2,3,4],"description":"The demo second-screen backend of punisher."}"#;

pub(crate) fn routes(app: App) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/api/info", get(info))
        .route("/api/timeline", get(timeline))
        .route("/api/vote", post(vote))
        .route("/admin/broadcast", post(broadcast))
        .route("/admin/stats", get(stats))
        .route("/admin/reset", post(reset))
        .with_state(app)
}

fn json_response(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(status, json!({ "error": message }).to_string())
}

fn bad_request(app: &App, message: &str) -> Response {
    inc(&app.shared.counters.bad_requests);
    error(StatusCode::BAD_REQUEST, message)
}

fn unauthorized(app: &App) -> Response {
    inc(&app.shared.counters.unauthorized);
    error(StatusCode::UNAUTHORIZED, "no valid session cookie")
}

/// The common prelude of `/api/*`: the configured latency, then maybe an injected 500,
/// then the session check. Returns the session id or the response to send instead.
async fn api_prelude(app: &App, headers: &HeaderMap) -> Result<u128, Response> {
    app.shared.delayer.wait().await;
    let p = app.shared.cfg.error_rate;
    if p > 0.0 && rand::random::<f64>() < p {
        inc(&app.shared.counters.errors_injected);
        return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "injected error"));
    }
    match session_from_headers(headers) {
        Some(id) if app.shared.sessions.contains(id) => Ok(id),
        _ => Err(unauthorized(app)),
    }
}

fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<Map<String, Value>>(body).ok()
}

/// `{"guest": true}` or `{"provider": "sns", "token": "..."}` (token optional).
fn login_kind(body: &[u8]) -> Result<Kind, &'static str> {
    let req = parse_object(body).ok_or("expected a JSON object")?;
    match req.get("provider") {
        Some(Value::String(p)) if p == "sns" => match req.get("token") {
            None | Some(Value::Null | Value::String(_)) => Ok(Kind::Sns),
            Some(_) => Err("token must be a string"),
        },
        Some(_) => Err("unknown provider (expected \"sns\")"),
        None => match req.get("guest") {
            Some(Value::Bool(true)) => Ok(Kind::Guest),
            _ => Err("expected {\"guest\": true} or {\"provider\": \"sns\"}"),
        },
    }
}

async fn login(State(app): State<App>, body: Bytes) -> Response {
    app.shared.delayer.wait().await;
    let kind = match login_kind(&body) {
        Ok(kind) => kind,
        Err(message) => return bad_request(&app, message),
    };
    let id = format_id(app.shared.sessions.create());
    inc(match kind {
        Kind::Guest => &app.shared.counters.guest_logins,
        Kind::Sns => &app.shared.counters.sns_logins,
    });
    let body = json!({ "session": id, "kind": kind.as_str() }).to_string();
    let mut r = json_response(StatusCode::OK, body);
    let cookie = format!("{COOKIE_NAME}={id}; Path=/; HttpOnly");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

async fn info(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(r) = api_prelude(&app, &headers).await {
        return r;
    }
    inc(&app.shared.counters.info_calls);
    json_response(StatusCode::OK, INFO)
}

async fn timeline(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(r) = api_prelude(&app, &headers).await {
        return r;
    }
    inc(&app.shared.counters.timeline_calls);
    let question = app.shared.last_question().unwrap_or(Value::Null);
    let body = json!({
        "items": [
            { "id": 1, "kind": "intro", "text": "Welcome to Punisher Live" },
            { "id": 2, "kind": "poll", "text": "Get ready to vote" },
            { "id": 3, "kind": "ad", "text": "Brought to you by load tests" },
        ],
        "question": question,
    });
    json_response(StatusCode::OK, body.to_string())
}

async fn vote(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let id = match api_prelude(&app, &headers).await {
        Ok(id) => id,
        Err(r) => return r,
    };
    let valid = parse_object(&body)
        .and_then(|m| m.get("choice").cloned())
        .is_some_and(|c| c.is_i64() || c.is_u64());
    if !valid {
        return bad_request(&app, "expected {\"choice\": integer}");
    }
    let c = &app.shared.counters;
    match app.shared.sessions.vote(id) {
        VoteOutcome::Accepted => {
            inc(&c.votes);
            json_response(StatusCode::OK, r#"{"ok":true}"#)
        }
        VoteOutcome::Duplicate => {
            inc(&c.duplicate_votes);
            error(StatusCode::CONFLICT, "duplicate vote")
        }
        // A reset between the session check and the vote.
        VoteOutcome::UnknownSession => unauthorized(&app),
    }
}

/// Query of `/admin/broadcast` when another target process relays a broadcast to this
/// one: deliver locally with the originator's id and timestamp, relay no further.
#[derive(Debug, Deserialize)]
pub(crate) struct RelayQuery {
    #[serde(default)]
    pub(crate) local: bool,
    pub(crate) id: Option<u64>,
    pub(crate) ts: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn broadcast(State(app): State<App>, Query(q): Query<RelayQuery>, body: Bytes) -> Response {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match parse_object(&body) {
            Some(m) => m,
            None => return error(StatusCode::BAD_REQUEST, "expected a JSON object or no body"),
        }
    };
    let room = match req.get("room") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) => Some(r.clone()),
        Some(_) => return error(StatusCode::BAD_REQUEST, "room must be a string"),
    };
    let shared = &app.shared;
    let id = match q.id {
        // Keep ids increasing across processes: adopt the originator's if it is ahead.
        Some(id) => {
            shared.question_id.fetch_max(id, Ordering::Relaxed);
            id
        }
        None => shared.question_id.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let ts = q.ts.unwrap_or_else(now_ms);
    let mut payload = Map::new();
    payload.insert("id".into(), id.into());
    payload.insert(shared.cfg.ts_field.clone(), ts.into());
    if let Some(question) = req.get("question") {
        payload.insert("question".into(), question.clone());
    }
    let payload = Value::Object(payload);
    let mut sockets = crate::sio::broadcast_question(&app.io, room.as_deref(), &payload).await;
    if !q.local {
        // One logical broadcast, however many processes relay it.
        inc(&shared.counters.broadcasts);
    }
    shared
        .counters
        .questions_delivered
        .fetch_add(sockets, Ordering::Relaxed);
    shared.set_last_question(Some(payload));
    if !q.local && !shared.cfg.peers.is_empty() {
        sockets += crate::relay::broadcast_to_peers(&shared.cfg.peers, id, ts, &body).await;
    }
    json_response(
        StatusCode::OK,
        json!({ "id": id, "sockets": sockets }).to_string(),
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct LocalQuery {
    #[serde(default)]
    pub(crate) local: bool,
}

async fn stats(State(app): State<App>, Query(q): Query<LocalQuery>) -> Response {
    let mut snapshot = app.local_stats();
    if !q.local && !app.shared.cfg.peers.is_empty() {
        crate::relay::merge_peer_stats(&app.shared.cfg.peers, &mut snapshot).await;
    }
    match serde_json::to_string(&snapshot) {
        Ok(s) => json_response(StatusCode::OK, s),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "stats do not serialise"),
    }
}

async fn reset(State(app): State<App>, Query(q): Query<LocalQuery>) -> Response {
    app.reset();
    if !q.local && !app.shared.cfg.peers.is_empty() {
        crate::relay::reset_peers(&app.shared.cfg.peers).await;
    }
    json_response(StatusCode::OK, r#"{"ok":true}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_bodies() {
        let check = |body: &str, expect: Option<Kind>| {
            assert_eq!(login_kind(body.as_bytes()).ok(), expect, "{body}");
        };
        check(r#"{"guest": true}"#, Some(Kind::Guest));
        check(r#"{"provider": "sns"}"#, Some(Kind::Sns));
        check(r#"{"provider": "sns", "token": "abc"}"#, Some(Kind::Sns));
        check(r#"{"provider": "sns", "token": null}"#, Some(Kind::Sns));
        check(r#"{"provider": "sns", "token": 3}"#, None);
        check(r#"{"provider": "google"}"#, None);
        check(r#"{"guest": false}"#, None);
        check(r#"{"guest": "true"}"#, None);
        check(r#"{}"#, None);
        check(r#"[true]"#, None);
        check(r#"{"guest": tru"#, None);
        check("", None);
    }
}
