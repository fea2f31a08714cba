//! MemoryManager: the kernel's own RegionTree and page tables, the frame allocator, the heap's
//! backing, and the set of user AddressSpaces the host operates on.

use crate::address_space::AddressSpace;
use crate::frame_allocator::FrameAllocator;
use crate::hardware::Hardware;
use crate::kernel_access::{kernel_access, KernelAccess};
use crate::machine::Machine;
use crate::page_directory::PageDirectory;
use crate::seeded_bugs::{Bug, SeededBugs};
use crate::user_access::{touch, Touch, TRAMPOLINE_CODE};
use crate::vmobject::VMObject;
use crate::{MmError, PhysicalFrame};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use shared_mm::abi::{
    FrameRecord, FrameUse, Op, OpResult, Status, KERNEL_SPACE, KERNEL_SPACE_BASE, MAX_SPACES,
};
use shared_mm::address::{VirtualAddress, VirtualRange};
use shared_mm::boot_info::{BootInfo, KERNEL_VIRT_BASE, PHYSMAP_BASE};
use shared_mm::pte::{pml4_index, PageTableFlags};
use shared_mm::region::{Access, Region};
use shared_mm::region_tree::{RegionTree, RegionTreeError, SplitMix64};

const TWO_MIB: u64 = 2 << 20;
/// The least size of the kmalloc reservation in the kernel tree (it grows with the heap).
const MIN_KMALLOC_RANGE: u64 = 64 << 20;
/// Up to this heap size, the heap is 1/8 of RAM; above it, 1/16.
const SMALL_HEAP: u64 = 16 << 20;
/// The heap the guest binary's allocator starts with, in its image (`.bss`), before the kmalloc
/// range is mapped: the frame allocator's bitmap and the first regions live there.
pub const BOOTSTRAP_HEAP: u64 = 1 << 20;
/// Items of a frame scan per step of [`Machine::progress`]: an item costs a few instructions,
/// so a step for each would cost about as much as the scan.
const SCAN_STEP: usize = 1024;

/// The kernel heap [`MemoryManager::init`] maps for `ram_size` bytes of RAM, in whole 2 MiB
/// pages: 1/8 of RAM up to 16 MiB (at 128 MiB of RAM), 16 MiB up to 256 MiB of RAM, and 1/16
/// of RAM above (2 MiB at the smallest supported RAM, 16 MiB at the default 256 MiB, 1 GiB at
/// the largest, 16 GiB). What the MM
/// keeps per frame (the pages of each object, reference counts) grows with RAM, so a fixed
/// heap ran out on a large guest.
pub fn heap_size(ram_size: u64) -> u64 {
    SMALL_HEAP.min(ram_size / 8).max(ram_size / 16) & !(TWO_MIB - 1)
}

/// The kmalloc reservation for `ram_size` bytes of RAM: room for the heap, at least 64 MiB.
fn kmalloc_range(ram_size: u64) -> u64 {
    heap_size(ram_size).max(MIN_KMALLOC_RANGE)
}

pub struct MemoryManager<M> {
    hw: Hardware<M>,
    kernel_tree: RegionTree<VMObject>,
    kernel_directory: PageDirectory,
    trampoline: PhysicalFrame,
    spaces: BTreeMap<u32, AddressSpace>,
    next_space_id: u32,
    rng: SplitMix64,
    /// The directory last activated (reading CR3 is a privileged instruction: costly under
    /// emulation).
    active: PhysicalFrame,
    /// The 2 MiB blocks backing the kernel heap.
    heap_blocks: Vec<PhysicalFrame>,
    pub(crate) bugs: SeededBugs,
}

fn reserve(
    tree: &mut RegionTree<VMObject>,
    name: &'static str,
    access: Access,
    base: u64,
    size: u64,
) -> VirtualRange {
    let region = Box::new(Region::new(name, access, None));
    match tree.place_specifically(region, VirtualAddress::new(base), size) {
        Ok(range) => range,
        Err(e) => panic!("cannot reserve {name} at {base:#x}+{size:#x}: {}", e.kind),
    }
}

/// The kernel's tree: the direct map and the kernel image at their fixed places, and the
/// kmalloc range anywhere (all unbacked). Returns the tree and the kmalloc range.
fn kernel_tree(info: &BootInfo) -> Result<(RegionTree<VMObject>, VirtualRange), MmError> {
    let total = VirtualRange::new(
        VirtualAddress::new(KERNEL_SPACE_BASE),
        0u64.wrapping_sub(KERNEL_SPACE_BASE),
    )
    .expect("the kernel half is a valid range");
    let mut tree = RegionTree::new(total);
    let rw = Access::READ | Access::WRITE;
    reserve(
        &mut tree,
        "physmap",
        rw,
        PHYSMAP_BASE,
        info.ram_size.next_multiple_of(TWO_MIB),
    );
    let image_start = info.kernel_phys_start & !(TWO_MIB - 1);
    let image_end = info.kernel_phys_end.next_multiple_of(TWO_MIB);
    // Code and data share the boot tables' 2 MiB pages, so the window is rwx.
    let rwx = rw | Access::EXECUTE;
    reserve(
        &mut tree,
        "kernel image",
        rwx,
        KERNEL_VIRT_BASE + image_start,
        image_end - image_start,
    );
    let kmalloc = Box::new(Region::new("kmalloc", rw, None));
    let kmalloc = tree
        .place_anywhere(kmalloc, kmalloc_range(info.ram_size), TWO_MIB)
        .map_err(|e| MmError::Tree(e.kind))?;
    Ok((tree, kmalloc))
}

impl<M: Machine> MemoryManager<M> {
    /// Brings up the kernel VM on `machine`: reserves the direct map, the kernel image and the
    /// kmalloc range (all unbacked), switches from the boot tables at `boot_pml4` to the
    /// kernel's own, and maps [`heap_size`] bytes of heap at the start of the kmalloc range
    /// with 2 MiB pages. Returns the MM and the heap's range, for the kernel's allocator.
    pub fn init(
        info: &BootInfo,
        boot_pml4: PhysicalFrame,
        machine: M,
        bugs: SeededBugs,
    ) -> Result<(Self, VirtualRange), MmError> {
        let mut hw = Hardware::new(machine, FrameAllocator::new(info, bugs));
        let (kernel_tree, kmalloc) = kernel_tree(info)?;
        // Every PML4 slot a kernel region spans gets its PDPT now; kernel regions are only
        // placed at boot, so the kernel half of the PML4 never changes once spaces exist.
        let kernel_slots = kernel_tree
            .iter()
            .filter_map(|r| r.range())
            .flat_map(|r| pml4_index(r.base().get())..=pml4_index(r.last().get()));
        let kernel_directory = PageDirectory::new_kernel(boot_pml4, kernel_slots, &mut hw)?;
        hw.machine.activate(&kernel_directory);
        let active = kernel_directory.root();
        let mut mm = MemoryManager {
            hw,
            kernel_tree,
            kernel_directory,
            trampoline: PhysicalFrame(0),
            spaces: BTreeMap::new(),
            next_space_id: 1,
            rng: SplitMix64::new(info.random_seed),
            active,
            heap_blocks: Vec::new(),
            bugs,
        };
        let heap = mm.map_heap(kmalloc.base().get(), heap_size(info.ram_size))?;
        mm.trampoline = mm.hw.zeroed_frame()?;
        mm.hw
            .machine
            .write_frame(mm.trampoline, 0, &TRAMPOLINE_CODE);
        Ok((mm, heap))
    }

    /// Maps `size` bytes of heap at `base` with 2 MiB pages: a handful of entries instead of
    /// thousands of 4 KiB ones (guest code is slow to run on an emulating hypervisor, so boot
    /// stays short).
    fn map_heap(&mut self, base: u64, size: u64) -> Result<VirtualRange, MmError> {
        let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        for offset in (0..size).step_by(TWO_MIB as usize) {
            let block = self.hw.block_2m()?;
            self.heap_blocks.push(block);
            self.kernel_directory
                .map_2m(base + offset, block, flags, &mut self.hw)?;
        }
        VirtualRange::new(VirtualAddress::new(base), size)
            .map_err(|e| MmError::Tree(RegionTreeError::from(e)))
    }

    pub fn kernel_tree(&self) -> &RegionTree<VMObject> {
        &self.kernel_tree
    }

    pub fn kernel_cr3(&self) -> u64 {
        self.kernel_directory.cr3()
    }

    pub fn spaces(&self) -> impl Iterator<Item = &AddressSpace> {
        self.spaces.values()
    }

    pub fn space(&self, id: u32) -> Option<&AddressSpace> {
        self.spaces.get(&id)
    }

    pub fn free_frames(&self) -> usize {
        self.hw.frames.free_count()
    }

    /// The machine the MM runs on.
    pub fn machine(&self) -> &M {
        &self.hw.machine
    }

    /// The machine the MM runs on, mutably (for a host that inspects or resets it).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.hw.machine
    }

    /// Runs `f` on space `id` with its page tables active (so a flush hits its TLB entries).
    fn with_space<T>(
        &mut self,
        id: u32,
        f: impl FnOnce(&mut AddressSpace, &mut Hardware<M>, &mut SplitMix64) -> Result<T, MmError>,
    ) -> Result<T, MmError> {
        let space = self.spaces.get_mut(&id).ok_or(MmError::NoSuchSpace)?;
        if self.active != space.directory().root() {
            self.hw.machine.activate(space.directory());
            self.active = space.directory().root();
        }
        f(space, &mut self.hw, &mut self.rng)
    }

    /// A new, empty space with the next id (not yet in the set).
    fn new_space(&mut self) -> Result<AddressSpace, MmError> {
        if self.spaces.len() >= MAX_SPACES {
            return Err(MmError::Tree(RegionTreeError::NoSpace));
        }
        AddressSpace::new(
            self.next_space_id,
            &self.kernel_directory,
            self.trampoline,
            self.bugs,
            &mut self.hw,
        )
    }

    fn create_space(&mut self) -> Result<u32, MmError> {
        let space = self.new_space()?;
        Ok(self.add_space(space))
    }

    fn add_space(&mut self, space: AddressSpace) -> u32 {
        let id = space.id();
        self.next_space_id += 1;
        self.spaces.insert(id, space);
        id
    }

    /// Forks `parent`: prepare (the child's empty space, which may run out of frames), then
    /// commit (the regions copied, private memory write-protected in the parent, active now).
    fn fork_space(&mut self, parent: u32) -> Result<u32, MmError> {
        if !self.spaces.contains_key(&parent) {
            return Err(MmError::NoSuchSpace);
        }
        let mut child = self.new_space()?;
        self.with_space(parent, |parent, hw, _| {
            parent.fork_into(&mut child, hw);
            Ok(())
        })?;
        Ok(self.add_space(child))
    }

    fn destroy_space(&mut self, id: u32) -> Result<(), MmError> {
        let space = self.spaces.remove(&id).ok_or(MmError::NoSuchSpace)?;
        let switch_away = !self.bugs.has(Bug::DestroyActiveSpace);
        if switch_away && self.active == space.directory().root() {
            self.hw.machine.activate(&self.kernel_directory);
            self.active = self.kernel_directory.root();
        }
        space.destroy(&mut self.hw);
        Ok(())
    }

    /// Runs one operation from the host (all but `Snapshot`, which the host's transport serves
    /// with [`crate::export`]).
    pub fn execute(&mut self, op: Op) -> OpResult {
        let placed = |r: Result<VirtualRange, MmError>| match r {
            Ok(range) => OpResult {
                addr: range.base().get(),
                ..OpResult::ok()
            },
            Err(e) => OpResult::error(e.into()),
        };
        let done = |r: Result<(), MmError>| {
            r.map_or_else(|e| OpResult::error(e.into()), |()| OpResult::ok())
        };
        match op {
            Op::CreateSpace => match self.create_space() {
                Ok(id) => OpResult {
                    value: id as u64,
                    ..OpResult::ok()
                },
                Err(e) => OpResult::error(e.into()),
            },
            Op::DestroySpace { space } => done(self.destroy_space(space)),
            Op::Fork { space } => match self.fork_space(space) {
                Ok(id) => OpResult {
                    value: id as u64,
                    ..OpResult::ok()
                },
                Err(e) => OpResult::error(e.into()),
            },
            Op::MapAnywhere {
                space,
                size,
                align,
                access,
            } => placed(self.with_space(space, |s, hw, _| s.map_anywhere(size, align, access, hw))),
            Op::MapFixed {
                space,
                addr,
                size,
                access,
            } => placed(self.with_space(space, |s, hw, _| s.map_fixed(addr, size, access, hw))),
            Op::MapRandomized {
                space,
                size,
                align,
                access,
            } => placed(self.with_space(space, |s, hw, rng| {
                s.map_randomized(size, align, access, rng, hw)
            })),
            Op::Unmap { space, addr, size } => {
                done(self.with_space(space, |s, hw, _| s.unmap(addr, size, hw)))
            }
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => done(self.with_space(space, |s, hw, _| s.protect(addr, size, access, hw))),
            Op::TouchRead { space, addr } => self.touch(space, addr, Touch::Read),
            Op::TouchWrite { space, addr, value } => self.touch(space, addr, Touch::Write(value)),
            Op::TouchExec { space, addr } => self.touch(space, addr, Touch::Execute),
            Op::KernelRead { space, addr } => self.kernel_access(space, addr, KernelAccess::Read),
            Op::Populate { space, addr, size } => {
                let populated = self.with_space(space, |s, hw, _| s.populate_range(addr, size, hw));
                match populated {
                    Ok(None) => OpResult::ok(),
                    Ok(Some(denied)) => OpResult {
                        status: Status::Faulted,
                        fault: shared_mm::abi::FaultKind::SegvAccess,
                        addr: denied,
                        value: 0,
                    },
                    Err(e) => OpResult::error(e.into()),
                }
            }
            Op::KernelWrite { space, addr, value } => {
                self.kernel_access(space, addr, KernelAccess::Write(value))
            }
            Op::CheckTree { space } => self.check_tree(space),
            Op::Snapshot { .. } | Op::Frames { .. } => OpResult::error(Status::BadOp),
        }
    }

    /// Runs the region tree's own invariant check on the tree of `space` (or the kernel's):
    /// `value` 0 when it holds, else the broken invariant's code, with `addr` what it names.
    fn check_tree(&self, space: u32) -> OpResult {
        let tree = if space == KERNEL_SPACE {
            &self.kernel_tree
        } else {
            match self.spaces.get(&space) {
                Some(s) => s.tree(),
                None => return OpResult::error(Status::NoSuchSpace),
            }
        };
        match tree.check_invariants() {
            Ok(()) => OpResult::ok(),
            Err(broken) => OpResult {
                addr: broken.address(),
                value: broken.code(),
                ..OpResult::ok()
            },
        }
    }

    fn kernel_access(&mut self, space: u32, addr: u64, kind: KernelAccess) -> OpResult {
        self.with_space(space, |s, hw, _| Ok(kernel_access(s, addr, kind, hw)))
            .unwrap_or_else(|e| OpResult::error(e.into()))
    }

    /// Every data frame more than one object holds, with its count, in frame order.
    pub fn shared_frames(&self) -> impl Iterator<Item = shared_mm::abi::FrameRefs> + '_ {
        self.hw.refs.shared()
    }

    /// The allocator's allocated frames, as bitmap words (frame 0 first).
    pub fn allocated_frames(&self) -> impl Iterator<Item = u64> + '_ {
        self.scanning(self.hw.frames.allocated_words())
    }

    /// `items` of a frame scan, with a step of [`Machine::progress`] every [`SCAN_STEP`].
    fn scanning<'a, T>(
        &'a self,
        items: impl Iterator<Item = T> + 'a,
    ) -> impl Iterator<Item = T> + 'a {
        items.enumerate().map(|(i, item)| {
            if i.is_multiple_of(SCAN_STEP) {
                self.hw.machine.progress();
            }
            item
        })
    }

    /// The frames `space` owns ([`KERNEL_SPACE`]: the kernel's tables, heap and trampoline),
    /// or `None` if no such space is alive.
    pub fn owned_frames(&self, space: u32) -> Option<Vec<FrameRecord>> {
        if space != KERNEL_SPACE {
            let space = self.spaces.get(&space)?;
            return Some(self.scanning(space.owned_frames()).collect());
        }
        let record = |frame: u64, usage| FrameRecord { frame, usage };
        let tables = self
            .kernel_directory
            .frames()
            .map(|f| record(f.0, FrameUse::Table));
        let heap = self
            .heap_blocks
            .iter()
            .map(|block| record(block.0, FrameUse::HeapBlock));
        let trampoline = core::iter::once(record(self.trampoline.0, FrameUse::Trampoline));
        Some(tables.chain(heap).chain(trampoline).collect())
    }

    fn touch(&mut self, space: u32, addr: u64, kind: Touch) -> OpResult {
        self.with_space(space, |s, hw, _| Ok(touch(s, addr, kind, hw)))
            .unwrap_or_else(|e| OpResult::error(e.into()))
    }
}

#[cfg(test)]
mod heap_tests {
    use super::*;

    #[test]
    fn the_heap_scales_with_ram_and_its_reservation_holds_it() {
        const MIB: u64 = 1 << 20;
        for (ram, heap) in [
            (16 * MIB, 2 * MIB),
            (64 * MIB, 8 * MIB),
            (256 * MIB, 16 * MIB),
            (1024 * MIB, 64 * MIB),
            (16384 * MIB, 1024 * MIB),
        ] {
            assert_eq!(heap_size(ram), heap, "{} MiB of RAM", ram / MIB);
            assert!(kmalloc_range(ram) >= heap && kmalloc_range(ram).is_multiple_of(TWO_MIB));
        }
    }
}
