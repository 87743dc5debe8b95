//! The one durable write of the workspace: a file appears whole, with its folder entry on disk, or
//! not at all. Used for manifests, ingest sidecars, loader state and cache, checkpoints,
//! `shards merge`, sampled PNGs and MP4s.
//!
//! The bytes go to a temporary file in the same folder (`.NAME.PID.tmp`, so concurrent writers of
//! one path never share it), which is fsynced, renamed over `NAME`, and then the folder is fsynced
//! so the rename survives a power cut. On failure the temporary file is removed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A durable write that failed: the file or folder it was about, and the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError { path: path.to_path_buf(), source }
}

/// The temporary name [`write_atomic`] writes `path` under.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes `path` durably from a closure that fills a buffered writer.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>) -> Result<(), WriteError> {
    if path.file_name().is_none() {
        return Err(WriteError { path: path.to_path_buf(), source: io::Error::other("not a file name") });
    }
    let tmp = temp_path(path);
    let written = (|| {
        let mut w = BufWriter::new(File::create(&tmp).map_err(at(&tmp))?);
        fill(&mut w).map_err(at(&tmp))?;
        let f = w.into_inner().map_err(|e| at(&tmp)(e.into_error()))?;
        f.sync_all().map_err(at(&tmp))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    persist(&tmp, path)
}

/// Renames a finished, fsynced temporary file or folder `from` to `to` and fsyncs the folder of
/// `to` (for writers that stream into their own temporary file: shards, MP4s, checkpoints).
/// On failure `from` is removed if it is a file.
pub fn persist(from: &Path, to: &Path) -> Result<(), WriteError> {
    if let Err(e) = std::fs::rename(from, to) {
        if from.is_file() {
            let _ = std::fs::remove_file(from);
        }
        return Err(at(to)(e));
    }
    sync_parent(to)
}

/// Fsyncs an already written file.
pub fn sync_file(path: &Path) -> Result<(), WriteError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(at(path))
}

/// Fsyncs a folder, so the entries created or renamed in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

/// Fsyncs the folder holding `path` (the current folder for a bare name).
pub fn sync_parent(path: &Path) -> Result<(), WriteError> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two, longer");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_removes_the_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.path, temp_path(&p));
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(!temp_path(&p).exists());
    }

    #[test]
    fn errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-folder").join("x");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("missing-folder"), "{err}");
    }
}
