//! The on-disk format: a snapshot, and a write-ahead log of records written
//! since, one checksummed JSON line per record. Reading treats the files as
//! untrusted: a torn last line (a crash mid-write) is cut off, damage
//! anywhere else is an error that names the file and line.
//!
//! Compaction starts a new log *epoch*: it creates the next, empty log file,
//! then atomically replaces the snapshot, which names the epoch whose log
//! follows it. A crash between the two steps leaves the old snapshot and its
//! complete log; the snapshot rename is the one commit point.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Record, StoreError, io};
use crate::registry::{Entry, Key, Origin, PeerId};

pub const SNAPSHOT: &str = "registry.snapshot.json";
/// The format this lbmesh writes. Version 1 (own entries only, one log
/// file) is still read.
pub const FORMAT_VERSION: u32 = 2;

/// The log file of `epoch`; epoch 0 is the single log of format version 1.
pub fn log_name(epoch: u64) -> String {
    if epoch == 0 {
        "registry.wal".into()
    } else {
        format!("registry.{epoch}.wal")
    }
}

#[derive(Serialize, Deserialize)]
struct StoredOrigin {
    node: PeerId,
    generation: u64,
}

/// One record as written. Version 1 lines have no `from` and always an entry.
#[derive(Serialize, Deserialize)]
struct Line {
    key: Key,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<StoredOrigin>,
    entry: Option<Entry>,
}

impl From<&Record> for Line {
    fn from(r: &Record) -> Self {
        Line {
            key: r.key,
            from: r.origin.as_ref().map(|o| StoredOrigin {
                node: o.node.clone(),
                generation: o.generation,
            }),
            entry: r.entry.clone(),
        }
    }
}

impl From<Line> for Record {
    fn from(l: Line) -> Self {
        Record {
            key: l.key,
            origin: l.from.map(|o| Origin::new(o.node, o.generation)),
            entry: l.entry,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    /// The log epoch that follows this snapshot (0 in version 1).
    #[serde(default)]
    epoch: u64,
    records: Vec<Line>,
}

/// Appends one log line for `r` to `out`.
pub fn encode_line(r: &Record, out: &mut Vec<u8>) {
    let json = serde_json::to_string(&Line::from(r)).expect("records serialize");
    out.extend_from_slice(format!("{:08x} ", crc32fast::hash(json.as_bytes())).as_bytes());
    out.extend_from_slice(json.as_bytes());
    out.push(b'\n');
}

fn decode_line(line: &str) -> Result<Record, String> {
    let (crc, json) = line.split_once(' ').ok_or("no checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc != crc32fast::hash(json.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str::<Line>(json)
        .map(Record::from)
        .map_err(|e| e.to_string())
}

/// Parses one log line (without its newline): checksum, then the record as
/// JSON. What recovery reads; every byte is untrusted.
pub fn parse_line(line: &str) -> Result<Record, String> {
    decode_line(line)
}

/// Parses a snapshot into its records, refusing an unknown format version.
pub fn parse_snapshot(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let snap: Snapshot = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !(1..=FORMAT_VERSION).contains(&snap.version) {
        return Err(format!("format version {}", snap.version));
    }
    Ok(snap.records.into_iter().map(Record::from).collect())
}

/// The bytes of a snapshot holding `records`, followed by the log of `epoch`.
pub fn encode_snapshot(records: &[Record], epoch: u64) -> Vec<u8> {
    serde_json::to_vec(&Snapshot {
        version: FORMAT_VERSION,
        epoch,
        records: records.iter().map(Line::from).collect(),
    })
    .expect("snapshot serializes")
}

/// What an earlier run left on disk.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The latest entry per key and origin (`None`: this peer's own).
    pub entries: BTreeMap<(Key, Option<Origin>), Entry>,
    /// The epoch of the log to append to.
    pub epoch: u64,
    /// Records in that log, and its length in bytes once a torn tail is cut.
    pub log_records: u64,
    pub log_len: u64,
}

impl Recovered {
    fn apply(&mut self, r: Record) {
        match r.entry {
            Some(e) => {
                self.entries.insert((r.key, r.origin), e);
            }
            None => {
                self.entries.remove(&(r.key, r.origin));
            }
        }
    }
}

/// Reads the snapshot and its log from `dir`, cutting a torn last log line,
/// and removes log files of other epochs (left by an interrupted compaction).
pub fn recover(dir: &Path) -> Result<Recovered, StoreError> {
    let mut out = Recovered::default();
    let snap_path = dir.join(SNAPSHOT);
    match fs::read(&snap_path) {
        Ok(bytes) => {
            let snap: Snapshot =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: snap_path.clone(),
                    line: e.line(),
                    why: e.to_string(),
                })?;
            if !(1..=FORMAT_VERSION).contains(&snap.version) {
                return Err(StoreError::Version {
                    path: snap_path,
                    found: snap.version,
                });
            }
            out.epoch = snap.epoch;
            for l in snap.records {
                out.apply(l.into());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&snap_path)(e)),
    }
    remove_other_logs(dir, out.epoch)?;
    let log_path = dir.join(log_name(out.epoch));
    let file = match File::open(&log_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(&log_path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    let mut bad: Option<(usize, String)> = None;
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(io(&log_path))?;
        if read == 0 {
            break;
        }
        n += 1;
        if let Some((at, why)) = bad.take() {
            // A damaged line followed by more data: not a torn tail.
            return Err(StoreError::Corrupt {
                path: log_path,
                line: at,
                why,
            });
        }
        let decoded = if line.ends_with('\n') {
            decode_line(line.trim_end_matches('\n'))
        } else {
            Err("incomplete last line".to_string())
        };
        match decoded {
            Ok(r) => {
                out.log_records += 1;
                out.log_len += read as u64;
                out.apply(r);
            }
            Err(why) => bad = Some((n, why)),
        }
    }
    if let Some((at, why)) = bad {
        tracing::warn!(path = %log_path.display(), line = at, %why, "dropping a torn last log record (crash during write)");
        let f = OpenOptions::new()
            .write(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        f.set_len(out.log_len).map_err(io(&log_path))?;
        f.sync_all().map_err(io(&log_path))?;
    }
    Ok(out)
}

/// Removes log files that belong to no snapshot: a compaction that created
/// the next log but crashed before its snapshot was in place.
fn remove_other_logs(dir: &Path, epoch: u64) -> Result<(), StoreError> {
    let keep = log_name(epoch);
    for e in fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_log = name == "registry.wal"
            || name
                .strip_prefix("registry.")
                .and_then(|r| r.strip_suffix(".wal"))
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        if is_log && name != keep {
            let path: PathBuf = e.path();
            fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}
