//! Scenario and reproducer files on disk: read with a size cap (never unbounded), as UTF-8,
//! and parsed, with errors that name the file.

use crate::format::{ParseError, Scenario};
use bounded_io::excerpt::path as shown;
use bounded_io::files::{read_capped, FileError};
use std::fmt;
use std::path::{Path, PathBuf};

/// The largest scenario or reproducer file read: about 270,000 operations, far more than any
/// shrunk reproducer or hand-written scenario holds.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a scenario file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read, is not a regular file, or is larger than [`MAX_FILE_BYTES`].
    File {
        what: &'static str,
        source: FileError,
    },
    NotText {
        path: PathBuf,
        line: usize,
    },
    Parse {
        path: PathBuf,
        source: ParseError,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::File {
                what,
                source: source @ (FileError::Io { .. } | FileError::NotRegular { .. }),
            } => write!(f, "cannot read {what} {source}"),
            LoadError::File {
                source: FileError::TooLarge { path, limit },
                ..
            } => write!(
                f,
                "{}: larger than {} MiB, the limit for scenario and reproducer files",
                shown(path),
                limit >> 20
            ),
            LoadError::NotText { path, line } => {
                write!(f, "{}: line {line}: not UTF-8 text", shown(path))
            }
            LoadError::Parse { path, source } => write!(f, "{}: {source}", shown(path)),
        }
    }
}

/// The message carries each cause's text, so there is no `source()` to print it twice.
impl std::error::Error for LoadError {}

/// Reads `path` as text: only a regular file (a FIFO or a device like /dev/zero is refused
/// before anything is read), and no more than [`MAX_FILE_BYTES`]. `what` names the file in
/// errors ("scenario").
pub fn read_text(path: &Path, what: &'static str) -> Result<String, LoadError> {
    let bytes =
        read_capped(path, MAX_FILE_BYTES).map_err(|source| LoadError::File { what, source })?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        LoadError::NotText {
            path: path.to_path_buf(),
            line: 1 + good.iter().filter(|&&b| b == b'\n').count(),
        }
    })
}

/// Reads and parses the scenario (or reproducer) at `path`.
pub fn load(path: &Path, what: &'static str) -> Result<Scenario, LoadError> {
    let text = read_text(path, what)?;
    Scenario::parse(&text).map_err(|source| LoadError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, contents: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("vmm-scenario-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }

    #[test]
    fn a_file_past_the_limit_is_refused_and_a_device_is_not_read_at_all() {
        // Sparse: 17 MiB long, nothing written.
        let big = scratch("big.repro", b"");
        std::fs::File::options()
            .write(true)
            .open(&big)
            .and_then(|f| f.set_len(MAX_FILE_BYTES + (1 << 20)))
            .expect("grow the scratch file");
        let err = read_text(&big, "reproducer").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: larger than 16 MiB, the limit for scenario and reproducer files",
                big.display()
            )
        );
        let _ = std::fs::remove_file(big);
        let err = read_text(Path::new("/dev/zero"), "reproducer").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read reproducer /dev/zero: a character device, not a regular file"
        );
    }

    #[test]
    fn load_errors_name_the_file() {
        let missing = load(Path::new("/nonexistent/x.scn"), "scenario").unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read scenario /nonexistent/x.scn: "),
            "{missing}"
        );
        let bad = scratch("bad.scn", b"create-space\nunmap space=1\n");
        let err = load(&bad, "scenario").unwrap_err().to_string();
        assert_eq!(err, format!("{}: line 2: unmap needs addr=", bad.display()));
        let binary = scratch("binary.scn", b"create-space\n\xff\xfe\n");
        let err = load(&binary, "scenario").unwrap_err().to_string();
        assert_eq!(err, format!("{}: line 2: not UTF-8 text", binary.display()));
        let good = scratch("good.scn", b"create-space => value 1\n");
        assert_eq!(load(&good, "scenario").expect("loads").steps().count(), 1);
        for path in [bad, binary, good] {
            let _ = std::fs::remove_file(path);
        }
    }
}
