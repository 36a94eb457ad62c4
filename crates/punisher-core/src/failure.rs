//! Why a request, connection or iteration failed: data to count, not an error to propagate.

use serde::{Deserialize, Serialize};

/// The class of a failed network operation.
///
/// Failures under load are measurements. They are counted per kind (the `error_code` tag
/// and the `error` field of a JS response), never keyed by an error's display string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The URL could not be parsed or uses an unsupported scheme.
    InvalidUrl,
    /// The host name did not resolve.
    Dns,
    /// The TCP connection was refused by the peer.
    ConnectionRefused,
    /// The connection was reset or closed by the peer before the exchange completed.
    ConnectionReset,
    /// No free local address or port was left to connect from.
    AddressExhausted,
    /// The operation took longer than its timeout.
    Timeout,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The peer sent something that is not valid for the protocol.
    Protocol,
    /// The response body exceeded the configured cap; the rest was discarded.
    BodyTooLarge,
    /// A WebSocket/Socket.IO peer closed or refused the session.
    Closed,
    /// The run was stopped while the operation was in flight.
    Cancelled,
    /// Any other I/O error.
    Io,
}

impl FailureKind {
    /// All kinds, for exhaustive tables and tests.
    pub const ALL: [FailureKind; 12] = [
        Self::InvalidUrl,
        Self::Dns,
        Self::ConnectionRefused,
        Self::ConnectionReset,
        Self::AddressExhausted,
        Self::Timeout,
        Self::Tls,
        Self::Protocol,
        Self::BodyTooLarge,
        Self::Closed,
        Self::Cancelled,
        Self::Io,
    ];

    /// A short stable code, used as the `error_code` tag value and the JS `error` field.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidUrl => "invalid_url",
            Self::Dns => "dns",
            Self::ConnectionRefused => "connection_refused",
            Self::ConnectionReset => "connection_reset",
            Self::AddressExhausted => "address_exhausted",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Protocol => "protocol",
            Self::BodyTooLarge => "body_too_large",
            Self::Closed => "closed",
            Self::Cancelled => "cancelled",
            Self::Io => "io",
        }
    }

    /// Classifies an I/O error from a socket operation.
    pub fn from_io(err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => Self::ConnectionRefused,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                Self::ConnectionReset
            }
            K::TimedOut => Self::Timeout,
            K::AddrNotAvailable | K::AddrInUse => Self::AddressExhausted,
            K::InvalidData => Self::Protocol,
            _ => Self::Io,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = FailureKind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), FailureKind::ALL.len());
    }

    #[test]
    fn io_errors_are_classified() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            FailureKind::from_io(&refused),
            FailureKind::ConnectionRefused
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(FailureKind::from_io(&eof), FailureKind::ConnectionReset);
    }
}
