//! The typed API: path segments and the registration body. Parsing never
//! panics, a parsed address is canonical, and the command is for the path.
#![no_main]

use lbmesh::api::input::register_command;
use lbmesh::registry::Key;
use lbmesh::registry::types::{parse_port, parse_server_ip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line carries path segments, the rest is the body.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let head = String::from_utf8_lossy(head);
    let mut parts = head.split('/');
    let (port, ip) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let key = match (parse_port("port", port), parse_server_ip("ip", ip)) {
        (Ok(p), Ok(ip)) => {
            // One form per address: a mapped IPv6 path names the IPv4 server.
            assert_eq!(ip.to_canonical(), ip);
            Key {
                frontend: p,
                server: (ip, p).into(),
            }
        }
        _ => Key {
            frontend: 443,
            server: "203.0.113.7:30443".parse().unwrap(),
        },
    };
    if let Ok(cmd) = register_command(key, body.get(1..).unwrap_or_default()) {
        assert_eq!(cmd.key(), key);
    }
});
