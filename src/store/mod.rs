//! Durable storage of the registry entries this peer holds: those it accepted
//! and those it holds from other peers, so a restart, or a restart of every
//! peer at once, loses nothing. A write-ahead log with group commit,
//! compacted into an atomically written snapshot.
//!
//! Why a log: at thousands of writes a second rewriting the whole registry
//! per request is out of the question. One fsync covers every write that
//! arrived while the previous one ran (group commit).

mod files;
mod log;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

pub use files::{next_generation, write_atomic, write_atomic_mode};
pub use log::{parse_line as parse_wal_line, parse_snapshot};

use crate::registry::{Entry, Key, Origin};
use writer::{Job, Writer};

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
    #[error(
        "{path} has format version {found}, this lbmesh reads versions 1 to {}",
        log::FORMAT_VERSION
    )]
    Version { path: PathBuf, found: u32 },
    #[error("the write did not reach the disk: {0}")]
    Failed(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

/// One persisted fact: the latest entry of `key` from `origin`, or that it
/// is forgotten (`entry` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Key,
    /// The peer incarnation that accepted the write; `None` for this peer's
    /// own writes, which a restart carries over to its next incarnation.
    pub origin: Option<Origin>,
    pub entry: Option<Entry>,
}

impl Record {
    /// This peer's own entry.
    pub fn own(key: Key, entry: Entry) -> Self {
        Record {
            key,
            origin: None,
            entry: Some(entry),
        }
    }

    /// An entry held from another peer (`None`: forget it).
    pub fn held(key: Key, origin: Origin, entry: Option<Entry>) -> Self {
        Record {
            key,
            origin: Some(origin),
            entry,
        }
    }
}

/// Whether the last write reached the disk; shared with the writer thread.
#[derive(Debug, Default)]
pub struct Health {
    failure: std::sync::Mutex<Option<String>>,
    failing: std::sync::atomic::AtomicBool,
}

impl Health {
    fn ok(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("writes reach the disk again");
        }
    }

    fn failed(&self, why: &str) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
        self.failing.store(true, Ordering::Relaxed);
    }
}

/// The handle the rest of the daemon writes through. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::UnboundedSender<Job>,
    health: Arc<Health>,
    log_records: Arc<AtomicU64>,
    dir: PathBuf,
    /// In-memory stores (simulations) keep records here and answer at once.
    memory: Option<MemoryDisk>,
}

/// The "disk" of an in-memory store: survives a simulated restart of the
/// peer that holds it, and is lost when the simulation wipes it. Keyed like
/// the files: by key and origin (`None`: the peer's own).
pub type MemoryDisk =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(Key, Option<Origin>), Entry>>>;

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

    /// A write that needed no I/O.
    pub fn done() -> Pending {
        let (done, rx) = oneshot::channel();
        let _ = done.send(Ok(()));
        Pending(rx)
    }
}

fn records_of(entries: std::collections::BTreeMap<(Key, Option<Origin>), Entry>) -> Vec<Record> {
    entries
        .into_iter()
        .map(|((key, origin), entry)| Record {
            key,
            origin,
            entry: Some(entry),
        })
        .collect()
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, returning what it holds.
    /// The writer runs on its own thread: fsync blocks, and must not stall the runtime.
    pub fn open(dir: &Path) -> Result<(Store, Vec<Record>), StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let recovered = log::recover(dir)?;
        let log_path = dir.join(log::log_name(recovered.epoch));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let health = Arc::new(Health::default());
        let log_records = Arc::new(AtomicU64::new(recovered.log_records));
        let writer = Writer {
            dir: dir.to_owned(),
            log: file,
            epoch: recovered.epoch,
            good_len: recovered.log_len,
            torn: false,
            log_records: log_records.clone(),
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name("lbmesh-store".into())
            .spawn(move || writer.run(rx))
            .map_err(io(dir))?;
        Ok((
            Store {
                tx,
                health,
                log_records,
                dir: dir.to_owned(),
                memory: None,
            },
            records_of(recovered.entries),
        ))
    }

    /// A store that keeps its records in `disk` and acknowledges at once,
    /// with no thread and no I/O: deterministic, for simulations.
    pub fn memory(disk: MemoryDisk) -> (Store, Vec<Record>) {
        let records = records_of(disk.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let (tx, _) = mpsc::unbounded_channel();
        (
            Store {
                tx,
                health: Arc::default(),
                log_records: Arc::default(),
                dir: PathBuf::from("(memory)"),
                memory: Some(disk),
            },
            records,
        )
    }

    /// Queues records, written in the order queued. Own writes are queued
    /// while holding the registry lock, so the log order is the order the
    /// writes were accepted in; await the result after releasing it.
    pub fn append(&self, records: Vec<Record>) -> Pending {
        if records.is_empty() {
            return Pending::done();
        }
        if let Some(disk) = &self.memory {
            let mut disk = disk.lock().unwrap_or_else(|p| p.into_inner());
            for r in records {
                match r.entry {
                    Some(e) => disk.insert((r.key, r.origin), e),
                    None => disk.remove(&(r.key, r.origin)),
                };
            }
            return Pending::done();
        }
        self.send(|done| Job::Append(records, done))
    }

    /// Replaces everything on disk with `records` (what still matters).
    pub fn compact(&self, records: Vec<Record>) -> Pending {
        if let Some(disk) = &self.memory {
            *disk.lock().unwrap_or_else(|p| p.into_inner()) = records
                .into_iter()
                .filter_map(|r| Some(((r.key, r.origin), r.entry?)))
                .collect();
            return Pending::done();
        }
        self.send(|done| Job::Compact(records, done))
    }

    fn send(&self, job: impl FnOnce(writer::Done) -> Job) -> Pending {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job(done)) {
            let (Job::Append(_, done) | Job::Compact(_, done)) = job;
            let _ = done.send(Err("storage thread stopped".into()));
        }
        Pending(rx)
    }

    /// Whether the last write failed (a full disk, an I/O error). Not sticky:
    /// the next successful write clears it.
    pub fn is_failed(&self) -> bool {
        self.health.failing.load(Ordering::Relaxed)
    }

    /// Why the last write failed, while it is failing.
    pub fn failure(&self) -> Option<String> {
        self.health
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Records in the log since the last compaction.
    pub fn wal_records(&self) -> u64 {
        self.log_records.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
