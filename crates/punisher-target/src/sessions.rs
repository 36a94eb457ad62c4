//! Login sessions: a sharded map from a random 128-bit id to a tiny entry, so that
//! 300,000 viewers cost a few megabytes and concurrent requests rarely meet on a lock.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// Power of two, well above the number of cores, so that two requests hit the same
/// shard rarely and each critical section is one hash-map operation.
const SHARDS: usize = 64;

/// Name of the session cookie.
pub(crate) const COOKIE_NAME: &str = "session";

/// How a session logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Guest,
    Sns,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Guest => "guest",
            Kind::Sns => "sns",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    voted: bool,
}

/// The outcome of a vote attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteOutcome {
    Accepted,
    Duplicate,
    UnknownSession,
}

#[derive(Debug)]
pub(crate) struct Sessions {
    shards: Box<[Mutex<HashMap<u128, Entry>>]>,
}

impl Sessions {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, id: u128) -> &Mutex<HashMap<u128, Entry>> {
        // The id is uniformly random: its low bits are as good as a hash.
        &self.shards[(id as usize) % SHARDS]
    }

    /// Creates a session and returns its id.
    pub(crate) fn create(&self) -> u128 {
        loop {
            let id: u128 = rand::random();
            let mut shard = lock(self.shard(id));
            if let std::collections::hash_map::Entry::Vacant(e) = shard.entry(id) {
                e.insert(Entry { voted: false });
                return id;
            }
        }
    }

    pub(crate) fn contains(&self, id: u128) -> bool {
        lock(self.shard(id)).contains_key(&id)
    }

    pub(crate) fn vote(&self, id: u128) -> VoteOutcome {
        match lock(self.shard(id)).get_mut(&id) {
            None => VoteOutcome::UnknownSession,
            Some(e) if e.voted => VoteOutcome::Duplicate,
            Some(e) => {
                e.voted = true;
                VoteOutcome::Accepted
            }
        }
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            // Replace rather than clear: a reset after 300,000 sessions gives the memory back.
            *lock(s) = HashMap::new();
        }
    }
}

/// A poisoned shard only means another request panicked mid-insert; the map is still valid.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn format_id(id: u128) -> String {
    format!("{id:032x}")
}

fn parse_id(s: &str) -> Option<u128> {
    if s.len() != 32 {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// The session id named by the `session` cookie of these headers, if any parses.
pub(crate) fn session_from_headers(headers: &HeaderMap) -> Option<u128> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| parse_id(value.trim_matches('"')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn vote_once() {
        let s = Sessions::new();
        let id = s.create();
        assert!(s.contains(id));
        assert_eq!(s.vote(id), VoteOutcome::Accepted);
        assert_eq!(s.vote(id), VoteOutcome::Duplicate);
        assert_eq!(s.vote(id.wrapping_add(1)), VoteOutcome::UnknownSession);
        s.clear();
        assert!(!s.contains(id));
    }

    #[test]
    fn cookie_parsing() {
        let check = |cookies: &[&str], expect: Option<u128>| {
            let mut h = HeaderMap::new();
            for c in cookies {
                h.append(COOKIE, HeaderValue::from_str(c).unwrap());
            }
            assert_eq!(session_from_headers(&h), expect, "{cookies:?}");
        };
        let id = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef_u128;
        let v = format_id(id);
        check(&[], None);
        check(&[&format!("session={v}")], Some(id));
        check(&[&format!("a=b; session={v}; c=d")], Some(id));
        check(&["a=b", &format!("session={v}")], Some(id));
        check(&["session=zz"], None);
        check(&["session="], None);
        check(&[&format!("xsession={v}")], None);
    }
}
