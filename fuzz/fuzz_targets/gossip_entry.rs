//! A peer's gossiped key and value: decoding never panics, whatever
//! decodes is valid, and it encodes back to something that decodes to the
//! same entry.
#![no_main]

use lbmesh::mesh::codec::{ENTRY_PREFIX, decode_key, decode_value, encode_key, encode_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (k, v) = text.split_once('\t').unwrap_or((&text, ""));
    if let Ok(key) = decode_key(k) {
        // One form per server: what decodes is what an API request writes.
        assert_eq!(key.server.ip().to_canonical(), key.server.ip());
        assert!(key.frontend >= 1 && key.server.port() >= 1);
        let again = encode_key(&key);
        assert_eq!(decode_key(&again[ENTRY_PREFIX.len()..]), Ok(key));
    }
    if let Ok(entry) = decode_value(v) {
        assert_eq!(decode_value(&encode_value(&entry)), Ok(entry));
    }
});
