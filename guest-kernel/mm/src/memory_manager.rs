//! MemoryManager: the kernel's own RegionTree and page tables, the frame allocator, the heap's
//! backing, and the set of user AddressSpaces the host operates on. One MemoryManager serves
//! every CPU; each runs operations through its own [`Cpu`] (see [`crate::sync`] for the locks
//! and their order, and [`crate::shootdown`] for who flushes what).

use crate::address_space::AddressSpace;
use crate::cpu::Cpu;
use crate::frame_allocator::FrameAllocator;
use crate::hardware::{Carried, Frames, Hardware};
use crate::kernel_access::{kernel_access, KernelAccess};
use crate::lock_order::LockOrder;
use crate::machine::Machine;
use crate::page_directory::PageDirectory;
use crate::seeded_bugs::{Bug, SeededBugs};
use crate::shootdown::{CpuTable, FlushRequest, FlushScope};
use crate::sync::{Gate, Lock, LockClass};
use crate::user_access::{touch, Touch, TRAMPOLINE_CODE};
use crate::vmobject::VMObject;
use crate::{MmError, PhysicalFrame};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::marker::PhantomData;
use shared_mm::abi::{
    FrameRecord, FrameRefs, FrameUse, Op, OpResult, SpaceRecord, Status, KERNEL_SPACE,
    KERNEL_SPACE_BASE, MAX_SPACES,
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

/// One address space as every CPU reaches it.
pub type SpaceHandle = Arc<Lock<AddressSpace>>;

/// A live space in the table: its handle, and its CR3 (fixed for its life), which the reports
/// after every batch list without locking the space.
struct SpaceEntry {
    cr3: u64,
    space: SpaceHandle,
}

/// The live address spaces, by id.
struct SpaceTable {
    map: BTreeMap<u32, SpaceEntry>,
    next_id: u32,
    /// Bumped at every create and destroy: of two lists of the live spaces, the one with the
    /// higher generation is the later.
    generation: u64,
}

pub struct MemoryManager<M> {
    /// Fixed after init (the kernel's regions are placed at boot only), but a tree's reads use
    /// cells of its own: a space lock of its own, never held with another.
    kernel_tree: Lock<RegionTree<VMObject>>,
    kernel_directory: PageDirectory,
    trampoline: PhysicalFrame,
    /// The 2 MiB blocks backing the kernel heap.
    heap_blocks: Vec<PhysicalFrame>,
    /// Every operation passes as a reader; an exec touch, which patches the page it executes
    /// for its stay in ring 3, as the writer. Only with several CPUs (the boot info's count):
    /// one CPU runs one operation at a time anyway.
    exec: Option<Gate>,
    spaces: Lock<SpaceTable>,
    frames: Lock<Frames>,
    rng: Lock<SplitMix64>,
    cpus: CpuTable,
    order: Arc<LockOrder>,
    bugs: SeededBugs,
    /// The machine type every CPU's [`Cpu`] has (each CPU owns its machine).
    _machine: PhantomData<fn(M)>,
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
    /// Brings up the kernel VM on `cpu` (the first CPU): reserves the direct map, the kernel
    /// image and the kmalloc range (all unbacked), switches from the boot tables at `boot_pml4`
    /// to the kernel's own, and maps [`heap_size`] bytes of heap at the start of the kmalloc
    /// range with 2 MiB pages. Returns the MM and the heap's range, for the kernel's allocator.
    pub fn init(
        info: &BootInfo,
        boot_pml4: PhysicalFrame,
        cpu: &mut Cpu<M>,
        bugs: SeededBugs,
    ) -> Result<(Self, VirtualRange), MmError> {
        let frames = Lock::new(
            LockClass::Frames,
            Frames::new(FrameAllocator::new(info, bugs)),
        );
        let cpus = CpuTable::default();
        let (kernel_tree, kmalloc) = kernel_tree(info)?;
        let mut carried = Carried::default();
        let mut hw = Hardware::new(cpu, &frames, &cpus, bugs, &mut carried);
        // Every PML4 slot a kernel region spans gets its PDPT now; kernel regions are only
        // placed at boot, so the kernel half of the PML4 never changes once spaces exist.
        let kernel_slots = kernel_tree
            .iter()
            .filter_map(|r| r.range())
            .flat_map(|r| pml4_index(r.base().get())..=pml4_index(r.last().get()));
        let mut kernel_directory = PageDirectory::new_kernel(boot_pml4, kernel_slots, &mut hw)?;
        hw.machine().activate(&kernel_directory);
        cpus.set_loaded(hw.cpu.index(), kernel_directory.cr3());
        let heap_size = heap_size(info.ram_size);
        let heap_blocks = map_heap(
            &mut kernel_directory,
            kmalloc.base().get(),
            heap_size,
            &mut hw,
        )?;
        let trampoline = hw.zeroed_frame()?;
        hw.machine().write_frame(trampoline, 0, &TRAMPOLINE_CODE);
        hw.finish(None);
        let heap = VirtualRange::new(kmalloc.base(), heap_size)
            .map_err(|e| MmError::Tree(RegionTreeError::from(e)))?;
        let mm = MemoryManager {
            kernel_tree: Lock::new(LockClass::Space, kernel_tree),
            kernel_directory,
            trampoline,
            heap_blocks,
            exec: (info.cpu_count > 1).then(|| Gate::new(LockClass::Exec)),
            spaces: Lock::new(
                LockClass::Spaces,
                SpaceTable {
                    map: BTreeMap::new(),
                    next_id: 1,
                    generation: 0,
                },
            ),
            frames,
            rng: Lock::new(LockClass::Rng, SplitMix64::new(info.random_seed)),
            cpus,
            order: Arc::clone(cpu.order()),
            bugs,
            _machine: PhantomData,
        };
        Ok((mm, heap))
    }

    /// CPU `index` joining the MM, on `machine`; it loads the kernel's tables. Call on that CPU.
    pub fn cpu(&self, index: u32, machine: M) -> Cpu<M> {
        let mut cpu = Cpu::sharing(index, machine, Arc::clone(&self.order));
        cpu.machine.activate(&self.kernel_directory);
        self.cpus.set_loaded(index, self.kernel_directory.cr3());
        cpu
    }

    /// Runs `f` on the kernel's region tree.
    pub fn kernel_tree<R>(
        &self,
        cpu: &mut Cpu<M>,
        f: impl FnOnce(&RegionTree<VMObject>) -> R,
    ) -> R {
        self.kernel_tree.with(cpu, |tree, _| f(tree))
    }

    pub fn kernel_cr3(&self) -> u64 {
        self.kernel_directory.cr3()
    }

    /// The seeded bugs planted.
    pub fn bugs(&self) -> SeededBugs {
        self.bugs
    }

    /// What every CPU has loaded.
    pub fn cpu_table(&self) -> &CpuTable {
        &self.cpus
    }

    /// Frames free now.
    pub fn free_frames(&self, cpu: &mut Cpu<M>) -> usize {
        self.frames.with(cpu, |f, _| f.allocator.free_count())
    }

    /// This operation's view of the machine on `cpu`, carrying what it owes in `carried`.
    fn hardware<'a>(&'a self, cpu: &'a mut Cpu<M>, carried: &'a mut Carried) -> Hardware<'a, M> {
        Hardware::new(cpu, &self.frames, &self.cpus, self.bugs, carried)
    }

    /// The live space `id`.
    fn lookup(&self, cpu: &mut Cpu<M>, id: u32) -> Result<SpaceHandle, MmError> {
        self.spaces
            .with(cpu, |table, _| {
                table.map.get(&id).map(|e| Arc::clone(&e.space))
            })
            .ok_or(MmError::NoSuchSpace)
    }

    /// Runs `f` on `space`, locked, with its page tables loaded on this CPU (so a flush hits
    /// its TLB entries), then sends the shootdown `f` owes the other CPUs and frees what it took
    /// out. A space destroyed meanwhile is no space.
    pub(crate) fn locked<T>(
        &self,
        cpu: &mut Cpu<M>,
        space: &SpaceHandle,
        f: impl FnOnce(&mut AddressSpace, &mut Hardware<'_, M>) -> Result<T, MmError>,
    ) -> Result<T, MmError> {
        space.with(cpu, |space, cpu| {
            if space.dead {
                return Err(MmError::NoSuchSpace);
            }
            let mut carried = Carried::default();
            let mut hw = self.hardware(cpu, &mut carried);
            self.activate(space, &mut hw);
            let result = f(space, &mut hw);
            hw.finish(Some(space));
            result
        })
    }

    /// [`MemoryManager::locked`] on the live space `id`.
    fn with_space<T>(
        &self,
        cpu: &mut Cpu<M>,
        id: u32,
        f: impl FnOnce(&mut AddressSpace, &mut Hardware<'_, M>) -> Result<T, MmError>,
    ) -> Result<T, MmError> {
        let space = self.lookup(cpu, id)?;
        self.locked(cpu, &space, f)
    }

    /// Loads the tables of `space` on this CPU (unless they are loaded), which joins its set.
    fn activate(&self, space: &mut AddressSpace, hw: &mut Hardware<'_, M>) {
        let me = hw.cpu.index();
        if self.cpus.loaded(me) != space.cr3() {
            hw.machine().activate(space.directory());
            self.cpus.set_loaded(me, space.cr3());
        }
        space.cpus = space.cpus.with(me);
    }

    /// Runs `f` on space `id` as it is (not loaded, no shootdown): for views and exports.
    pub fn inspect_space<R>(
        &self,
        cpu: &mut Cpu<M>,
        id: u32,
        f: impl FnOnce(&AddressSpace, &mut Hardware<'_, M>) -> R,
    ) -> Option<R> {
        let space = self.lookup(cpu, id).ok()?;
        space.with(cpu, |space, cpu| {
            if space.dead {
                return None;
            }
            let mut carried = Carried::default();
            let mut hw = self.hardware(cpu, &mut carried);
            let result = f(space, &mut hw);
            hw.finish(None);
            Some(result)
        })
    }

    /// A new, empty space, not yet in the table (its id comes when it joins).
    fn new_space(&self, cpu: &mut Cpu<M>) -> Result<AddressSpace, MmError> {
        if self.spaces.with(cpu, |table, _| table.map.len()) >= MAX_SPACES {
            return Err(MmError::Tree(RegionTreeError::NoSpace));
        }
        let mut carried = Carried::default();
        let mut hw = self.hardware(cpu, &mut carried);
        let space = AddressSpace::new(
            0,
            &self.kernel_directory,
            self.trampoline,
            self.bugs,
            &mut hw,
        );
        hw.finish(None);
        space
    }

    /// Puts `space` in the table with the next id, unless the table filled up meanwhile (then
    /// the space is destroyed).
    fn add_space(&self, cpu: &mut Cpu<M>, space: AddressSpace) -> Result<u32, MmError> {
        let cr3 = space.cr3();
        let mut handle = Arc::new(Lock::new(LockClass::Space, space));
        let added = self.spaces.with(cpu, |table, _| {
            if table.map.len() >= MAX_SPACES {
                return None;
            }
            let id = table.next_id;
            let new = Arc::get_mut(&mut handle).expect("a new space has one handle");
            new.get_mut().set_id(id);
            table.next_id += 1;
            table.generation += 1;
            let space = Arc::clone(&handle);
            table.map.insert(id, SpaceEntry { cr3, space });
            Some(id)
        });
        if added.is_none() {
            let mut carried = Carried::default();
            let mut hw = self.hardware(cpu, &mut carried);
            let Some(mut space) = Arc::into_inner(handle).map(Lock::into_inner) else {
                unreachable!("a space left out of the table has one handle")
            };
            space.destroy(&mut hw);
            hw.finish(Some(&mut space));
        }
        added.ok_or(MmError::Tree(RegionTreeError::NoSpace))
    }

    fn create_space(&self, cpu: &mut Cpu<M>) -> Result<u32, MmError> {
        let space = self.new_space(cpu)?;
        self.add_space(cpu, space)
    }

    /// Forks `parent`: prepare (the child's empty space, which may run out of frames), then
    /// commit (the regions copied, private memory write-protected in the parent on every CPU).
    /// The child joins the table after the parent's lock is released (one space lock at a
    /// time).
    fn fork_space(&self, cpu: &mut Cpu<M>, parent: u32) -> Result<u32, MmError> {
        let parent = self.lookup(cpu, parent)?;
        let mut child = self.new_space(cpu)?;
        let forked = self.locked(cpu, &parent, |parent, hw| {
            parent.fork_into(&mut child, hw);
            Ok(())
        });
        if let Err(e) = forked {
            let mut carried = Carried::default();
            let mut hw = self.hardware(cpu, &mut carried);
            child.destroy(&mut hw);
            hw.finish(Some(&mut child));
            return Err(e);
        }
        self.add_space(cpu, child)
    }

    /// Takes space `id` out of the table, then destroys it: this CPU loads the kernel's tables
    /// if it has the space's loaded, and the shootdown makes every other CPU that does too.
    fn destroy_space(&self, cpu: &mut Cpu<M>, id: u32) -> Result<(), MmError> {
        let entry = self
            .spaces
            .with(cpu, |table, _| {
                let entry = table.map.remove(&id)?;
                table.generation += 1;
                Some(entry)
            })
            .ok_or(MmError::NoSuchSpace)?;
        entry.space.with(cpu, |space, cpu| {
            let mut carried = Carried::default();
            let mut hw = self.hardware(cpu, &mut carried);
            let me = hw.cpu.index();
            let switch_away = !self.bugs.has(Bug::DestroyActiveSpace);
            if switch_away && self.cpus.loaded(me) == space.cr3() {
                hw.machine().activate(&self.kernel_directory);
                self.cpus.set_loaded(me, self.kernel_directory.cr3());
            }
            space.destroy(&mut hw);
            hw.finish(Some(space));
        });
        Ok(())
    }

    /// Runs one operation from the host on `cpu` (all but `Snapshot` and `Frames`, which the
    /// host's transport serves with [`MemoryManager::export`] and the frame reports).
    pub fn execute(&self, cpu: &mut Cpu<M>, op: Op) -> OpResult {
        let previous = cpu.enter_path(op.name());
        // Only the seeded bug-shootdown-misses-lazy looks at what a CPU runs.
        let running = self.bugs.has(Bug::ShootdownMissesLazy);
        if running {
            self.cpus.set_running(cpu.index(), op.space().unwrap_or(0));
        }
        let result = match (&self.exec, op) {
            (None, _) => self.run(cpu, op),
            (Some(gate), Op::TouchExec { .. }) => gate.exclusive(cpu, |cpu| self.run(cpu, op)),
            (Some(gate), _) => gate.shared(cpu, |cpu| self.run(cpu, op)),
        };
        if running {
            self.cpus.set_running(cpu.index(), 0);
        }
        cpu.enter_path(previous);
        result
    }

    fn run(&self, cpu: &mut Cpu<M>, op: Op) -> OpResult {
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
        let id = |r: Result<u32, MmError>| match r {
            Ok(id) => OpResult {
                value: id as u64,
                ..OpResult::ok()
            },
            Err(e) => OpResult::error(e.into()),
        };
        match op {
            Op::CreateSpace => id(self.create_space(cpu)),
            Op::DestroySpace { space } => done(self.destroy_space(cpu, space)),
            Op::Fork { space } => id(self.fork_space(cpu, space)),
            Op::MapAnywhere {
                space,
                size,
                align,
                access,
            } => {
                placed(self.with_space(cpu, space, |s, hw| s.map_anywhere(size, align, access, hw)))
            }
            Op::MapFixed {
                space,
                addr,
                size,
                access,
            } => placed(self.with_space(cpu, space, |s, hw| s.map_fixed(addr, size, access, hw))),
            Op::MapRandomized {
                space,
                size,
                align,
                access,
            } => placed(self.with_space(cpu, space, |s, hw| {
                s.map_randomized(size, align, access, &self.rng, hw)
            })),
            Op::Unmap { space, addr, size } => {
                done(self.with_space(cpu, space, |s, hw| s.unmap(addr, size, hw)))
            }
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => done(self.with_space(cpu, space, |s, hw| s.protect(addr, size, access, hw))),
            Op::TouchRead { space, addr } => self.touch(cpu, space, addr, Touch::Read),
            Op::TouchWrite { space, addr, value } => {
                self.touch(cpu, space, addr, Touch::Write(value))
            }
            Op::TouchExec { space, addr } => self.touch(cpu, space, addr, Touch::Execute),
            Op::KernelRead { space, addr } => {
                self.kernel_access(cpu, space, addr, KernelAccess::Read)
            }
            Op::Populate { space, addr, size } => {
                let populated =
                    self.with_space(cpu, space, |s, hw| s.populate_range(addr, size, hw));
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
                self.kernel_access(cpu, space, addr, KernelAccess::Write(value))
            }
            Op::CheckTree { space } => self.check_tree(cpu, space),
            Op::Snapshot { .. } | Op::Frames { .. } => OpResult::error(Status::BadOp),
        }
    }

    /// Runs `request`, which CPU `sender` sent, on CPU `cpu` (the caller) with its `machine`:
    /// what a shootdown IPI's handler does. A CPU that no longer has the request's directory
    /// loaded has nothing to flush (its CR3 load did). Takes no lock.
    pub fn serve_shootdown(&self, machine: &mut M, cpu: u32, sender: u32, request: &FlushRequest) {
        if self.cpus.loaded(cpu) == request.directory().0 {
            match request.scope() {
                FlushScope::Pages(_) => {
                    for &page in request.listed() {
                        machine.flush_page(page);
                    }
                }
                FlushScope::All => machine.flush_all(),
                FlushScope::Destroy => {
                    machine.activate(&self.kernel_directory);
                    self.cpus.set_loaded(cpu, self.kernel_directory.cr3());
                }
            }
        }
        machine.shootdown_served(sender);
    }

    /// Runs the region tree's own invariant check on the tree of `space` (or the kernel's):
    /// `value` 0 when it holds, else the broken invariant's code, with `addr` what it names.
    fn check_tree(&self, cpu: &mut Cpu<M>, space: u32) -> OpResult {
        let checked = match space {
            KERNEL_SPACE => Some(self.kernel_tree(cpu, |tree| tree.check_invariants())),
            _ => self.inspect_space(cpu, space, |s, _| s.tree().check_invariants()),
        };
        match checked {
            None => OpResult::error(Status::NoSuchSpace),
            Some(Ok(())) => OpResult::ok(),
            Some(Err(broken)) => OpResult {
                addr: broken.address(),
                value: broken.code(),
                ..OpResult::ok()
            },
        }
    }

    fn kernel_access(
        &self,
        cpu: &mut Cpu<M>,
        space: u32,
        addr: u64,
        kind: KernelAccess,
    ) -> OpResult {
        self.with_space(cpu, space, |s, hw| Ok(kernel_access(s, addr, kind, hw)))
            .unwrap_or_else(|e| OpResult::error(e.into()))
    }

    fn touch(&self, cpu: &mut Cpu<M>, space: u32, addr: u64, kind: Touch) -> OpResult {
        match self.lookup(cpu, space) {
            Ok(space) => touch(self, cpu, &space, addr, kind),
            Err(e) => OpResult::error(e.into()),
        }
    }

    /// One record per live address space, in id order, and the table's generation (see
    /// `SpaceTable`: with several CPUs reporting, the host keeps the latest list).
    pub fn space_records(&self, cpu: &mut Cpu<M>) -> (Vec<SpaceRecord>, u64) {
        self.spaces.with(cpu, |table, _| {
            let records = table
                .map
                .iter()
                .map(|(&space, entry)| SpaceRecord {
                    space,
                    cr3: entry.cr3,
                })
                .collect();
            (records, table.generation)
        })
    }

    /// Every data frame more than one object holds, with its count, in frame order.
    pub fn shared_frames(&self, cpu: &mut Cpu<M>) -> Vec<FrameRefs> {
        self.frames.with(cpu, |f, _| f.refs.shared().collect())
    }

    /// The allocator's allocated frames, as bitmap words (frame 0 first).
    pub fn allocated_frames(&self, cpu: &mut Cpu<M>) -> Vec<u64> {
        let words = self
            .frames
            .with(cpu, |f, _| f.allocator.allocated_words().collect());
        scanned(cpu, words)
    }

    /// The frames `space` owns ([`KERNEL_SPACE`]: the kernel's tables, heap and trampoline),
    /// or `None` if no such space is alive.
    pub fn owned_frames(&self, cpu: &mut Cpu<M>, space: u32) -> Option<Vec<FrameRecord>> {
        if space != KERNEL_SPACE {
            let owned = self.inspect_space(cpu, space, |s, hw| s.owned_frames(hw))?;
            return Some(scanned(cpu, owned));
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
}

/// The items of a frame scan, with a step of [`Machine::progress`] for every [`SCAN_STEP`].
fn scanned<M: Machine, T>(cpu: &mut Cpu<M>, items: Vec<T>) -> Vec<T> {
    for _ in items.chunks(SCAN_STEP) {
        cpu.machine.progress();
    }
    items
}

/// Maps `size` bytes of heap at `base` in the kernel's `directory` with 2 MiB pages: a handful
/// of entries instead of thousands of 4 KiB ones (guest code is slow to run on an emulating
/// hypervisor, so boot stays short). Returns the blocks.
fn map_heap<M: Machine>(
    directory: &mut PageDirectory,
    base: u64,
    size: u64,
    hw: &mut Hardware<'_, M>,
) -> Result<Vec<PhysicalFrame>, MmError> {
    let flags = PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let mut blocks = Vec::new();
    for offset in (0..size).step_by(TWO_MIB as usize) {
        let block = hw.frames(|f, cpu| f.allocate_2m(&mut cpu.machine))?;
        blocks.push(block);
        directory.map_2m(base + offset, block, flags, hw)?;
    }
    Ok(blocks)
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
