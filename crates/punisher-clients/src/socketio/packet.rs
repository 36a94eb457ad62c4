//! Socket.IO v5 packet codec, sans I/O.
//!
//! Format (inside an Engine.IO `message`):
//! `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`, e.g. `2["foo"]`,
//! `2/admin,13["foo"]`, `51-["baz",{"_placeholder":true,"num":0}]`. A BINARY_EVENT or
//! BINARY_ACK announces N attachments, which arrive as the next N binary Engine.IO
//! messages; [`Decoder`] reassembles them. Binary arguments stay where the JSON put them, as
//! `{"_placeholder":true,"num":i}` objects, and the attachments travel beside the JSON:
//! the caller (the JS engine) swaps placeholders for buffers when it builds its values, so
//! no tree is rebuilt here. Malformed input is a [`SioPacketError`], never a panic.

use bytes::Bytes;
use serde_json::Value;

/// The most attachments one packet may announce: a hostile server must not make us reserve
/// unbounded memory.
pub const MAX_ATTACHMENTS: usize = 10_000;

/// The Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Joins a namespace (client) or accepts the join (server, with `{"sid":..}`).
    Connect,
    /// Leaves a namespace.
    Disconnect,
    /// An event: a non-empty array whose first element is the event name.
    Event,
    /// The answer to an event that asked for one.
    Ack,
    /// The server refused the join: `{"message":..}`.
    ConnectError,
    /// An event with binary attachments.
    BinaryEvent,
    /// An ack with binary attachments.
    BinaryAck,
}

impl PacketKind {
    fn digit(self) -> char {
        match self {
            PacketKind::Connect => '0',
            PacketKind::Disconnect => '1',
            PacketKind::Event => '2',
            PacketKind::Ack => '3',
            PacketKind::ConnectError => '4',
            PacketKind::BinaryEvent => '5',
            PacketKind::BinaryAck => '6',
        }
    }

    fn from_digit(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    /// Whether this kind announces attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// One Socket.IO packet, with its attachments once reassembled.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// The packet type.
    pub kind: PacketKind,
    /// The namespace, `/` for the main one.
    pub namespace: String,
    /// The ack id, when an answer is requested (events) or given (acks).
    pub id: Option<u64>,
    /// The JSON payload, binary parts replaced by placeholders.
    pub data: Option<Value>,
    /// The binary attachments, in placeholder order (`num` indexes this list).
    pub attachments: Vec<Bytes>,
}

/// Why a text is not a valid Socket.IO packet, or binary data arrived out of turn.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SioPacketError {
    /// The text is empty.
    #[error("empty socket.io packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown socket.io packet type")]
    UnknownType,
    /// A binary packet whose attachment count is missing, not a number, or too large.
    #[error("illegal socket.io attachment count")]
    Attachments,
    /// An ack id that is not a number that fits in 64 bits.
    #[error("illegal socket.io ack id")]
    AckId,
    /// The payload is not JSON.
    #[error("socket.io payload is not json")]
    Json,
    /// The payload's JSON shape does not fit the packet type.
    #[error("invalid socket.io payload for {0:?}")]
    InvalidPayload(PacketKind),
    /// A binary message arrived while no binary packet awaited attachments.
    #[error("unexpected binary attachment")]
    UnexpectedBinary,
    /// A text packet arrived while a binary packet still awaited attachments.
    #[error("text packet while {0} attachment(s) were still expected")]
    MissingAttachments(usize),
}

impl Packet {
    /// A packet with no id, no payload and no attachments.
    pub fn new(kind: PacketKind, namespace: &str) -> Packet {
        Packet {
            kind,
            namespace: namespace.to_owned(),
            id: None,
            data: None,
            attachments: Vec::new(),
        }
    }

    /// The event name, for events (`None` when the first element is not a string).
    pub fn event_name(&self) -> Option<&str> {
        match (&self.kind, &self.data) {
            (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(a))) => {
                a.first().and_then(Value::as_str)
            }
            _ => None,
        }
    }
}

/// The placeholder that stands for attachment `num` inside a binary packet's JSON.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// The attachment index a JSON value stands for, when it is a placeholder.
pub fn placeholder_num(v: &Value) -> Option<usize> {
    let o = v.as_object()?;
    if o.get("_placeholder")?.as_bool()? {
        usize::try_from(o.get("num")?.as_u64()?).ok()
    } else {
        None
    }
}

/// Encodes the text part of a packet. For binary kinds the attachment count written is
/// `packet.attachments.len()`; the attachments themselves follow as binary messages.
pub fn encode(packet: &Packet) -> String {
    let mut out = String::with_capacity(16);
    out.push(packet.kind.digit());
    if packet.kind.is_binary() {
        out.push_str(&packet.attachments.len().to_string());
        out.push('-');
    }
    if packet.namespace != "/" && !packet.namespace.is_empty() {
        out.push_str(&packet.namespace);
        out.push(',');
    }
    if let Some(id) = packet.id {
        out.push_str(&id.to_string());
    }
    if let Some(data) = &packet.data {
        // Serializing a `Value` cannot fail: its keys are strings.
        out.push_str(&serde_json::to_string(data).unwrap_or_default());
    }
    out
}

/// Decodes the text part of a packet. A binary packet comes back with an empty
/// `attachments` list and the count it announced; [`Decoder`] waits for them.
pub fn decode_text(s: &str) -> Result<(Packet, usize), SioPacketError> {
    let b = s.as_bytes();
    let kind = PacketKind::from_digit(*b.first().ok_or(SioPacketError::Empty)?)
        .ok_or(SioPacketError::UnknownType)?;
    let mut i = 1;
    let mut count = 0usize;
    if kind.is_binary() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i >= b.len() || b[i] != b'-' || i - start > 6 {
            return Err(SioPacketError::Attachments);
        }
        count = s[start..i]
            .parse()
            .map_err(|_| SioPacketError::Attachments)?;
        if count > MAX_ATTACHMENTS {
            return Err(SioPacketError::Attachments);
        }
        i += 1;
    }
    let namespace = if b.get(i) == Some(&b'/') {
        let start = i;
        // The namespace ends at the first ',' or at the end of the text.
        match s[i..].find(',') {
            Some(off) => {
                i += off + 1;
                &s[start..i - 1]
            }
            None => {
                i = b.len();
                &s[start..]
            }
        }
    } else {
        "/"
    };
    let mut id = None;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        id = Some(
            s[start..i]
                .parse::<u64>()
                .map_err(|_| SioPacketError::AckId)?,
        );
    }
    let data = if i < b.len() {
        Some(serde_json::from_str::<Value>(&s[i..]).map_err(|_| SioPacketError::Json)?)
    } else {
        None
    };
    if !payload_is_valid(kind, data.as_ref()) {
        return Err(SioPacketError::InvalidPayload(kind));
    }
    Ok((
        Packet {
            kind,
            namespace: namespace.to_owned(),
            id,
            data,
            attachments: Vec::new(),
        },
        count,
    ))
}

/// The payload rules of the reference parser (`isPayloadValid`).
fn payload_is_valid(kind: PacketKind, data: Option<&Value>) -> bool {
    match kind {
        PacketKind::Connect => matches!(data, None | Some(Value::Object(_))),
        PacketKind::Disconnect => data.is_none(),
        PacketKind::ConnectError => matches!(data, Some(Value::Object(_) | Value::String(_))),
        PacketKind::Event | PacketKind::BinaryEvent => match data {
            Some(Value::Array(a)) => matches!(a.first(), Some(Value::String(_) | Value::Number(_))),
            _ => false,
        },
        PacketKind::Ack | PacketKind::BinaryAck => matches!(data, Some(Value::Array(_))),
    }
}

/// Reassembles binary packets from a text packet and the binary messages that follow it.
#[derive(Debug, Default)]
pub struct Decoder {
    /// A binary packet still waiting for attachments, and how many it announced.
    pending: Option<(Packet, usize)>,
}

impl Decoder {
    /// A decoder with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a text message. Returns the packet when complete, `None` while a binary packet
    /// awaits its attachments.
    pub fn decode_text(&mut self, s: &str) -> Result<Option<Packet>, SioPacketError> {
        if let Some((_, count)) = &self.pending {
            let missing = *count;
            self.pending = None;
            return Err(SioPacketError::MissingAttachments(missing));
        }
        let (packet, count) = decode_text(s)?;
        if count == 0 {
            return Ok(Some(packet));
        }
        self.pending = Some((packet, count));
        Ok(None)
    }

    /// Feeds a binary message: the next attachment of the pending packet.
    pub fn decode_binary(&mut self, data: Bytes) -> Result<Option<Packet>, SioPacketError> {
        let Some((packet, count)) = &mut self.pending else {
            return Err(SioPacketError::UnexpectedBinary);
        };
        if packet.attachments.capacity() == 0 {
            packet.attachments.reserve_exact(*count);
        }
        packet.attachments.push(data);
        if packet.attachments.len() < *count {
            return Ok(None);
        }
        Ok(self.pending.take().map(|(p, _)| p))
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pkt(kind: PacketKind, ns: &str, id: Option<u64>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            namespace: ns.into(),
            id,
            data,
            attachments: Vec::new(),
        }
    }

    /// Checks both directions: `encoded` decodes to `packet` and `packet` encodes back.
    fn check(encoded: &str, packet: Packet, attachments: usize) {
        let (got, count) = decode_text(encoded).unwrap_or_else(|e| panic!("{encoded}: {e}"));
        assert_eq!(got, packet, "{encoded}");
        assert_eq!(count, attachments, "{encoded}");
        let mut with = packet.clone();
        with.attachments = vec![Bytes::new(); attachments];
        assert_eq!(encode(&with), encoded);
    }

    #[test]
    fn protocol_examples() {
        use PacketKind::*;
        check("0", pkt(Connect, "/", None, None), 0);
        check(
            r#"0{"sid":"wZX3oN0bSVIhsaknAAAI"}"#,
            pkt(
                Connect,
                "/",
                None,
                Some(json!({"sid": "wZX3oN0bSVIhsaknAAAI"})),
            ),
            0,
        );
        check("0/admin,", pkt(Connect, "/admin", None, None), 0);
        check(
            r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
            pkt(
                Connect,
                "/admin",
                None,
                Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"})),
            ),
            0,
        );
        check(
            r#"4{"message":"Not authorized"}"#,
            pkt(
                ConnectError,
                "/",
                None,
                Some(json!({"message": "Not authorized"})),
            ),
            0,
        );
        check(
            r#"2["foo"]"#,
            pkt(Event, "/", None, Some(json!(["foo"]))),
            0,
        );
        check(
            r#"2/admin,["bar"]"#,
            pkt(Event, "/admin", None, Some(json!(["bar"]))),
            0,
        );
        check(
            r#"51-["baz",{"_placeholder":true,"num":0}]"#,
            pkt(
                BinaryEvent,
                "/",
                None,
                Some(json!(["baz", {"_placeholder": true, "num": 0}])),
            ),
            1,
        );
        check(
            r#"52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
            pkt(
                BinaryEvent,
                "/admin",
                None,
                Some(json!(["baz", placeholder(0), placeholder(1)])),
            ),
            2,
        );
        check(
            r#"212["foo"]"#,
            pkt(Event, "/", Some(12), Some(json!(["foo"]))),
            0,
        );
        check("312[]", pkt(Ack, "/", Some(12), Some(json!([]))), 0);
        check(
            r#"2/admin,13["foo"]"#,
            pkt(Event, "/admin", Some(13), Some(json!(["foo"]))),
            0,
        );
        check(
            r#"3/admin,13["bar"]"#,
            pkt(Ack, "/admin", Some(13), Some(json!(["bar"]))),
            0,
        );
        check(
            r#"51-14["foo",{"_placeholder":true,"num":0}]"#,
            pkt(
                BinaryEvent,
                "/",
                Some(14),
                Some(json!(["foo", placeholder(0)])),
            ),
            1,
        );
        check(
            r#"314["bar"]"#,
            pkt(Ack, "/", Some(14), Some(json!(["bar"]))),
            0,
        );
        check(
            r#"61-15["bar",{"_placeholder":true,"num":0}]"#,
            pkt(
                BinaryAck,
                "/",
                Some(15),
                Some(json!(["bar", placeholder(0)])),
            ),
            1,
        );
        check("1", pkt(Disconnect, "/", None, None), 0);
        check("1/admin,", pkt(Disconnect, "/admin", None, None), 0);
    }

    #[test]
    fn namespace_without_comma_ends_the_packet() {
        // The reference parser accepts `1/admin` (no trailing comma) as well.
        let (p, _) = decode_text("1/admin").unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.kind, PacketKind::Disconnect);
    }

    #[test]
    fn reassembles_binary_packets() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode_text(
                r#"52-/admin,7["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
            ),
            Ok(None)
        );
        assert!(d.is_pending());
        assert_eq!(d.decode_binary(Bytes::from_static(&[1, 2])), Ok(None));
        let p = d
            .decode_binary(Bytes::from_static(&[3, 4]))
            .unwrap()
            .unwrap();
        assert_eq!(p.kind, PacketKind::BinaryEvent);
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.id, Some(7));
        assert_eq!(p.event_name(), Some("baz"));
        assert_eq!(
            p.attachments,
            [Bytes::from_static(&[1, 2]), Bytes::from_static(&[3, 4])]
        );
        let args = p.data.as_ref().unwrap().as_array().unwrap();
        assert_eq!(placeholder_num(&args[1]), Some(0));
        assert_eq!(placeholder_num(&args[2]), Some(1));
        assert_eq!(placeholder_num(&args[0]), None);
        assert!(!d.is_pending());
        // A plain packet passes straight through.
        assert_eq!(
            d.decode_text(r#"2["a"]"#).unwrap().unwrap().event_name(),
            Some("a")
        );
    }

    #[test]
    fn binary_out_of_turn_is_an_error() {
        let mut d = Decoder::new();
        assert_eq!(
            d.decode_binary(Bytes::new()),
            Err(SioPacketError::UnexpectedBinary)
        );
        assert_eq!(
            d.decode_text(r#"51-["x",{"_placeholder":true,"num":0}]"#),
            Ok(None)
        );
        assert_eq!(
            d.decode_text(r#"2["a"]"#),
            Err(SioPacketError::MissingAttachments(1))
        );
        // The decoder recovered: the next packet decodes.
        assert!(d.decode_text(r#"2["a"]"#).unwrap().is_some());
    }

    #[test]
    fn malformed_input_is_an_error() {
        use SioPacketError::*;
        for (input, err) in [
            ("", Empty),
            ("9", UnknownType),
            ("x", UnknownType),
            ("5[\"a\"]", Attachments),
            ("5-[\"a\"]", Attachments),
            ("51[\"a\"]", Attachments),
            ("5999999-[\"a\"]", Attachments),
            ("599999-[\"a\"]", Attachments),
            ("2[\"a\"", Json),
            ("2{}", InvalidPayload(PacketKind::Event)),
            ("2[]", InvalidPayload(PacketKind::Event)),
            ("2[{}]", InvalidPayload(PacketKind::Event)),
            ("3{}", InvalidPayload(PacketKind::Ack)),
            ("3", InvalidPayload(PacketKind::Ack)),
            ("2", InvalidPayload(PacketKind::Event)),
            ("0[]", InvalidPayload(PacketKind::Connect)),
            ("1{}", InvalidPayload(PacketKind::Disconnect)),
            ("4", InvalidPayload(PacketKind::ConnectError)),
            ("299999999999999999999999[\"a\"]", AckId),
            ("2/admin,x", Json),
        ] {
            assert_eq!(decode_text(input).map(|_| ()), Err(err), "{input:?}");
        }
        assert_eq!(
            decode_text(r#"4"Not authorized""#).unwrap().0.data,
            Some(json!("Not authorized"))
        );
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_text_never_panics() {
        const PIECES: &[&str] = &[
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "-",
            "/",
            "/admin",
            ",",
            "[",
            "]",
            "{",
            "}",
            "\"",
            "\"a\"",
            "12",
            "99999999999999999999",
            "_placeholder",
            ":",
            "true",
            "é",
            "\u{1e}",
        ];
        let mut state = 0x2545_F491_4F6C_DD1D;
        let mut d = Decoder::new();
        for _ in 0..20_000 {
            let n = (xorshift(&mut state) % 12) as usize;
            let s: String = (0..n)
                .map(|_| PIECES[(xorshift(&mut state) >> 5) as usize % PIECES.len()])
                .collect();
            let _ = decode_text(&s);
            if xorshift(&mut state).is_multiple_of(3) {
                let _ = d.decode_binary(Bytes::from(s.clone().into_bytes()));
            } else {
                let _ = d.decode_text(&s);
            }
        }
    }
}
