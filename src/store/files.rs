//! Small files written whole: atomically (temp file, fsync, rename, fsync of
//! the directory), and the generation counter every start bumps.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::{StoreError, io};

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

#[cfg(test)]
mod tests {
    use super::*;

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
