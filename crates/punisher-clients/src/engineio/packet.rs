//! Engine.IO v4 packet and payload codec, sans I/O.
//!
//! A packet is `<type digit>[data]`: 0 open, 1 close, 2 ping, 3 pong, 4 message, 5 upgrade,
//! 6 noop. Over websocket each packet is one frame and a binary message is a binary frame
//! as is. Over HTTP long-polling packets are joined by the record separator `\x1e`, and a
//! binary message is written `b<base64>`. Everything here is a pure function over bytes:
//! malformed input from a server yields a [`PacketError`], never a panic.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;

/// The payload separator of the polling transport (ASCII record separator).
pub const SEPARATOR: char = '\x1e';

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The server's handshake.
    Open(Handshake),
    /// Closes the transport (over polling, the session).
    Close,
    /// Heartbeat or probe (`2probe`); the data is echoed in the pong.
    Ping(String),
    /// Answer to a ping (`3probe` during an upgrade).
    Pong(String),
    /// A text message: the Socket.IO layer's packets travel here.
    Message(String),
    /// A binary message (a raw websocket frame, or `b<base64>` over polling).
    Binary(Bytes),
    /// Switches the session to the transport this packet arrives on.
    Upgrade,
    /// Does nothing; the server uses it to end a pending long-poll during an upgrade.
    Noop,
}

/// The data of the `open` packet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The session id, sent back as `sid=` on every later request.
    pub sid: String,
    /// Transports this session may upgrade to (`["websocket"]` over polling).
    #[serde(default)]
    pub upgrades: Vec<String>,
    /// Milliseconds between two server pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong; the client allows the same for a ping.
    pub ping_timeout: u64,
    /// The largest payload the server accepts, in bytes (absent in old servers).
    #[serde(default)]
    pub max_payload: Option<u64>,
}

/// Why bytes from the server are not a valid Engine.IO packet.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// A packet with no type digit at all.
    #[error("empty engine.io packet")]
    Empty,
    /// The first character is not a known packet type.
    #[error("unknown engine.io packet type {0:?}")]
    UnknownType(char),
    /// The `open` packet's data is not the expected JSON object.
    #[error("invalid engine.io handshake: {0}")]
    Handshake(String),
    /// A `b` packet whose data is not valid base64.
    #[error("invalid base64 in binary engine.io packet")]
    Base64,
    /// A text frame or polling body that is not UTF-8.
    #[error("engine.io text payload is not valid utf-8")]
    Utf8,
}

impl Packet {
    /// The type digit of this packet (a binary message is a message).
    pub fn type_char(&self) -> char {
        match self {
            Packet::Open(_) => '0',
            Packet::Close => '1',
            Packet::Ping(_) => '2',
            Packet::Pong(_) => '3',
            Packet::Message(_) | Packet::Binary(_) => '4',
            Packet::Upgrade => '5',
            Packet::Noop => '6',
        }
    }
}

/// Decodes one text packet (a websocket text frame, or one element of a polling payload
/// that does not start with `b`).
pub fn decode_text(s: &str) -> Result<Packet, PacketError> {
    let mut chars = s.chars();
    let ty = chars.next().ok_or(PacketError::Empty)?;
    let data = chars.as_str();
    Ok(match ty {
        '0' => Packet::Open(
            serde_json::from_str(data).map_err(|e| PacketError::Handshake(e.to_string()))?,
        ),
        '1' => Packet::Close,
        '2' => Packet::Ping(data.to_owned()),
        '3' => Packet::Pong(data.to_owned()),
        '4' => Packet::Message(data.to_owned()),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        other => return Err(PacketError::UnknownType(other)),
    })
}

/// Decodes one element of a polling payload: `b<base64>` is a binary message, anything
/// else a text packet.
pub fn decode_polling_packet(s: &str) -> Result<Packet, PacketError> {
    match s.strip_prefix('b') {
        Some(b64) => BASE64
            .decode(b64)
            .map(|v| Packet::Binary(Bytes::from(v)))
            .map_err(|_| PacketError::Base64),
        None => decode_text(s),
    }
}

/// Splits a polling response body into its packets, in order.
pub fn decode_payload(body: &str) -> impl Iterator<Item = Result<Packet, PacketError>> + '_ {
    body.split(SEPARATOR).map(decode_polling_packet)
}

/// Like [`decode_payload`] but from raw bytes, which must be UTF-8.
pub fn decode_payload_bytes(body: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let s = std::str::from_utf8(body).map_err(|_| PacketError::Utf8)?;
    decode_payload(s).collect()
}

/// Appends the polling form of `packet` to `out` (no separator).
pub fn encode_polling_packet(packet: &Packet, out: &mut String) {
    match packet {
        Packet::Binary(b) => {
            out.push('b');
            BASE64.encode_string(b, out);
        }
        other => encode_text_into(other, out),
    }
}

/// Joins packets into one polling request body, separated by `\x1e`.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> String {
    let mut out = String::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        encode_polling_packet(p, &mut out);
    }
    out
}

/// One websocket frame of the websocket transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame (only binary messages use it).
    Binary(Bytes),
}

/// Encodes a packet as the websocket frame that carries it.
pub fn encode_ws(packet: &Packet) -> Frame {
    match packet {
        Packet::Binary(b) => Frame::Binary(b.clone()),
        other => {
            let mut s = String::new();
            encode_text_into(other, &mut s);
            Frame::Text(s)
        }
    }
}

/// Decodes a websocket frame of the websocket transport.
pub fn decode_ws(frame: Frame) -> Result<Packet, PacketError> {
    match frame {
        Frame::Text(s) => decode_text(&s),
        Frame::Binary(b) => Ok(Packet::Binary(b)),
    }
}

fn encode_text_into(packet: &Packet, out: &mut String) {
    out.push(packet.type_char());
    match packet {
        Packet::Open(h) => {
            // Clients never send `open`; encoded for tests and symmetry only.
            let upgrades = serde_json::to_string(&h.upgrades).unwrap_or_else(|_| "[]".into());
            let sid = serde_json::to_string(&h.sid).unwrap_or_else(|_| "\"\"".into());
            out.push_str(&format!(
                "{{\"sid\":{sid},\"upgrades\":{upgrades},\"pingInterval\":{},\"pingTimeout\":{}}}",
                h.ping_interval, h.ping_timeout
            ));
        }
        Packet::Ping(d) | Packet::Pong(d) | Packet::Message(d) => out.push_str(d),
        Packet::Binary(_) | Packet::Close | Packet::Upgrade | Packet::Noop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Packet {
        decode_text(s).unwrap()
    }

    #[test]
    fn protocol_packet_examples() {
        assert_eq!(text("2probe"), Packet::Ping("probe".into()));
        assert_eq!(text("3probe"), Packet::Pong("probe".into()));
        assert_eq!(text("2"), Packet::Ping(String::new()));
        assert_eq!(text("4hello"), Packet::Message("hello".into()));
        assert_eq!(text("4€"), Packet::Message("€".into()));
        assert_eq!(text("1"), Packet::Close);
        assert_eq!(text("5"), Packet::Upgrade);
        assert_eq!(text("6"), Packet::Noop);
        let open = text(
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}"#,
        );
        assert_eq!(
            open,
            Packet::Open(Handshake {
                sid: "lv_VI97HAXpY6yYWAAAC".into(),
                upgrades: vec!["websocket".into()],
                ping_interval: 25000,
                ping_timeout: 5000,
                max_payload: Some(1_000_000),
            })
        );
    }

    #[test]
    fn protocol_payload_examples() {
        let got: Vec<_> = decode_payload("4hello\x1e2\x1e4world")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            [
                Packet::Message("hello".into()),
                Packet::Ping(String::new()),
                Packet::Message("world".into())
            ]
        );
        let got = decode_payload_bytes("4hello\x1ebAQIDBA==".as_bytes()).unwrap();
        assert_eq!(
            got,
            [
                Packet::Message("hello".into()),
                Packet::Binary(Bytes::from_static(&[1, 2, 3, 4]))
            ]
        );
        // The sample session's client POST: two events in one body.
        let body = encode_payload(&[
            Packet::Message("2[\"hello\"]".into()),
            Packet::Message("2[\"world\"]".into()),
        ]);
        assert_eq!(body, "42[\"hello\"]\x1e42[\"world\"]");
        let body = encode_payload(&[
            Packet::Message("hello€".into()),
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Packet::Pong(String::new()),
        ]);
        assert_eq!(body, "4hello€\x1ebAQIDBA==\x1e3");
        assert_eq!(encode_payload(&[]), "");
    }

    #[test]
    fn websocket_frames() {
        assert_eq!(
            encode_ws(&Packet::Message("hello".into())),
            Frame::Text("4hello".into())
        );
        assert_eq!(
            encode_ws(&Packet::Ping("probe".into())),
            Frame::Text("2probe".into())
        );
        assert_eq!(encode_ws(&Packet::Upgrade), Frame::Text("5".into()));
        let bin = Bytes::from_static(&[1, 2, 3, 4]);
        assert_eq!(
            encode_ws(&Packet::Binary(bin.clone())),
            Frame::Binary(bin.clone())
        );
        assert_eq!(
            decode_ws(Frame::Binary(bin.clone())).unwrap(),
            Packet::Binary(bin)
        );
        assert_eq!(
            decode_ws(Frame::Text("3".into())).unwrap(),
            Packet::Pong(String::new())
        );
    }

    #[test]
    fn round_trips() {
        for p in [
            Packet::Close,
            Packet::Ping("probe".into()),
            Packet::Pong(String::new()),
            Packet::Message("42[\"a\",{\"b\":1}]".into()),
            Packet::Binary(Bytes::from_static(b"\x00\xff\x1e")),
            Packet::Upgrade,
            Packet::Noop,
        ] {
            let body = encode_payload([&p, &p]);
            let back = decode_payload_bytes(body.as_bytes()).unwrap();
            assert_eq!(back, [p.clone(), p.clone()]);
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(decode_text(""), Err(PacketError::Empty));
        assert_eq!(decode_text("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(decode_text("x4"), Err(PacketError::UnknownType('x')));
        assert!(matches!(decode_text("0"), Err(PacketError::Handshake(_))));
        assert!(matches!(
            decode_text("0{\"sid\":1}"),
            Err(PacketError::Handshake(_))
        ));
        assert_eq!(decode_polling_packet("b!!"), Err(PacketError::Base64));
        assert_eq!(decode_payload_bytes(b"4\xff"), Err(PacketError::Utf8));
        // An empty element between separators is not a packet.
        assert!(decode_payload_bytes(b"4a\x1e\x1e4b").is_err());
        assert!(decode_payload_bytes(b"").is_err());
    }

    /// A deterministic xorshift generator, so the loop covers the same inputs in every run.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_bytes_never_panic() {
        const ALPHABET: &[u8] = b"0123456789b\x1e{}[]\":,-/sidupgrades\xff\xc3";
        let mut state = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let len = (xorshift(&mut state) % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = xorshift(&mut state);
                    if r.is_multiple_of(4) {
                        r as u8
                    } else {
                        ALPHABET[(r >> 8) as usize % ALPHABET.len()]
                    }
                })
                .collect();
            let _ = decode_payload_bytes(&bytes);
            if let Ok(s) = std::str::from_utf8(&bytes) {
                let _ = decode_text(s);
            }
        }
    }
}
