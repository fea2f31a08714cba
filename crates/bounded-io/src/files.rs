//! Input files read safely and output files written atomically.
//!
//! An input is opened non-blocking and read only if it is a regular file, up to a size cap: a
//! FIFO would wait for a writer forever, a device like /dev/zero never ends, and other
//! processes may plant either in a shared directory. An output is written to a temporary file
//! with an unpredictable name, created with `O_EXCL` in the target's directory (so a symlink
//! planted there cannot redirect the write), synced, then renamed over the target: a full disk
//! leaves the old file, not a truncated one. A target that exists and is not a regular file is
//! never renamed over: a character device or FIFO the user named (`--svg /dev/stdout`) is written
//! in place, anything else is refused.
#![forbid(unsafe_code)]

use crate::excerpt::path as shown;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// The file exists and is not a regular file (`kind` says what it is): an input is read,
    /// and an output replaced, only if it is one.
    NotRegular { path: PathBuf, kind: &'static str },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io { path, source } => write!(f, "{}: {source}", shown(path)),
            FileError::TooLarge { path, limit } => write!(
                f,
                "{}: larger than the {} MiB this command reads",
                shown(path),
                limit >> 20
            ),
            FileError::NotRegular { path, kind } => {
                write!(f, "{}: {kind}, not a regular file", shown(path))
            }
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

/// What a file that is not a regular one is, in words.
fn kind_of(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// `path` opened for reading if it is a regular file: opened non-blocking (a FIFO does not wait
/// for a writer) and refused, before anything is read, unless it is one.
pub fn open_regular(path: &Path) -> Result<File, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    Ok(file)
}

/// The bytes of `path`, which must be a regular file ([`open_regular`]) of at most `limit`
/// bytes; reading stops at the limit.
pub fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path)?;
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

/// Where an output's path came from, which decides what happens to a target that exists and is
/// not a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// The user named it (`--svg FILE`): a character device or FIFO there is written in place.
    Named,
    /// The program chose it inside a directory (a reproducer in `--out`, a corpus entry): only a
    /// regular file there may be replaced.
    Chosen,
}

/// Writes `bytes` to `path`: atomically, through a temporary file renamed over it, when it is a
/// regular file or does not exist (a symlink there is replaced, never followed); in place into
/// a character device or FIFO the user named; otherwise not at all.
pub fn write_output(path: &Path, bytes: &[u8], naming: Naming) -> Result<(), FileError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => write_atomically(path, bytes),
        Ok(meta) => {
            let kind = meta.file_type();
            if naming == Naming::Named && (kind.is_char_device() || kind.is_fifo()) {
                write_in_place(path, bytes)
            } else {
                Err(FileError::NotRegular {
                    path: path.to_path_buf(),
                    kind: kind_of(&meta),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomically(path, bytes),
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes into the device or FIFO at `path` as it is (a FIFO waits for its reader, as any
/// writer into one does).
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

/// The start of a temporary file's name for `path`: a dot (readers of a shared directory skip
/// such files), then at most 100 bytes of the target's name.
fn temp_prefix(path: &Path) -> Vec<u8> {
    let name = path.file_name().unwrap_or(OsStr::new("output")).as_bytes();
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(&name[..name.len().min(100)]);
    prefix.push(b'.');
    prefix
}

/// Writes `bytes` to `path` through a temporary file in the same directory: created with
/// `O_EXCL` under an unpredictable name (the permissions a new file gets), synced, then renamed
/// over `path`, which holds either its old contents or all of the new ones. The temporary file
/// is removed if anything fails.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let mut temp = tempfile::Builder::new()
        .prefix(OsStr::from_bytes(&prefix))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(io(path))?;
    temp.write_all(bytes).map_err(io(path))?;
    temp.as_file().sync_all().map_err(io(path))?;
    temp.persist(path)
        .map(drop::<File>)
        .map_err(|e| io(path)(e.error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    #[test]
    fn a_device_or_directory_is_refused_as_input() {
        for (path, kind) in [("/dev/zero", "a character device"), ("/", "a directory")] {
            match read_capped(Path::new(path), 1 << 20) {
                Err(FileError::NotRegular { kind: k, .. }) => assert_eq!(k, kind),
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
        let fifo = scratch("fifo").join("c.scn");
        mkfifo(&fifo);
        let err = read_capped(&fifo, 1 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: a FIFO, not a regular file", fifo.display())
        );
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
        write_output(&path, b"new contents", Naming::Named).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_atomic_write_keeps_the_old_file() {
        // Writing into a directory that does not exist fails before anything is replaced.
        let path = scratch("fail").join("missing").join("f");
        assert!(matches!(
            write_output(&path, b"x", Naming::Named),
            Err(FileError::Io { .. })
        ));
    }

    /// The old `.NAME.PID.tmp` temporary was predictable: a symlink planted there made the
    /// write truncate the link's target.
    #[test]
    fn symlinks_planted_at_predictable_names_are_neither_followed_nor_written() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let path = dir.join("map.svg");
        let old_temp = dir.join(format!(".map.svg.{}.tmp", std::process::id()));
        symlink(&victim, &old_temp).unwrap();
        write_output(&path, b"<svg/>", Naming::Named).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(&path).unwrap(), b"<svg/>");
        // A symlink at the target itself is replaced by the new file, its target left alone.
        let link = dir.join("link.svg");
        symlink(&victim, &link).unwrap();
        write_output(&link, b"<svg/>", Naming::Chosen).unwrap();
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_named_character_device_is_written_in_place_never_renamed_over() {
        write_output(Path::new("/dev/null"), b"x", Naming::Named).unwrap();
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
        let full = write_output(Path::new("/dev/full"), b"x", Naming::Named).unwrap_err();
        assert!(
            full.to_string().starts_with("/dev/full: No space left"),
            "{full}"
        );
        assert!(std::fs::metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn special_targets_the_program_chose_or_that_are_not_devices_are_refused() {
        let dir = scratch("special");
        let fifo = dir.join("repro-seed1-1.txt");
        mkfifo(&fifo);
        let refused = write_output(&fifo, b"x", Naming::Chosen).unwrap_err();
        assert!(matches!(
            refused,
            FileError::NotRegular { kind: "a FIFO", .. }
        ));
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let refused = write_output(&sub, b"x", Naming::Named).unwrap_err();
        assert_eq!(
            refused.to_string(),
            format!("{}: a directory, not a regular file", sub.display())
        );
        assert!(sub.is_dir() && std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn a_named_fifo_is_written_in_place_for_its_reader() {
        let fifo = scratch("named-fifo").join("out.svg");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_output(&fifo, b"<svg/>", Naming::Named).unwrap();
        assert_eq!(reader.join().unwrap(), b"<svg/>");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
