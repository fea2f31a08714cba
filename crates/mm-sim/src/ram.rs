//! Guest RAM handed from one simulated guest to the next on the same thread.
//!
//! A fresh mapping costs the host a page fault for every page the boot, the MM and the
//! operations touch, and on this host that was most of a short replay's time (a shrink runs
//! hundreds). A simulated guest records every page it writes after boot; when it goes, those
//! pages are zeroed and the mapping is kept. The next guest with the same RAM size and kernel
//! boots on it: the boot data is written again in place, and the kernel image is reused only if
//! RAM still holds it byte for byte. So a recycled guest starts from exactly the RAM a fresh one
//! would (`recycled_sim_ram_is_exactly_fresh_ram` in tests/tests/backends.rs checks it against
//! a fresh boot).
#![forbid(unsafe_code)]

use guest_boot::boot_memory::UsedRam;
use std::cell::RefCell;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const PAGE: u64 = 4096;

/// The pages of guest RAM written since boot: one bit per 4 KiB page. When a driver asks, also
/// those written since it last took them (the sim's dirty log, as KVM keeps one).
#[derive(Clone, Debug, Default)]
pub struct WrittenPages {
    bits: Vec<u64>,
    /// Pages of RAM.
    pages: u64,
    /// The dirty log, once switched on.
    log: Option<DirtyLog>,
}

/// Pages written since the log was last taken: a bit per page, and the words that have one set
/// (so taking it costs the pages written, not RAM).
#[derive(Clone, Debug, Default)]
struct DirtyLog {
    bits: Vec<u64>,
    touched: Vec<usize>,
}

impl WrittenPages {
    /// No page written yet, of `ram_size` bytes of RAM.
    pub fn new(ram_size: u64) -> Self {
        let pages = ram_size / PAGE;
        WrittenPages {
            bits: vec![0; pages.div_ceil(64) as usize],
            pages,
            log: None,
        }
    }

    /// Records a write of `len` bytes at guest-physical `addr` (pages past RAM are not kept).
    pub fn mark(&mut self, addr: u64, len: usize) {
        let Some(last) = (len as u64)
            .checked_sub(1)
            .and_then(|l| addr.checked_add(l))
        else {
            return;
        };
        for page in addr / PAGE..=(last / PAGE).min(self.pages.saturating_sub(1)) {
            let (index, bit) = ((page / 64) as usize, 1 << (page % 64));
            if let Some(word) = self.bits.get_mut(index) {
                *word |= bit;
            }
            if let Some(log) = &mut self.log {
                if log.bits[index] == 0 {
                    log.touched.push(index);
                }
                log.bits[index] |= bit;
            }
        }
    }

    /// Starts the dirty log (from now on, every write is also kept until [`Self::take_log`]).
    pub fn start_log(&mut self) {
        self.log.get_or_insert_with(|| DirtyLog {
            bits: vec![0; self.bits.len()],
            touched: Vec::new(),
        });
    }

    /// The pages written since the last call (or since [`Self::start_log`]), lowest first;
    /// nothing if the log is off.
    pub fn take_log(&mut self) -> Vec<u64> {
        let Some(log) = &mut self.log else {
            return Vec::new();
        };
        log.touched.sort_unstable();
        let mut pages = Vec::new();
        for index in log.touched.drain(..) {
            let mut bits = std::mem::take(&mut log.bits[index]);
            while bits != 0 {
                pages.push((index as u64 * 64 + u64::from(bits.trailing_zeros())) * PAGE);
                bits &= bits - 1;
            }
        }
        pages
    }

    /// The written pages' addresses, lowest first.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.bits.iter().enumerate().flat_map(|(i, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                let bit = (bits != 0).then(|| bits.trailing_zeros())?;
                bits &= bits - 1;
                Some((i as u64 * 64 + u64::from(bit)) * PAGE)
            })
        })
    }
}

thread_local! {
    /// The RAM the last simulated guest of this thread left, zeroed where it wrote.
    static SPARE: RefCell<Option<UsedRam>> = const { RefCell::new(None) };
}

/// Zeroes the `written` pages of `used` and keeps it for this thread's next guest, unless a
/// write hit the kernel image (then RAM no longer holds it as loaded).
pub fn recycle(used: UsedRam, written: &WrittenPages) {
    if written.pages().any(|page| used.in_ram.overlaps(page)) {
        return;
    }
    let zeros = [0u8; PAGE as usize];
    for page in written.pages() {
        if used.mem.write_slice(&zeros, GuestAddress(page)).is_err() {
            return; // Not all of it could be reset: it is not kept.
        }
    }
    SPARE.with(|spare| *spare.borrow_mut() = Some(used));
}

/// This thread's spare RAM, if there is one of `size` bytes (a spare of another size is
/// dropped: a thread runs guests of one size at a time).
pub fn take(size: u64) -> Option<UsedRam> {
    let used = SPARE.with(|spare| spare.borrow_mut().take())?;
    (used.mem.last_addr().0.checked_add(1) == Some(size)).then_some(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn marks_every_page_a_write_touches_and_nothing_past_ram() {
        let mut written = WrittenPages::new(16 * PAGE);
        written.mark(0x0ff8, 16); // straddles pages 0 and 1
        written.mark(0x5000, 1);
        written.mark(0x7000, 0); // an empty write touches nothing
        written.mark(15 * PAGE, 2 * PAGE as usize); // runs past the end of RAM
        written.mark(u64::MAX - 2, 8); // wraps: ignored
        let pages: Vec<u64> = written.pages().collect();
        assert_eq!(pages, [0x0, 0x1000, 0x5000, 15 * PAGE]);
    }

    #[test]
    fn the_dirty_log_holds_what_was_written_since_it_was_last_taken() {
        let mut written = WrittenPages::new(256 * PAGE);
        written.mark(0x3000, 8);
        assert!(written.take_log().is_empty(), "off until started");
        written.start_log();
        written.mark(0x9_0000, 8);
        written.mark(0x0ff8, 16);
        written.mark(0x9_0010, 8);
        assert_eq!(written.take_log(), [0x0, 0x1000, 0x9_0000]);
        assert!(written.take_log().is_empty());
        written.mark(0x3000, 1);
        assert_eq!(written.take_log(), [0x3000]);
        let since_boot: Vec<u64> = written.pages().collect();
        assert_eq!(since_boot, [0x0, 0x1000, 0x3000, 0x9_0000]);
    }

    fn used(pages: u64) -> UsedRam {
        use guest_boot::loader::{KernelInRam, LoadedKernel};
        UsedRam {
            mem: GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), (pages * PAGE) as usize)])
                .expect("small RAM"),
            kernel: LoadedKernel {
                entry: 0,
                phys_start: 0,
                phys_end: 0,
            },
            in_ram: KernelInRam::default(),
        }
    }

    #[test]
    fn spare_ram_is_zeroed_where_written_and_handed_out_once_for_its_size() {
        let ram = used(64);
        let mut written = WrittenPages::new(64 * PAGE);
        ram.mem
            .write_obj(0xdead_beef_u64, GuestAddress(0x3008))
            .expect("in RAM");
        written.mark(0x3008, 8);
        recycle(ram, &written);
        let ram = take(64 * PAGE).expect("the spare of this size");
        let word: u64 = ram.mem.read_obj(GuestAddress(0x3008)).expect("in RAM");
        assert_eq!(word, 0);
        assert!(take(64 * PAGE).is_none(), "handed out once");
        recycle(ram, &WrittenPages::default());
        assert!(take(32 * PAGE).is_none(), "a spare of another size");
        assert!(take(64 * PAGE).is_none(), "is dropped");
    }
}
