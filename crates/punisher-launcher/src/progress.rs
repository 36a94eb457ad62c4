//! Progress lines, one stream per region: the library says what happens, the CLI prints it.

/// Receives `(region, message)` lines while regions are worked in parallel.
pub trait Progress: Send + Sync {
    fn line(&self, region: &str, message: &str);
}

impl<F: Fn(&str, &str) + Send + Sync> Progress for F {
    fn line(&self, region: &str, message: &str) {
        self(region, message);
    }
}

/// Discards progress (tests, JSON output).
pub struct Quiet;

impl Progress for Quiet {
    fn line(&self, _region: &str, _message: &str) {}
}
