use std::fs;

use super::log::{SNAPSHOT, encode_line, log_name};
use super::*;
use crate::clock::Stamp;
use crate::registry::Op;

fn key(i: u16) -> Key {
    Key {
        frontend: 443,
        server: format!("198.18.0.{i}:30443").parse().unwrap(),
    }
}

fn entry(stamp: u64) -> Entry {
    Entry {
        stamp: Stamp(stamp),
        observed: Stamp(0),
        op: Op::Add {
            name: "traefik".parse().unwrap(),
            send_proxy: false,
            since_ms: 1,
            expires_ms: 2,
        },
    }
}

fn own(i: u16, stamp: u64) -> Record {
    Record::own(key(i), entry(stamp))
}

fn peer(node: &str, generation: u64) -> Origin {
    Origin::new(node.parse().unwrap(), generation)
}

#[tokio::test]
async fn appends_survive_reopen_and_later_writes_win() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, got) = Store::open(dir.path()).unwrap();
        assert!(got.is_empty());
        let a = store.append(vec![own(1, 10)]);
        let b = store.append(vec![own(2, 11)]);
        let c = store.append(vec![own(1, 12)]);
        a.durable().await.unwrap();
        b.durable().await.unwrap();
        c.durable().await.unwrap();
    }
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got, vec![own(1, 12), own(2, 11)]);
}

#[tokio::test]
async fn entries_held_from_other_peers_are_kept_apart_and_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (b1, b2, c1) = (peer("b", 1), peer("b", 2), peer("c", 1));
    {
        let (store, _) = Store::open(dir.path()).unwrap();
        store
            .append(vec![
                own(1, 10),
                Record::held(key(1), b1.clone(), Some(entry(11))),
                Record::held(key(1), b2.clone(), Some(entry(12))),
                Record::held(key(1), c1.clone(), Some(entry(13))),
            ])
            .durable()
            .await
            .unwrap();
        store
            .append(vec![Record::held(key(1), b1.clone(), None)])
            .durable()
            .await
            .unwrap();
    }
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(
        got,
        vec![
            own(1, 10),
            Record::held(key(1), b2, Some(entry(12))),
            Record::held(key(1), c1, Some(entry(13))),
        ]
    );
}

#[tokio::test]
async fn compaction_keeps_only_what_is_given_in_a_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.append(vec![own(1, 10)]).durable().await.unwrap();
    store.append(vec![own(2, 11)]).durable().await.unwrap();
    assert_eq!(store.wal_records(), 2);
    store.compact(vec![own(2, 11)]).durable().await.unwrap();
    assert_eq!(store.wal_records(), 0);
    store.append(vec![own(3, 12)]).durable().await.unwrap();
    drop(store);
    assert!(!dir.path().join(log_name(0)).exists(), "old log removed");
    assert!(dir.path().join(log_name(1)).exists());
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got, vec![own(2, 11), own(3, 12)]);
}

#[tokio::test]
async fn a_compaction_cut_short_before_its_snapshot_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.append(vec![own(1, 10)]).durable().await.unwrap();
    drop(store);
    // The next epoch's log exists, the snapshot still names epoch 0.
    fs::write(dir.path().join(log_name(1)), b"").unwrap();
    let (store, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got, vec![own(1, 10)]);
    assert!(!dir.path().join(log_name(1)).exists());
    store.append(vec![own(2, 11)]).durable().await.unwrap();
    drop(store);
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got.len(), 2);
}

#[test]
fn reads_format_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let e = serde_json::to_string(&entry(10)).unwrap();
    let k = serde_json::to_string(&key(1)).unwrap();
    fs::write(
        dir.path().join(SNAPSHOT),
        format!(r#"{{"version":1,"records":[{{"key":{k},"entry":{e}}}]}}"#),
    )
    .unwrap();
    let k2 = serde_json::to_string(&key(2)).unwrap();
    let json = format!(r#"{{"key":{k2},"entry":{e}}}"#);
    fs::write(
        dir.path().join("registry.wal"),
        format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes())),
    )
    .unwrap();
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got, vec![own(1, 10), own(2, 10)]);
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_damage_elsewhere_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path()).unwrap();
    store.append(vec![own(1, 10)]).durable().await.unwrap();
    store.append(vec![own(2, 11)]).durable().await.unwrap();
    drop(store);
    let wal = dir.path().join(log_name(0));
    let mut bytes = fs::read(&wal).unwrap();
    // Crash mid-write: half a line at the end.
    let mut line = Vec::new();
    encode_line(&own(3, 12), &mut line);
    bytes.extend_from_slice(&line[..20]);
    fs::write(&wal, &bytes).unwrap();
    let (store, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got.len(), 2);
    // Writing after recovery appends to clean lines.
    store.append(vec![own(4, 13)]).durable().await.unwrap();
    drop(store);
    let (_, got) = Store::open(dir.path()).unwrap();
    assert_eq!(got.len(), 3);
    // Flip a byte in the first line: corruption, not a torn tail.
    let mut bytes = fs::read(&wal).unwrap();
    bytes[12] ^= 0x20;
    fs::write(&wal, bytes).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[test]
fn a_memory_store_keeps_what_a_file_store_keeps() {
    let disk = MemoryDisk::default();
    let (store, _) = Store::memory(disk.clone());
    let b = peer("b", 1);
    drop(store.append(vec![
        own(1, 10),
        Record::held(key(1), b.clone(), Some(entry(11))),
    ]));
    drop(store.append(vec![Record::held(key(1), b, None)]));
    let (_, got) = Store::memory(disk);
    assert_eq!(got, vec![own(1, 10)]);
}

/// A snapshot (it carries no checksum) or log line naming a key no request
/// could have registered is damage: recovery refuses it, naming the file,
/// rather than restoring `bind :0` or a second key for one server (found by
/// fuzzing the snapshot parser).
#[test]
fn a_stored_key_no_request_could_make_is_refused() {
    let good = r#"{"frontend":443,"server":"198.18.0.9:30443"}"#;
    let snapshot = |key: &str| {
        format!(
            r#"{{"version":2,"epoch":1,"records":[{{"key":{key},"entry":{{"stamp":1,"observed":0,"op":{{"Delete":{{"name":"svc"}}}}}}}}]}}"#
        )
    };
    assert_eq!(parse_snapshot(snapshot(good).as_bytes()).unwrap().len(), 1);
    for (bad, why) in [
        (
            r#"{"frontend":0,"server":"198.18.0.9:30443"}"#,
            "frontend: must not be port 0",
        ),
        (
            r#"{"frontend":443,"server":"198.18.0.9:0"}"#,
            "server: must not be port 0",
        ),
        (
            r#"{"frontend":443,"server":"0.0.0.0:1"}"#,
            "cannot be a backend server address",
        ),
        (
            r#"{"frontend":443,"server":"[::ffff:198.18.0.9]:1"}"#,
            "::ffff:198.18.0.9 must be written as 198.18.0.9",
        ),
    ] {
        let text = snapshot(bad);
        let err = parse_snapshot(text.as_bytes()).unwrap_err();
        assert!(err.contains(why), "{err}");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SNAPSHOT), &text).unwrap();
        let err = Store::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(SNAPSHOT) && err.contains(why), "{err}");
        let json = text.split_once(r#""records":["#).unwrap().1;
        let line = json.strip_suffix("]}").unwrap();
        let wal = format!("{:08x} {line}", crc32fast::hash(line.as_bytes()));
        assert!(parse_wal_line(&wal).unwrap_err().contains(why));
    }
}
