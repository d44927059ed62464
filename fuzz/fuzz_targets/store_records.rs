//! The write-ahead log and the snapshot as recovery reads them after a
//! crash: any bytes are refused or read, never a panic, and what is read
//! restores into a registry that stays consistent and renders.
//!
//! Each input is tried as a snapshot and as log lines; a line whose
//! checksum is wrong is also tried with the right one, so the fuzzer
//! reaches the record decoding behind the checksum.
#![no_main]

use std::collections::BTreeSet;

use lbmesh::haproxy::render::{RenderSettings, render};
use lbmesh::registry::types::parse_server_ip;
use lbmesh::registry::{Limits, PortPolicy, Registry};
use lbmesh::store::{Record, parse_snapshot, parse_wal_line};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let mut records: Vec<Record> = parse_snapshot(data).unwrap_or_default();
    for line in String::from_utf8_lossy(data).split('\n') {
        match parse_wal_line(line) {
            Ok(r) => records.push(r),
            Err(_) => {
                let json = line.split_once(' ').map_or(line, |(_, j)| j);
                let fixed = format!("{:08x} {json}", crc32fast::hash(json.as_bytes()));
                if let Ok(r) = parse_wal_line(&fixed) {
                    records.push(r);
                }
            }
        }
    }
    // What SharedRegistry::new does with what the store recovered.
    let mut reg = Registry::new(
        "me".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], [9000]),
    );
    let own = reg.origin().clone();
    for r in records {
        // A record read back is one lbmesh could have written.
        assert!(
            r.key.frontend >= 1 && r.key.server.port() >= 1,
            "{:?}",
            r.key
        );
        assert!(parse_server_ip("ip", &r.key.server.ip().to_string()).is_ok());
        let Some(entry) = r.entry.filter(|e| reg.entry_matters(e, NOW)) else {
            continue;
        };
        reg.set_entry(r.key, r.origin.unwrap_or_else(|| own.clone()), Some(entry));
    }
    reg.check_invariants().unwrap();
    let _ = render(
        &reg.view(NOW),
        &BTreeSet::new(),
        &RenderSettings::with_sockets_in(std::path::Path::new("/run/lbmesh")),
    );
});
