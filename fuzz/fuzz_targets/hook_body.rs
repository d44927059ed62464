//! The original phone-home body, JSON or form, and the write query: parsing
//! never panics, and whatever parses is a command whose values are valid.
#![no_main]

use lbmesh::api::input::{BodyFormat, hook_command, parse_fields, wait_query};
use lbmesh::registry::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = if selector & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::Form
    };
    if let Ok(fields) = parse_fields(format, body)
        && let Ok(cmd) = hook_command(&fields)
    {
        let key = cmd.key();
        assert!(key.frontend >= 1 && key.server.port() >= 1);
        // A mapped IPv6 form never survives parsing: one server, one key.
        assert!(key.server.ip().to_canonical() == key.server.ip());
        let (Command::Register { name, .. } | Command::Delete { name, .. }) = &cmd;
        assert!(
            name.as_str()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        );
    }
    if let Ok(q) = std::str::from_utf8(body) {
        let _ = wait_query(Some(q), std::time::Duration::from_secs(30));
    }
});
