//! The agent-binary endpoint: plain HTTP on `--http-listen`, so that a freshly launched
//! instance can fetch its agent from the controller it will join, without a bucket or a
//! pre-baked image (the cloud-init script of `deploy/cloud-init/` does exactly this).
//!
//! - `GET /agent/<target-triple>`: the binary (`application/octet-stream`), streamed.
//! - `GET /agent/<target-triple>.sha256`: `HEX  <target-triple>\n` (`sha256sum` format).
//! - `GET /agent/`: the triples on offer, one a line.
//!
//! Binaries come from `--agent-binaries DIR`, one file per triple named after it
//! (`DIR/x86_64-unknown-linux-gnu`); the running binary itself is served for the triple it
//! was built for ([`BUILD_TARGET`]) when the directory has no file of that name, or when no
//! directory is given. Checksums are computed on a blocking thread and cached while a
//! file's length and modification time stay the same. The binaries are not secret (the
//! token never is in them), and the endpoint serves nothing else.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The target triple this binary was built for (from build.rs).
pub const BUILD_TARGET: &str = env!("PUNISHER_BUILD_TARGET");

/// Triples are short ASCII words; anything else is refused before touching the disk.
const MAX_TRIPLE_LEN: usize = 100;

/// A computed checksum and the file's length and modification time when it was computed.
struct Cached {
    len: u64,
    modified: Option<SystemTime>,
    hex: String,
}

/// Where binaries come from.
pub(crate) struct Binaries {
    dir: Option<PathBuf>,
    /// The running executable, served for [`BUILD_TARGET`].
    own: Option<PathBuf>,
    checksums: Mutex<HashMap<PathBuf, Cached>>,
}

impl Binaries {
    pub(crate) fn new(dir: Option<PathBuf>) -> Binaries {
        Binaries {
            dir,
            own: std::env::current_exe().ok(),
            checksums: Mutex::new(HashMap::new()),
        }
    }

    /// The file served for `triple`, if any.
    async fn path(&self, triple: &str) -> Option<PathBuf> {
        if !valid_triple(triple) {
            return None;
        }
        if let Some(dir) = &self.dir {
            let p = dir.join(triple);
            if tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_file()) {
                return Some(p);
            }
        }
        self.own.clone().filter(|_| triple == BUILD_TARGET)
    }

    async fn triples(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if self.own.is_some() && !BUILD_TARGET.is_empty() {
            out.insert(BUILD_TARGET.to_owned());
        }
        if let Some(dir) = &self.dir
            && let Ok(mut entries) = tokio::fs::read_dir(dir).await
        {
            while let Ok(Some(e)) = entries.next_entry().await {
                if let Some(name) = e.file_name().to_str()
                    && valid_triple(name)
                    && e.file_type().await.is_ok_and(|t| t.is_file())
                {
                    out.insert(name.to_owned());
                }
            }
        }
        out
    }

    async fn checksum(&self, path: &Path) -> std::io::Result<String> {
        let meta = tokio::fs::metadata(path).await?;
        let (len, modified) = (meta.len(), meta.modified().ok());
        if let Ok(cache) = self.checksums.lock()
            && let Some(c) = cache.get(path)
            && (c.len, c.modified) == (len, modified)
        {
            return Ok(c.hex.clone());
        }
        let p = path.to_owned();
        // Hashing 100 MB takes a few hundred milliseconds: not on the async threads.
        let hex = tokio::task::spawn_blocking(move || sha256_file(&p))
            .await
            .map_err(std::io::Error::other)??;
        if let Ok(mut cache) = self.checksums.lock() {
            cache.insert(
                path.to_owned(),
                Cached {
                    len,
                    modified,
                    hex: hex.clone(),
                },
            );
        }
        Ok(hex)
    }
}

fn valid_triple(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TRIPLE_LEN
        && !t.starts_with('.')
        && !t.ends_with(".sha256")
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The SHA-256 of a file, as 64 lowercase hex digits.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Binds the endpoint's listener (at [`crate::Controller::bind`], so that a taken port is
/// reported before anything is served).
pub(crate) async fn bind(
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), crate::ControllerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| crate::ControllerError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| crate::ControllerError::Bind { addr, source })?;
    Ok((listener, local))
}

/// Serves until `cancel` fires; a failure of this side endpoint is logged, and the
/// controller goes on.
pub(crate) async fn serve(
    listener: TcpListener,
    binaries: Arc<Binaries>,
    cancel: CancellationToken,
) {
    let app = router(binaries);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the agent-binary endpoint failed");
    }
}

pub(crate) fn router(binaries: Arc<Binaries>) -> Router {
    Router::new()
        .route("/agent", get(list))
        .route("/agent/", get(list))
        .route("/agent/{file}", get(file))
        .with_state(binaries)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn list(State(b): State<Arc<Binaries>>) -> Response {
    let mut body = String::new();
    for t in b.triples().await {
        body.push_str(&t);
        body.push('\n');
    }
    text(StatusCode::OK, body)
}

async fn file(State(b): State<Arc<Binaries>>, UrlPath(file): UrlPath<String>) -> Response {
    let (triple, checksum) = match file.strip_suffix(".sha256") {
        Some(t) => (t, true),
        None => (file.as_str(), false),
    };
    let Some(path) = b.path(triple).await else {
        let have: Vec<String> = b.triples().await.into_iter().collect();
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no agent binary for {triple:?}; this controller has: {}\n",
                have.join(", ")
            ),
        );
    };
    let failed = |e: std::io::Error| {
        tracing::warn!(path = %path.display(), error = %e, "cannot serve an agent binary");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the agent binary for {triple}\n"),
        )
    };
    if checksum {
        return match b.checksum(&path).await {
            Ok(hex) => text(StatusCode::OK, format!("{hex}  {triple}\n")),
            Err(e) => failed(e),
        };
    }
    let opened = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return failed(e),
    };
    let len = match opened.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return failed(e),
    };
    tracing::info!(triple, bytes = len, "serving an agent binary");
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(opened));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triples() {
        for ok in [
            "x86_64-unknown-linux-gnu",
            "aarch64-unknown-linux-musl",
            "a.b",
        ] {
            assert!(valid_triple(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "x.sha256", ".hidden", "a b"] {
            assert!(!valid_triple(bad), "{bad}");
        }
        assert!(!BUILD_TARGET.is_empty());
    }
}
