//! What one MM operation works with: the CPU it runs on, the physical frames every CPU shares
//! (allocator, reference counts, object ids, behind the `frames` lock), and what it must flush
//! on the other CPUs and free after them ([`Gather`]).

use crate::address_space::AddressSpace;
use crate::cpu::Cpu;
use crate::frame_allocator::FrameAllocator;
use crate::frame_refs::ReferenceCounts;
use crate::machine::Machine;
use crate::seeded_bugs::{Bug, SeededBugs};
use crate::shootdown::{CpuTable, Gather};
use crate::sync::Lock;
use crate::vmobject::VMObject;
use crate::{MmError, PhysicalFrame, FRAME_SIZE};
use alloc::vec::Vec;
use shared_mm::smp::CpuSet;

/// The physical frames every CPU allocates from, behind one lock.
pub struct Frames {
    pub allocator: FrameAllocator,
    /// How many VMObjects hold each data frame.
    pub refs: ReferenceCounts,
    /// The id the next shared object gets.
    next_object: u64,
}

impl Frames {
    pub fn new(allocator: FrameAllocator) -> Self {
        Frames {
            allocator,
            refs: ReferenceCounts::default(),
            next_object: 1,
        }
    }

    /// Returns `frame` to the allocator and tells the machine, under the lock: the trace then
    /// records the free before any CPU can be handed the frame again. Freeing a frame that is
    /// not allocated is an MM bug, and panics.
    fn free<M: Machine>(&mut self, frame: PhysicalFrame, machine: &mut M) {
        if self.allocator.free(frame).is_err() {
            panic!("frame {:#x} freed but not allocated", frame.0);
        }
        machine.frame_freed(frame);
    }

    /// A free frame, as it is; the machine hears of it (under the lock) before anything
    /// writes it.
    fn allocate<M: Machine>(&mut self, machine: &mut M) -> Result<PhysicalFrame, MmError> {
        let frame = self.allocator.allocate()?;
        machine.frame_allocated(frame, FRAME_SIZE);
        Ok(frame)
    }

    /// A free 2 MiB block of frames, as it is; the machine hears of it first.
    pub(crate) fn allocate_2m<M: Machine>(
        &mut self,
        machine: &mut M,
    ) -> Result<PhysicalFrame, MmError> {
        let block = self.allocator.allocate_2m()?;
        machine.frame_allocated(block, 512 * FRAME_SIZE);
        Ok(block)
    }

    /// Drops one reference to the data frame `frame`, and frees it if that was the last;
    /// returns whether it did.
    pub(crate) fn release<M: Machine>(&mut self, frame: PhysicalFrame, machine: &mut M) -> bool {
        let last = self.refs.drop_one(frame);
        if last {
            self.free(frame, machine);
        }
        last
    }
}

/// What an operation carries from one lock's closure into the next: the work it owes the
/// other CPUs, and the frames it reserved. It lives in the caller's frame; every `Hardware`
/// of the operation refers to it (nothing is moved as locks nest: guest code runs emulated).
#[derive(Default)]
pub struct Carried {
    gather: Gather,
    pool: Vec<PhysicalFrame>,
}

impl Carried {
    /// Nothing to flush elsewhere, free or give back.
    fn is_empty(&self) -> bool {
        self.gather.is_empty() && self.pool.is_empty()
    }
}

/// One operation's view of the machine: its CPU, the shared frames and CPU table, and what it
/// owes the other CPUs' TLBs.
pub struct Hardware<'a, M> {
    pub cpu: &'a mut Cpu<M>,
    frames: &'a Lock<Frames>,
    pub(crate) cpus: &'a CpuTable,
    pub(crate) bugs: SeededBugs,
    /// What it owes the other CPUs, and the frames an all-or-nothing operation took up front
    /// (handed out before the allocator's).
    carried: &'a mut Carried,
}

impl<'a, M: Machine> Hardware<'a, M> {
    pub fn new(
        cpu: &'a mut Cpu<M>,
        frames: &'a Lock<Frames>,
        cpus: &'a CpuTable,
        bugs: SeededBugs,
        carried: &'a mut Carried,
    ) -> Self {
        Hardware {
            cpu,
            frames,
            cpus,
            bugs,
            carried,
        }
    }

    /// Runs `f` with `lock` held, on this operation's `Hardware` as seen inside the lock.
    #[track_caller]
    pub fn under<T, R>(
        &mut self,
        lock: &Lock<T>,
        f: impl FnOnce(&mut T, &mut Hardware<'_, M>) -> R,
    ) -> R {
        let (frames, cpus, bugs) = (self.frames, self.cpus, self.bugs);
        let carried = &mut *self.carried;
        lock.with(self.cpu, |state, cpu| {
            let mut inner = Hardware {
                cpu,
                frames,
                cpus,
                bugs,
                carried,
            };
            f(state, &mut inner)
        })
    }

    pub fn machine(&mut self) -> &mut M {
        &mut self.cpu.machine
    }

    /// The machine, shared (for reads of the page tables).
    pub fn machine_ref(&self) -> &M {
        &self.cpu.machine
    }

    /// Runs `f` on the shared frames, with their lock held.
    #[track_caller]
    pub fn frames<R>(&mut self, f: impl FnOnce(&mut Frames, &mut Cpu<M>) -> R) -> R {
        self.frames.with(self.cpu, f)
    }

    /// A fresh id for a shared object (never 0).
    #[track_caller]
    pub fn new_object_id(&mut self) -> u64 {
        self.frames(|f, _| {
            let id = f.next_object;
            f.next_object += 1;
            id
        })
    }

    /// How many objects hold the data frame `frame`.
    #[track_caller]
    pub fn ref_count(&mut self, frame: PhysicalFrame) -> u32 {
        self.frames(|f, _| f.refs.count(frame))
    }

    /// Frames free in the allocator now.
    #[track_caller]
    pub fn free_count(&mut self) -> usize {
        self.frames(|f, _| f.allocator.free_count())
    }

    /// Takes `count` frames for this operation alone, or none (`OutOfFrames`): what an
    /// all-or-nothing operation checks before its first change, since another CPU may take
    /// frames meanwhile. Unused ones go back when the operation ends. Each frame is a step of
    /// [`Machine::progress`].
    #[track_caller]
    pub fn reserve(&mut self, count: usize) -> Result<(), MmError> {
        let pool = &mut self.carried.pool;
        self.frames.with(self.cpu, |f, cpu| {
            if f.allocator.free_count() < count {
                return Err(MmError::OutOfFrames);
            }
            for _ in 0..count {
                pool.push(f.allocate(&mut cpu.machine)?);
                // A large populate reserves thousands of frames here before it zeroes one.
                cpu.machine.progress();
            }
            Ok(())
        })?;
        // Handed out lowest first, as the allocator would.
        self.carried.pool.reverse();
        Ok(())
    }

    /// A frame (its contents are whatever it held).
    #[track_caller]
    pub fn allocate(&mut self) -> Result<PhysicalFrame, MmError> {
        match self.carried.pool.pop() {
            Some(frame) => Ok(frame),
            None => self.frames(|f, cpu| f.allocate(&mut cpu.machine)),
        }
    }

    /// A frame, zeroed. Zeroing is the slow part of a long populate: each frame is a step of
    /// [`Machine::progress`].
    #[track_caller]
    pub fn zeroed_frame(&mut self) -> Result<PhysicalFrame, MmError> {
        let frame = self.allocate()?;
        self.machine().zero_frame(frame);
        self.machine().progress();
        Ok(frame)
    }

    /// Gives `frame` back to the allocator now. Each frame is a step of
    /// [`Machine::progress`] (destroying a large space frees many).
    #[track_caller]
    pub fn free_frame(&mut self, frame: PhysicalFrame) {
        self.frames(|f, cpu| f.free(frame, &mut cpu.machine));
        self.machine().progress();
    }

    /// Drops one reference to the data frame `frame` now, and frees it if that was the last.
    #[track_caller]
    pub fn release_frame(&mut self, frame: PhysicalFrame) {
        let freed = self.frames(|f, cpu| f.release(frame, &mut cpu.machine));
        if freed {
            self.machine().progress();
        }
    }

    /// Flushes `page` of `directory` (loaded here) from this CPU's TLB now, and from every
    /// other CPU's at the operation's end: a translation was downgraded or removed.
    pub fn flush_everywhere(&mut self, directory: PhysicalFrame, page: u64) {
        self.machine().flush_page(page);
        self.carried.gather.flush(directory, page);
    }

    /// Every translation of `directory` goes, on every CPU, for good (it is being destroyed).
    pub fn destroy_everywhere(&mut self, directory: PhysicalFrame) {
        self.carried.gather.destroy(directory);
    }

    /// Drops one reference to `frame` once the other CPUs have flushed.
    pub fn release_after_shootdown(&mut self, frame: PhysicalFrame) {
        self.carried.gather.frames.push(frame);
    }

    /// Lets go of `object` once the other CPUs have flushed.
    pub fn release_object_after_shootdown(&mut self, object: VMObject) {
        self.carried.gather.objects.push(object);
    }

    /// Frees the page table `table` once the other CPUs have flushed.
    pub fn free_table_after_shootdown(&mut self, table: PhysicalFrame) {
        self.carried.gather.tables.push(table);
    }

    /// Ends the operation: the shootdown it owes the other CPUs that may cache `space` (one IPI
    /// round, waiting for every acknowledgement), then what it deferred is freed, and the frames
    /// it reserved and did not use go back.
    pub fn finish(mut self, space: Option<&mut AddressSpace>) {
        if self.carried.is_empty() {
            return;
        }
        if self.bugs.has(Bug::FreeBeforeAck) {
            self.release_deferred(); // Seeded bug: the other CPUs may still cache these.
        }
        if let (Some(space), Some(request)) = (space, self.carried.gather.request.take()) {
            space.downgrades = space.downgrades.wrapping_add(1);
            let targets = self.shootdown_targets(space);
            if !targets.is_empty() && !self.bugs.has(Bug::ShootdownLocalOnly) {
                self.machine().shootdown(targets, &request);
            }
        }
        self.release_deferred();
        while let Some(frame) = self.carried.pool.pop() {
            self.free_frame(frame);
        }
    }

    /// The CPUs other than this one that may cache `space`: its set, less those that loaded
    /// another directory since (they leave the set).
    fn shootdown_targets(&mut self, space: &mut AddressSpace) -> CpuSet {
        let root = space.directory.root().0;
        let me = self.cpu.index();
        let mut targets = CpuSet::EMPTY;
        for cpu in space.cpus.without(me).iter() {
            if self.cpus.loaded(cpu) != root {
                space.cpus = space.cpus.without(cpu);
            } else if !self.bugs.has(Bug::ShootdownMissesLazy)
                || self.cpus.running(cpu) == space.id()
            {
                // Seeded bug otherwise: a CPU idle with the tables loaded is skipped.
                targets = targets.with(cpu);
            }
        }
        targets
    }

    fn release_deferred(&mut self) {
        let frames = core::mem::take(&mut self.carried.gather.frames);
        for frame in frames {
            self.release_frame(frame);
        }
        let objects = core::mem::take(&mut self.carried.gather.objects);
        for object in objects {
            object.release(self);
        }
        let tables = core::mem::take(&mut self.carried.gather.tables);
        for table in tables {
            self.free_frame(table);
        }
    }
}
