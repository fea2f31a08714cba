//! Reading input files with a size cap (a kernel or a reproducer named `/dev/zero` must not
//! eat the host's memory) and writing outputs atomically (a full disk must not leave a
//! truncated file where a good one was).
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest kernel image `--kernel` reads.
pub const MAX_KERNEL_BYTES: u64 = 64 << 20;

/// Why a file could not be read or written.
#[derive(Debug)]
pub enum FileError {
    /// The file could not be opened, read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is larger than `limit` bytes.
    TooLarge { path: PathBuf, limit: u64 },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            FileError::TooLarge { path, limit } => write!(
                f,
                "{}: larger than the {} MiB this command reads",
                path.display(),
                limit >> 20
            ),
        }
    }
}

impl std::error::Error for FileError {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The bytes of `path`, which must not be larger than `limit`; reading stops at the limit.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same directory, synced and then
/// renamed over it: `path` holds either its old contents or all of the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or("output".into(), |n| n.to_string_lossy());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_endless_file_is_refused_at_the_limit() {
        match read_capped(Path::new("/dev/zero"), 1 << 20) {
            Err(FileError::TooLarge { limit, .. }) => assert_eq!(limit, 1 << 20),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_up_to_the_limit_is_read_whole() {
        let path = scratch("read").join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_capped(&path, 5).unwrap(), b"12345");
        assert!(matches!(
            read_capped(&path, 4),
            Err(FileError::TooLarge { .. })
        ));
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = scratch("write");
        let path = dir.join("map.svg");
        std::fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_file() {
        // Writing into a directory that does not exist fails before anything is replaced.
        let path = scratch("fail").join("missing").join("f");
        assert!(matches!(
            write_atomically(&path, b"x"),
            Err(FileError::Io { .. })
        ));
    }
}
