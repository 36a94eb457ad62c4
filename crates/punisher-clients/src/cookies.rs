//! A virtual user's cookie jar: RFC 6265 storage and matching (domain, path, expiry,
//! Secure) delegated to `cookie_store`, shared between the user's HTTP, WebSocket and
//! Socket.IO clients.
//!
//! An empty jar holds no heap memory (empty hash maps do not allocate), which matters
//! for users that never receive a cookie.

use std::sync::{Arc, Mutex};

use cookie_store::CookieStore;
use url::Url;

/// A virtual user's jar, shared by all its clients. The lock is never held across `.await`.
pub type SharedJar = Arc<Mutex<CookieJar>>;

/// The cookies one virtual user holds.
#[derive(Debug, Default)]
pub struct CookieJar {
    store: CookieStore,
    /// Whether a cookie may be stored: false until one is accepted and after [`clear`].
    /// Most users of a load test never get a cookie, and matching against an empty store
    /// still costs ~200 instructions per request.
    ///
    /// [`clear`]: CookieJar::clear
    maybe_any: bool,
}

impl CookieJar {
    /// An empty jar.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty jar ready to be shared by one user's clients.
    pub fn shared() -> SharedJar {
        Arc::new(Mutex::new(Self::new()))
    }

    /// The value of the `Cookie` header to send to `url`, or `None` when no cookie matches.
    pub fn header_for(&self, url: &Url) -> Option<String> {
        if !self.maybe_any {
            return None;
        }
        let mut out: Option<String> = None;
        for (name, value) in self.store.get_request_values(url) {
            let s = out.get_or_insert_with(String::new);
            if !s.is_empty() {
                s.push_str("; ");
            }
            s.push_str(name);
            s.push('=');
            s.push_str(value);
        }
        out
    }

    /// Stores the `Set-Cookie` header values of a response received from `url`.
    /// Invalid or foreign-domain cookies are ignored, as a browser would.
    pub fn store_set_cookie<'a>(&mut self, url: &Url, values: impl Iterator<Item = &'a str>) {
        for value in values {
            // A rejected cookie is not an error of the exchange: browsers drop it silently.
            if self.store.parse(value, url).is_ok() {
                self.maybe_any = true;
            }
        }
    }

    /// Whether the jar holds no cookie at all (expired ones included).
    pub fn is_empty(&self) -> bool {
        self.store.iter_any().next().is_none()
    }

    /// Forgets every cookie.
    pub fn clear(&mut self) {
        self.store.clear();
        self.maybe_any = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn jar_with(from: &str, set: &[&str]) -> CookieJar {
        let mut jar = CookieJar::new();
        jar.store_set_cookie(&url(from), set.iter().copied());
        jar
    }

    #[test]
    fn empty_jar_sends_nothing() {
        let jar = CookieJar::new();
        assert!(jar.is_empty());
        assert_eq!(jar.header_for(&url("http://a.example/")), None);
    }

    #[test]
    fn path_is_honoured() {
        let jar = jar_with(
            "http://a.example/login",
            &["sid=1; Path=/api", "all=2; Path=/"],
        );
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("all=2")
        );
        let api = jar.header_for(&url("http://a.example/api/info")).unwrap();
        let mut parts: Vec<_> = api.split("; ").collect();
        parts.sort_unstable();
        assert_eq!(parts, ["all=2", "sid=1"]);
    }

    #[test]
    fn domain_is_honoured() {
        let jar = jar_with(
            "http://www.a.example/",
            &[
                "host=1",
                "dom=2; Domain=a.example",
                "evil=3; Domain=b.example",
            ],
        );
        assert_eq!(
            jar.header_for(&url("http://api.a.example/")).as_deref(),
            Some("dom=2")
        );
        assert_eq!(jar.header_for(&url("http://b.example/")), None);
        let www = jar.header_for(&url("http://www.a.example/")).unwrap();
        assert!(www.contains("host=1") && www.contains("dom=2") && !www.contains("evil"));
    }

    #[test]
    fn expiry_is_honoured() {
        let mut jar = jar_with(
            "http://a.example/",
            &[
                "old=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
                "gone=2; Max-Age=0",
                "keep=3",
            ],
        );
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("keep=3")
        );
        // A later Max-Age=0 deletes an existing cookie, which is how servers log out.
        jar.store_set_cookie(&url("http://a.example/"), ["keep=; Max-Age=0"].into_iter());
        assert_eq!(jar.header_for(&url("http://a.example/")), None);
        jar.store_set_cookie(&url("http://a.example/"), ["back=4"].into_iter());
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("back=4")
        );
        jar.clear();
        assert!(jar.is_empty());
        assert_eq!(jar.header_for(&url("http://a.example/")), None);
        jar.store_set_cookie(&url("http://a.example/"), ["again=5"].into_iter());
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("again=5")
        );
    }

    #[test]
    fn secure_cookies_stay_on_https() {
        let jar = jar_with("https://a.example/", &["s=1; Secure", "p=2"]);
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("p=2")
        );
        let https = jar.header_for(&url("https://a.example/")).unwrap();
        assert!(https.contains("s=1") && https.contains("p=2"));
    }

    #[test]
    fn garbage_is_ignored() {
        let jar = jar_with("http://a.example/", &["", "=", ";;;", "ok=1"]);
        assert_eq!(
            jar.header_for(&url("http://a.example/")).as_deref(),
            Some("ok=1")
        );
    }
}
