//! Durable storage of the entries this peer accepted: a write-ahead log with
//! group commit, compacted into an atomically written snapshot.
//!
//! Why a log: an acknowledged renewal must survive a crash, and at tens of
//! thousands of renewals a second rewriting the whole registry per request is
//! out of the question. One fsync covers every request that arrived while the
//! previous one ran (group commit), so durability costs one sync per batch.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::registry::{Entry, Key};

const SNAPSHOT: &str = "registry.snapshot.json";
const WAL: &str = "registry.wal";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} line {line} is corrupt ({why}); move the file aside to start without it")]
    Corrupt {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path} has format version {found}, this lbmesh reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("storage failed earlier and accepts no more writes: {0}")]
    Failed(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// One persisted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: Key,
    pub entry: Entry,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    records: Vec<Record>,
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic_mode(path, bytes, None)
}

/// Like [`write_atomic`], creating the file with unix `mode` (e.g. 0o600 for secrets).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if let Some(m) = mode {
        opts.mode(m);
    }
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// This start's generation: larger than any earlier start's, so peers can
/// tell a restarted peer from its previous incarnation. Wall-clock
/// milliseconds, or one more than the last stored value if the clock went back.
pub fn next_generation(dir: &Path, now_ms: u64) -> Result<u64, StoreError> {
    let path = dir.join("generation");
    let last = match fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            line: 1,
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(&path)(e)),
    };
    let next = now_ms.max(last + 1);
    write_atomic(&path, format!("{next}\n").as_bytes())?;
    Ok(next)
}

fn encode_line(r: &Record) -> String {
    let json = serde_json::to_string(r).expect("records serialize");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

fn decode_line(line: &str) -> Result<Record, String> {
    let (crc, json) = line.split_once(' ').ok_or("no checksum")?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| "bad checksum field")?;
    if crc != crc32fast::hash(json.as_bytes()) {
        return Err("checksum mismatch".into());
    }
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// Reads what an earlier run persisted. A torn last log line (a crash mid-write)
/// is dropped and cut off; damage anywhere else is an error.
fn recover(dir: &Path) -> Result<(BTreeMap<Key, Entry>, u64), StoreError> {
    let mut entries = BTreeMap::new();
    let snap_path = dir.join(SNAPSHOT);
    match fs::read(&snap_path) {
        Ok(bytes) => {
            let snap: Snapshot =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: snap_path.clone(),
                    line: e.line(),
                    why: e.to_string(),
                })?;
            if snap.version != FORMAT_VERSION {
                return Err(StoreError::Version {
                    path: snap_path,
                    found: snap.version,
                });
            }
            for r in snap.records {
                entries.insert(r.key, r.entry);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&snap_path)(e)),
    }
    let wal_path = dir.join(WAL);
    let file = match File::open(&wal_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((entries, 0)),
        Err(e) => return Err(io(&wal_path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut good_len: u64 = 0;
    let mut records = 0u64;
    let mut line = String::new();
    let mut bad: Option<(usize, String)> = None;
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(io(&wal_path))?;
        if read == 0 {
            break;
        }
        n += 1;
        if let Some((at, why)) = bad.take() {
            // A damaged line followed by more data: not a torn tail.
            return Err(StoreError::Corrupt {
                path: wal_path,
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
                records += 1;
                good_len += read as u64;
                entries.insert(r.key, r.entry);
            }
            Err(why) => bad = Some((n, why)),
        }
    }
    if let Some((at, why)) = bad {
        tracing::warn!(path = %wal_path.display(), line = at, %why, "dropping a torn last log record (crash during write)");
        let f = OpenOptions::new()
            .write(true)
            .open(&wal_path)
            .map_err(io(&wal_path))?;
        f.set_len(good_len).map_err(io(&wal_path))?;
        f.sync_all().map_err(io(&wal_path))?;
    }
    Ok((entries, records))
}

enum Job {
    Append(Record, oneshot::Sender<Result<(), String>>),
    /// Rewrites the snapshot from the given records and empties the log.
    Compact(Vec<Record>, oneshot::Sender<Result<(), String>>),
}

/// The handle the rest of the daemon writes through. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Job>,
    failed: Arc<AtomicBool>,
    wal_records: Arc<AtomicU64>,
    dir: PathBuf,
    /// In-memory stores (simulations) keep records here and answer at once.
    memory: Option<MemoryDisk>,
}

/// The "disk" of an in-memory store: survives a simulated restart of the
/// peer that holds it, and is lost when the simulation wipes it.
pub type MemoryDisk = Arc<std::sync::Mutex<std::collections::BTreeMap<Key, Entry>>>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// A write that is queued in order; await it to know it is on disk.
pub struct Pending(oneshot::Receiver<Result<(), String>>);

impl Pending {
    pub async fn durable(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Failed(e)),
            Err(_) => Err(StoreError::Failed("storage thread stopped".into())),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, returning what it holds.
    /// The writer runs on its own thread: fsync blocks, and must not stall the runtime.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Record>), StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let (entries, wal_records) = recover(dir)?;
        let wal_path = dir.join(WAL);
        let wal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wal_path)
            .map_err(io(&wal_path))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let wal_records = Arc::new(AtomicU64::new(wal_records));
        let writer = Writer {
            dir: dir.to_owned(),
            wal,
            wal_records: wal_records.clone(),
            failed: failed.clone(),
        };
        std::thread::Builder::new()
            .name("lbmesh-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        let records = entries
            .into_iter()
            .map(|(key, entry)| Record { key, entry })
            .collect();
        Ok((
            Store {
                tx,
                failed,
                wal_records,
                dir: dir.to_owned(),
                memory: None,
            },
            records,
        ))
    }

    /// A store that keeps its records in `disk` and acknowledges at once,
    /// with no thread and no I/O: deterministic, for simulations.
    pub fn memory(disk: MemoryDisk) -> (Store, Vec<Record>) {
        let records = disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, e)| Record {
                key: *k,
                entry: e.clone(),
            })
            .collect();
        let (tx, _) = mpsc::unbounded_channel();
        (
            Store {
                tx,
                failed: Arc::default(),
                wal_records: Arc::default(),
                dir: PathBuf::from("(memory)"),
                memory: Some(disk),
            },
            records,
        )
    }

    fn done_now() -> Pending {
        let (done, rx) = oneshot::channel();
        let _ = done.send(Ok(()));
        Pending(rx)
    }

    /// Queues a record. Call it while holding the registry lock, so the log
    /// order is the order writes were accepted in; await the result after.
    pub fn append(&self, record: Record) -> Pending {
        if let Some(disk) = &self.memory {
            disk.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(record.key, record.entry);
            return Self::done_now();
        }
        let (done, rx) = oneshot::channel();
        if self.failed.load(Ordering::Relaxed) {
            let _ = done.send(Err("an earlier write failed".into()));
        } else if let Err(mpsc::error::SendError(Job::Append(_, done))) =
            self.tx.send(Job::Append(record, done))
        {
            let _ = done.send(Err("storage thread stopped".into()));
        }
        Pending(rx)
    }

    /// Replaces everything on disk with `records` (what still matters).
    pub fn compact(&self, records: Vec<Record>) -> Pending {
        if let Some(disk) = &self.memory {
            *disk.lock().unwrap_or_else(|p| p.into_inner()) =
                records.into_iter().map(|r| (r.key, r.entry)).collect();
            return Self::done_now();
        }
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Job::Compact(_, done))) =
            self.tx.send(Job::Compact(records, done))
        {
            let _ = done.send(Err("storage thread stopped".into()));
        }
        Pending(rx)
    }

    /// Whether a write has failed; a failed store refuses writes until restart.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in the log since the last compaction.
    pub fn wal_records(&self) -> u64 {
        self.wal_records.load(Ordering::Relaxed)
    }
}

struct Writer {
    dir: PathBuf,
    wal: File,
    wal_records: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut batch: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
        let mut buf = String::new();
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            // Take everything already queued: one write and one fsync for all.
            while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
                match job {
                    Job::Append(record, done) => {
                        buf.push_str(&encode_line(&record));
                        batch.push(done);
                    }
                    Job::Compact(records, done) => {
                        let r = self.flush(&mut buf).and_then(|()| self.compact(records));
                        self.finish(&mut batch, &r);
                        let _ = done.send(r);
                    }
                }
                if batch.len() >= 4096 {
                    break;
                }
            }
            let r = self.flush(&mut buf);
            self.finish(&mut batch, &r);
        }
    }

    fn finish(&self, batch: &mut Vec<oneshot::Sender<Result<(), String>>>, r: &Result<(), String>) {
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        for done in batch.drain(..) {
            let _ = done.send(r.clone());
        }
    }

    fn flush(&mut self, buf: &mut String) -> Result<(), String> {
        if self.failed.load(Ordering::Relaxed) {
            buf.clear();
            return Err("an earlier write failed".into());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let n = buf.matches('\n').count() as u64;
        let r = self
            .wal
            .write_all(buf.as_bytes())
            .and_then(|()| self.wal.sync_data());
        buf.clear();
        match r {
            Ok(()) => {
                self.wal_records.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %self.dir.display(), "write-ahead log write failed; refusing further writes");
                Err(format!("{}: {e}", self.dir.join(WAL).display()))
            }
        }
    }

    fn compact(&mut self, records: Vec<Record>) -> Result<(), String> {
        let snap = Snapshot {
            version: FORMAT_VERSION,
            records,
        };
        let bytes = serde_json::to_vec(&snap).expect("snapshot serializes");
        write_atomic(&self.dir.join(SNAPSHOT), &bytes).map_err(|e| e.to_string())?;
        // The snapshot now holds everything; start an empty log in its place.
        let wal_path = self.dir.join(WAL);
        write_atomic(&wal_path, b"").map_err(|e| e.to_string())?;
        self.wal = OpenOptions::new()
            .append(true)
            .open(&wal_path)
            .map_err(|e| format!("{}: {e}", wal_path.display()))?;
        self.wal_records.store(0, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Stamp;
    use crate::registry::Op;

    fn record(i: u16, stamp: u64) -> Record {
        Record {
            key: Key {
                frontend: 443,
                server: format!("198.18.0.{i}:30443").parse().unwrap(),
            },
            entry: Entry {
                stamp: Stamp(stamp),
                observed: Stamp(0),
                op: Op::Add {
                    name: "traefik".parse().unwrap(),
                    send_proxy: false,
                    since_ms: 1,
                    expires_ms: 2,
                },
            },
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_later_writes_win() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, got) = Store::open(dir.path()).unwrap();
            assert!(got.is_empty());
            let a = store.append(record(1, 10));
            let b = store.append(record(2, 11));
            let c = store.append(record(1, 12));
            a.durable().await.unwrap();
            b.durable().await.unwrap();
            c.durable().await.unwrap();
        }
        let (_, got) = Store::open(dir.path()).unwrap();
        assert_eq!(got, vec![record(1, 12), record(2, 11)]);
    }

    #[tokio::test]
    async fn compaction_keeps_only_what_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.append(record(1, 10)).durable().await.unwrap();
        store.append(record(2, 11)).durable().await.unwrap();
        store.compact(vec![record(2, 11)]).durable().await.unwrap();
        store.append(record(3, 12)).durable().await.unwrap();
        drop(store);
        let (_, got) = Store::open(dir.path()).unwrap();
        assert_eq!(got, vec![record(2, 11), record(3, 12)]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_dropped_and_damage_elsewhere_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        store.append(record(1, 10)).durable().await.unwrap();
        store.append(record(2, 11)).durable().await.unwrap();
        drop(store);
        let wal = dir.path().join(WAL);
        let full = fs::read_to_string(&wal).unwrap();
        // Crash mid-write: half a line at the end.
        fs::write(
            &wal,
            format!("{full}{}", &encode_line(&record(3, 12))[..20]),
        )
        .unwrap();
        let (store, got) = Store::open(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        // Writing after recovery appends to clean lines.
        store.append(record(4, 13)).durable().await.unwrap();
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
    fn generations_always_grow() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_generation(dir.path(), 1_000).unwrap(), 1_000);
        assert_eq!(
            next_generation(dir.path(), 500).unwrap(),
            1_001,
            "clock went back"
        );
        assert_eq!(next_generation(dir.path(), 5_000).unwrap(), 5_000);
    }

    #[test]
    fn atomic_write_sets_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write_atomic_mode(&p, b"secret", Some(0o600)).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&p).unwrap(), b"secret");
    }
}
