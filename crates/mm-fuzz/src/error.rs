//! Why a fuzz campaign, replay or shrink could not go on. A guest's failure is a finding, not an
//! error: these are setup problems (no KVM, an unusable kernel, a guest that cannot even take
//! its first batch) and the campaign's own files.
#![forbid(unsafe_code)]

use bounded_io::excerpt::path as shown;
use bounded_io::files::FileError;
use mm_driver::RunError;
use std::fmt;
use std::path::PathBuf;

/// Why fuzzing could not go on.
#[derive(Debug)]
pub enum FuzzError {
    /// A guest could not be booted or run (as opposed to failing: that is a finding).
    Run(RunError),
    /// The guest failed before it asked for its first batch of work: nothing was fuzzed, and a
    /// campaign that booted it again would fail the same way forever.
    FailedBeforeFirstBatch(RunError),
    /// A reproducer or corpus file could not be read or written.
    File(FileError),
    /// The directory for reproducers could not be created.
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A fuzz job's thread panicked.
    JobPanicked,
}

impl fmt::Display for FuzzError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FuzzError::Run(e) => write!(f, "{e}"),
            FuzzError::FailedBeforeFirstBatch(e) => {
                write!(f, "the guest failed before its first batch of work: {e}")
            }
            FuzzError::File(e) => write!(f, "{e}"),
            FuzzError::Output { path, source } => {
                write!(f, "cannot write {}: {source}", shown(path))
            }
            FuzzError::JobPanicked => f.write_str("a fuzz job panicked"),
        }
    }
}

impl std::error::Error for FuzzError {}

impl From<RunError> for FuzzError {
    fn from(e: RunError) -> Self {
        FuzzError::Run(e)
    }
}

impl From<FileError> for FuzzError {
    fn from(e: FileError) -> Self {
        FuzzError::File(e)
    }
}
