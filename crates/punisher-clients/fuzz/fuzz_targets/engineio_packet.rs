//! Fuzzes the Engine.IO v4 codec: any bytes from a server decode to packets or an error,
//! never a panic, and whatever decodes re-encodes and decodes to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punisher_clients::engineio::packet::{self, Frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(packets) = packet::decode_payload_bytes(data) {
        let body = packet::encode_payload(&packets);
        let again = packet::decode_payload_bytes(body.as_bytes());
        // Open packets re-encode without fields the server may have sent; compare the rest.
        if !packets.iter().any(|p| matches!(p, packet::Packet::Open(_))) {
            assert_eq!(again.as_ref().ok(), Some(&packets));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = packet::decode_ws(Frame::Text(s.to_owned()));
    }
    let _ = packet::decode_ws(Frame::Binary(bytes::Bytes::copy_from_slice(data)));
});
