//! The thread that owns the log file: appends records with group commit,
//! compacts, and recovers from a failed write without a restart.
//!
//! A failed write or fsync (a full disk, an I/O error) fails the whole batch
//! and cuts the log back to its last good length, so a later write never
//! lands behind half a line; the next batch tries again. Nothing is sticky:
//! when space returns, writes succeed again.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::files::write_atomic;
use super::log::{encode_line, encode_snapshot, log_name};
use super::{Health, Record};

pub type Done = oneshot::Sender<Result<(), String>>;

pub enum Job {
    Append(Vec<Record>, Done),
    /// Rewrites the snapshot from the given records and starts an empty log.
    Compact(Vec<Record>, Done),
}

/// Most records one fsync covers; the rest wait for the next batch.
const MAX_BATCH: usize = 4096;

pub struct Writer {
    pub dir: PathBuf,
    pub log: File,
    pub epoch: u64,
    /// The log's length after its last good write.
    pub good_len: u64,
    /// Set when a failed write could not be cut back: nothing is appended
    /// until the log is whole again.
    pub torn: bool,
    pub log_records: Arc<AtomicU64>,
    pub health: Arc<Health>,
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut batch: Vec<Done> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut lines = 0u64;
        while let Some(first) = rx.blocking_recv() {
            let mut next = Some(first);
            // Take everything already queued: one write and one fsync for all.
            while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
                match job {
                    Job::Append(records, done) => {
                        for r in &records {
                            encode_line(r, &mut buf);
                        }
                        lines += records.len() as u64;
                        batch.push(done);
                    }
                    Job::Compact(records, done) => {
                        let r = self.flush(&mut buf, &mut lines);
                        finish(&mut batch, &r);
                        let _ = done.send(self.compact(&records));
                    }
                }
                if batch.len() >= MAX_BATCH {
                    break;
                }
            }
            let r = self.flush(&mut buf, &mut lines);
            finish(&mut batch, &r);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(log_name(self.epoch))
    }

    fn flush(&mut self, buf: &mut Vec<u8>, lines: &mut u64) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        let n = std::mem::take(lines);
        let r = self
            .mend()
            .and_then(|()| self.log.write_all(buf))
            .and_then(|()| self.log.sync_data());
        let len = buf.len() as u64;
        buf.clear();
        match r {
            Ok(()) => {
                self.good_len += len;
                self.log_records.fetch_add(n, Ordering::Relaxed);
                self.health.ok();
                Ok(())
            }
            Err(e) => {
                let why = format!("{}: {e}", self.log_path().display());
                tracing::error!(error = %why, "a write to the registry log failed; the writes it carried are refused");
                self.torn = true;
                let _ = self.mend();
                self.health.failed(&why);
                Err(why)
            }
        }
    }

    /// Cuts the log back to its last good length after a failed write.
    fn mend(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.log.set_len(self.good_len)?;
            self.log.sync_data()?;
            self.torn = false;
        }
        Ok(())
    }

    fn compact(&mut self, records: &[Record]) -> Result<(), String> {
        let next = self.epoch + 1;
        let next_path = self.dir.join(log_name(next));
        let r: Result<File, String> = (|| {
            write_atomic(&next_path, b"").map_err(|e| e.to_string())?;
            let log = OpenOptions::new()
                .append(true)
                .open(&next_path)
                .map_err(|e| format!("{}: {e}", next_path.display()))?;
            // The commit point: from here on the snapshot names the new log.
            write_atomic(
                &self.dir.join(super::log::SNAPSHOT),
                &encode_snapshot(records, next),
            )
            .map_err(|e| e.to_string())?;
            Ok(log)
        })();
        crate::memory::bulk_work_done();
        match r {
            Ok(log) => {
                let old = self.log_path();
                self.log = log;
                self.epoch = next;
                self.good_len = 0;
                self.torn = false;
                self.log_records.store(0, Ordering::Relaxed);
                let _ = std::fs::remove_file(old);
                self.health.ok();
                Ok(())
            }
            Err(why) => {
                let _ = std::fs::remove_file(&next_path);
                tracing::error!(error = %why, "compacting the registry log failed; the log is kept as it is");
                self.health.failed(&why);
                Err(why)
            }
        }
    }
}

fn finish(batch: &mut Vec<Done>, r: &Result<(), String>) {
    for done in batch.drain(..) {
        let _ = done.send(r.clone());
    }
}
