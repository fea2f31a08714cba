//! KVM's dirty log handed to a driver that asks for it ([`Driver::wants_written`]): before each
//! batch or round, the frames the guest wrote since the last one (`KVM_GET_DIRTY_LOG` on every
//! memory slot), which the checker uses to re-walk only the page tables that changed. The log
//! is KVM's own: the guest can neither forge nor skip it.
#![forbid(unsafe_code)]

use kvm_ioctls::VmFd;
use mm_driver::driver::{CpuBatch, Driver, DriverError, FramesChunk, SnapshotChunk};
use shared_mm::abi::{Op, OpResult, SpaceRecord};
use shared_mm::boot_info::BootInfo;
use shared_mm::trace::TraceRecord;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PAGE: u64 = 4096;

/// `inner`, with the dirty log of `vm`'s memory (slot `i` is region `i` of the guest's memory,
/// and has `KVM_MEM_LOG_DIRTY_PAGES` set).
pub struct DirtyLogged<'a> {
    pub inner: &'a mut dyn Driver,
    pub vm: &'a VmFd,
}

impl DirtyLogged<'_> {
    /// Hands `inner` the frames written since the last call. A log KVM cannot give is reported
    /// as every frame written (the checker then walks every table again): never fewer.
    fn hand_over(&mut self, mem: &GuestMemoryMmap) {
        let mut frames = Vec::new();
        for (slot, region) in mem.iter().enumerate() {
            let base = region.start_addr().0;
            let pages = region.len().div_ceil(PAGE);
            match self.vm.get_dirty_log(slot as u32, region.len() as usize) {
                Ok(bitmap) => frames.extend(written_frames(base, &bitmap)),
                Err(_) => frames.extend((0..pages).map(|p| base + p * PAGE)),
            }
        }
        self.inner.written(&frames);
    }
}

/// The frames of a slot starting at `base` whose bits are set in `bitmap`, lowest first.
fn written_frames(base: u64, bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(move |(i, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            let bit = (bits != 0).then(|| u64::from(bits.trailing_zeros()))?;
            bits &= bits - 1;
            Some(base + (i as u64 * 64 + bit) * PAGE)
        })
    })
}

impl Driver for DirtyLogged<'_> {
    fn booted(&mut self, info: &BootInfo) {
        self.inner.booted(info)
    }

    fn next_batch(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[OpResult],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<Op>>, DriverError> {
        self.hand_over(mem);
        self.inner.next_batch(mem, results, spaces)
    }

    fn next_round(
        &mut self,
        mem: &GuestMemoryMmap,
        results: &[(u32, Vec<OpResult>)],
        spaces: &[SpaceRecord],
    ) -> Result<Option<Vec<CpuBatch>>, DriverError> {
        self.hand_over(mem);
        self.inner.next_round(mem, results, spaces)
    }

    fn snapshot(
        &mut self,
        mem: &GuestMemoryMmap,
        chunk: SnapshotChunk<'_>,
    ) -> Result<(), DriverError> {
        self.inner.snapshot(mem, chunk)
    }

    fn frames(&mut self, mem: &GuestMemoryMmap, chunk: FramesChunk<'_>) -> Result<(), DriverError> {
        self.inner.frames(mem, chunk)
    }

    fn trace(&mut self, mem: &GuestMemoryMmap, records: &[TraceRecord]) -> Result<(), DriverError> {
        self.inner.trace(mem, records)
    }

    fn wants_written(&self) -> bool {
        true
    }

    fn written(&mut self, frames: &[u64]) {
        self.inner.written(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitmap_names_the_frames_of_its_slot() {
        let bitmap = [0b101, 0, 1 << 63];
        let frames: Vec<u64> = written_frames(0x10_0000, &bitmap).collect();
        let last = 0x10_0000 + (2 * 64 + 63) * PAGE;
        assert_eq!(frames, [0x10_0000, 0x10_2000, last]);
    }
}
