//! `vmm convert-corpus`: a fuzz corpus from one format into the other, `vmm fuzz --corpus`
//! entries into inputs of the libFuzzer target `mm_ops` or back, with what was done on stderr.
#![forbid(unsafe_code)]

use mm_fuzz::libfuzzer::convert::{to_entries, to_inputs, Converted};
use std::path::Path;
use vmm::VmmError;

/// Converts the corpus in `from` into `to`: libFuzzer inputs if `to_libfuzzer`, else entries.
/// Exits 0; a file that could not be read is reported and skipped.
pub fn convert(to_libfuzzer: bool, from: &Path, to: &Path) -> anyhow::Result<u32> {
    let (converted, what) = if to_libfuzzer {
        (to_inputs(from, to), "libFuzzer inputs")
    } else {
        (to_entries(from, to), "corpus entries")
    };
    let Converted {
        read,
        written,
        skipped,
    } = converted.map_err(VmmError::File)?;
    for (path, why) in &skipped {
        eprintln!("vmm convert-corpus: skipped {}: {why}", path.display());
    }
    eprintln!(
        "vmm convert-corpus: read {read} file(s) of {}, wrote {written} {what} into {}",
        from.display(),
        to.display()
    );
    Ok(0)
}
