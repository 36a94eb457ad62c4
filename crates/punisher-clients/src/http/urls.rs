//! A per-worker cache of parsed request URLs.
//!
//! `Url::parse` costs ~5.8k instructions per request (a third of the client's CPU on a
//! keep-alive GET: host parsing goes through IDNA, an IPv4 host is re-serialised through
//! `fmt`), while a load test sends the same few URLs millions of times. A hit costs a hash
//! of the string and a lock without contention.
//!
//! The cache is bounded, so URLs with ids in them cannot grow memory: two generations of
//! at most [`GENERATION`] entries each. New entries go into the young one; when it is full
//! it becomes the old one and the previous old one is dropped. A hit in the old generation
//! moves the entry back to the young one, so the URLs in steady use survive a flood of
//! one-off URLs (an approximation of LRU without per-hit bookkeeping). URLs longer than
//! [`MAX_CACHED_LEN`] are parsed every time and not kept. Worst case per worker:
//! 2 x 256 entries x (2 x 2 KB + ~150 bytes) ~ 2 MB; typical: a few KB.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use url::Url;

/// Entries in one generation.
pub(crate) const GENERATION: usize = 256;
/// Longest URL kept: longer ones are rare and usually unique (a big query string).
pub(crate) const MAX_CACHED_LEN: usize = 2048;

type Map = HashMap<Box<str>, Arc<Url>>;

/// Parsed `http`/`https` URLs by the exact string the scenario passed.
#[derive(Debug, Default)]
pub(crate) struct UrlCache {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: Map,
    old: Map,
}

impl UrlCache {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The parsed form of `raw`, which must be an absolute `http` or `https` URL with a
    /// host; otherwise why not (errors are not cached: they end the request at once).
    pub(crate) fn get(&self, raw: &str) -> Result<Arc<Url>, String> {
        let cacheable = raw.len() <= MAX_CACHED_LEN;
        if cacheable && let Ok(mut g) = self.generations.lock() {
            if let Some(url) = g.young.get(raw) {
                return Ok(url.clone());
            }
            if let Some((key, url)) = g.old.remove_entry(raw) {
                g.insert(key, url.clone());
                return Ok(url);
            }
        }
        // Parse outside the lock: the lock is per worker, but keep the section short anyway.
        let url = Arc::new(parse(raw)?);
        if cacheable && let Ok(mut g) = self.generations.lock() {
            g.insert(raw.into(), url.clone());
        }
        Ok(url)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.generations
            .lock()
            .map(|g| g.young.len() + g.old.len())
            .unwrap_or(0)
    }
}

impl Generations {
    fn insert(&mut self, key: Box<str>, url: Arc<Url>) {
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, url);
    }
}

/// Parses a request URL: absolute, `http` or `https`, with a host.
pub(crate) fn parse(raw: &str) -> Result<Url, String> {
    match Url::parse(raw) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(u),
        Ok(u) => Err(format!("unsupported url scheme {:?}", u.scheme())),
        Err(e) => Err(format!("invalid url: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_return_the_same_parse() {
        let cache = UrlCache::new();
        let a = cache.get("http://a.example:8080/x?y=1").unwrap();
        let b = cache.get("http://a.example:8080/x?y=1").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.port(), Some(8080));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn errors_are_reported_and_not_cached() {
        let cache = UrlCache::new();
        assert_eq!(
            cache.get("ftp://a.example/").unwrap_err(),
            "unsupported url scheme \"ftp\""
        );
        assert!(
            cache
                .get("not a url")
                .unwrap_err()
                .starts_with("invalid url")
        );
        assert!(cache.get("http:/").is_err());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn bounded_and_keeps_urls_in_use() {
        let cache = UrlCache::new();
        let hot = "http://a.example/hot";
        let first = cache.get(hot).unwrap();
        for i in 0..10 * GENERATION {
            cache.get(&format!("http://a.example/item/{i}")).unwrap();
            if i % 100 == 0 {
                // Used now and then: promoted back before its generation is dropped.
                assert!(Arc::ptr_eq(&first, &cache.get(hot).unwrap()), "i {i}");
            }
            assert!(cache.len() <= 2 * GENERATION);
        }
        let long = format!("http://a.example/{}", "x".repeat(MAX_CACHED_LEN));
        let (a, b) = (cache.get(&long).unwrap(), cache.get(&long).unwrap());
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(a, b);
    }
}
