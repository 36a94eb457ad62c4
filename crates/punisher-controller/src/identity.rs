//! The controller's TLS identity: a self-signed certificate made with rcgen on first start
//! and kept in the state directory, so that its fingerprint (which agents pin) survives
//! restarts.

use std::io::Write;
use std::path::{Path, PathBuf};

use punisher_proto::Fingerprint;

use crate::ControllerError;

const CERT_FILE: &str = "controller-cert.der";
const KEY_FILE: &str = "controller-key.der";

/// A certificate, its PKCS#8 private key, and the certificate's SHA-256.
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub fingerprint: Fingerprint,
    /// Whether this start created it (agents must be given the new fingerprint).
    pub created: bool,
}

fn state_error(path: &Path, e: impl std::fmt::Display) -> ControllerError {
    ControllerError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Loads the identity from `state_dir`, or creates and stores a new one there.
pub fn load_or_create(state_dir: &Path) -> Result<Identity, ControllerError> {
    let cert_path = state_dir.join(CERT_FILE);
    let key_path = state_dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        let cert_der = std::fs::read(&cert_path).map_err(|e| state_error(&cert_path, e))?;
        let key_der = std::fs::read(&key_path).map_err(|e| state_error(&key_path, e))?;
        // Refuse a mismatched or corrupt pair now, with the file names, not at the first
        // handshake.
        punisher_proto::transport::server_tls_config(&cert_der, &key_der).map_err(|e| {
            state_error(
                state_dir,
                format!(
                    "{e}; delete {CERT_FILE} and {KEY_FILE} to create a new certificate (agents \
                     then need the new fingerprint)"
                ),
            )
        })?;
        return Ok(Identity {
            fingerprint: Fingerprint::of(&cert_der),
            cert_der,
            key_der,
            created: false,
        });
    }
    std::fs::create_dir_all(state_dir).map_err(|e| state_error(state_dir, e))?;
    let certified = rcgen::generate_simple_self_signed(vec![
        punisher_proto::transport::CERT_NAME.to_owned(),
        "localhost".to_owned(),
    ])
    .map_err(|e| ControllerError::Tls(e.to_string()))?;
    let cert_der = certified.cert.der().to_vec();
    let key_der = certified.signing_key.serialize_der();
    write_private(&key_path, &key_der)?;
    std::fs::write(&cert_path, &cert_der).map_err(|e| state_error(&cert_path, e))?;
    Ok(Identity {
        fingerprint: Fingerprint::of(&cert_der),
        cert_der,
        key_der,
        created: true,
    })
}

/// Writes a file only its owner can read.
fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), ControllerError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| state_error(path, e))?;
    file.write_all(bytes).map_err(|e| state_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.created);
        let second = load_or_create(dir.path()).unwrap();
        assert!(!second.created);
        assert_eq!(first.fingerprint, second.fingerprint);
        std::fs::write(dir.path().join(KEY_FILE), b"garbage").unwrap();
        let e = load_or_create(dir.path()).err().unwrap().to_string();
        assert!(e.contains("delete"), "{e}");
    }
}
