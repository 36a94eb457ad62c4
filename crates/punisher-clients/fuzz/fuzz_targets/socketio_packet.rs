//! Fuzzes the Socket.IO v5 codec and the binary reassembly: the input is split on 0x00
//! into messages; a message starting with 0x01 is fed as a binary attachment, anything else
//! as text. No input may panic, and a decoded text packet re-encodes to a packet that
//! decodes equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use punisher_clients::socketio::packet::{self, Decoder};

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new();
    for msg in data.split(|b| *b == 0) {
        match msg.split_first() {
            Some((1, rest)) => {
                let _ = decoder.decode_binary(bytes::Bytes::copy_from_slice(rest));
            }
            _ => {
                let Ok(text) = std::str::from_utf8(msg) else { continue };
                if let Ok((p, count)) = packet::decode_text(text) {
                    let mut with = p.clone();
                    with.attachments = vec![bytes::Bytes::new(); count];
                    let (back, back_count) =
                        packet::decode_text(&packet::encode(&with)).expect("re-encoded packet decodes");
                    assert_eq!((back, back_count), (p, count));
                }
                let _ = decoder.decode_text(text);
            }
        }
    }
});
