//! The hypercall ABI: doorbell ports, the mailbox header, and the MM operation and result records.
//!
//! A hypercall is: the guest writes a [`MailboxHeader`] and its payload at the start of the
//! mailbox, then writes one byte to [`HYPERCALL_PORT`]. The VMM handles the exit, writes the
//! response header and payload into the same mailbox, and resumes the guest. Each CPU has its
//! own mailbox ([`crate::smp::mailbox_addr`]): the VMM serves a call in the mailbox of the CPU
//! that rang, so calls of different CPUs are in flight at the same time.
#![forbid(unsafe_code)]

use crate::wire::{Reader, Writer};

/// Port-I/O doorbell for hypercalls.
pub const HYPERCALL_PORT: u16 = 0x510;
/// Port-I/O exit the VMM ignores: the floor a hypercall round trip is measured against.
pub const RAW_EXIT_PORT: u16 = 0x511;
/// Bytes of the mailbox taken by the header; the payload follows.
pub const HEADER_SIZE: usize = 64;
/// Most operations the host sends in one batch.
pub const MAX_BATCH: usize = 1024;
/// The `space` value that names the kernel's own address space in [`Op::Snapshot`].
pub const KERNEL_SPACE: u32 = u32::MAX;
/// Most address spaces alive at once; `CreateSpace` beyond it fails with `NoSpace`.
pub const MAX_SPACES: usize = 256;
/// Lowest address a user region may occupy (page 0 stays unmapped to catch null accesses).
pub const USER_SPACE_BASE: u64 = 0x1000;
/// End (exclusive) of the range user regions may occupy.
pub const USER_SPACE_END: u64 = 0x7FFF_FFFF_F000;
/// The user-touch trampoline page: mapped user read+execute in every address space, just above
/// the user region range and outside every region tree (like Linux's vsyscall page).
pub const USER_TRAMPOLINE: u64 = USER_SPACE_END;
/// The trampoline page's code: at offset 0 `mov rax, [rdi]; int3` (a load), at offset 8
/// `mov [rdi], rsi; mov rax, [rdi]; int3` (a store and a load). The rest of the page is zero.
pub const TRAMPOLINE_CODE: [u8; 15] = [
    0x48, 0x8b, 0x07, 0xcc, 0x90, 0x90, 0x90, 0x90, // load
    0x48, 0x89, 0x37, 0x48, 0x8b, 0x07, 0xcc, // store, load
];
/// Lowest address of the kernel's region tree (the canonical upper half).
pub const KERNEL_SPACE_BASE: u64 = 0xFFFF_8000_0000_0000;

/// `args[0]` flag on a [`Hypercall::Batch`] response: no more work. CPU 0 exits 0; any other
/// CPU idles, serving IPIs, until the VM ends.
pub const BATCH_DONE: u64 = 1;
/// `args[0]` flag on a [`Hypercall::Batch`] response: no batch for this CPU yet (other CPUs
/// still run theirs). It halts, taking interrupts, until the host sends it
/// [`WORK_VECTOR`](crate::smp::WORK_VECTOR), then asks again (with no results).
pub const BATCH_WAIT: u64 = 2;

/// The hypercall numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Payload: UTF-8 text to print.
    Log = 1,
    /// Payload: file bytes (`args[0]` long) then the message; `args[1]` line, `args[2]` column.
    Panic = 2,
    /// `args[0]`: exit status.
    Exit = 3,
    /// Request payload: results of the previous batch (`count` records), then `args[0]`
    /// [`SpaceRecord`]s, the live spaces as of generation `args[1]` (which grows at each create
    /// and destroy: with several CPUs reporting, the highest is the latest list). Response
    /// payload: `count` encoded [`Op`]s; `args[0]` may hold [`BATCH_DONE`] or [`BATCH_WAIT`].
    Batch = 4,
    /// Payload: `count` [`RegionRecord`]s of space `args[0]` starting at index `args[1]`;
    /// `args[2]` total regions, `args[3]` the space's CR3.
    Snapshot = 5,
    /// No payload; the host replies at once. Its round trip against a [`RAW_EXIT_PORT`] exit is
    /// the cost of the hypercall path itself.
    Ping = 6,
    /// Payload: `count` little-endian u64 words of the frame report of space `args[0]` (or
    /// [`KERNEL_SPACE`]) starting at word `args[1]` of `args[2]`; `args[3]` is the part
    /// ([`FRAMES_ALLOCATED`], [`FRAMES_OWNED`] or [`FRAMES_SHARED`]).
    Frames = 7,
    /// CPU 0 only, with several CPUs: `args[0]` its APIC id. The host starts every other CPU
    /// and replies once each has made its [`Hypercall::CpuOnline`].
    StartCpus = 8,
    /// Every CPU but 0, once, over its own mailbox: it is up (GDT, IDT, per-CPU area, x2APIC)
    /// and serves IPIs. `args[0]` its index, `args[1]` its APIC id.
    CpuOnline = 9,
    /// CPU 0 only: the IPI round trip it measured. `args[0]` pings sent to every CPU of the set
    /// `args[3]` (a [`CpuSet`](crate::smp::CpuSet) mask), `args[1]` the median round trip and
    /// `args[2]` the median cost of reading the TSC, both in TSC cycles. Payload: `count`
    /// little-endian u64 words, the pings each CPU served, CPU 0 first.
    IpiRoundTrip = 10,
    /// The lock-order checker's finding, and the end of this CPU's work. Payload: the finding
    /// as UTF-8 text; `args[0]` and `args[1]` the lock classes taken in opposite orders (see
    /// the guest MM's `LockClass`). The host ends the VM with it.
    LockOrder = 11,
}

/// `args[3]` of a [`Hypercall::Frames`]: the words are the frame allocator's bitmap of allocated
/// frames (bit set: handed out), frame 0 first (sent for [`KERNEL_SPACE`] only).
pub const FRAMES_ALLOCATED: u64 = 0;
/// `args[3]` of a [`Hypercall::Frames`]: the words are [`FrameRecord`]s of the frames the space
/// owns.
pub const FRAMES_OWNED: u64 = 1;
/// `args[3]` of a [`Hypercall::Frames`]: the words are [`FrameRefs`] of every frame referenced
/// more than once (copy-on-write after a fork), in frame order (sent for [`KERNEL_SPACE`] only).
pub const FRAMES_SHARED: u64 = 2;

/// A frame and how many VMObjects reference it, as one word: the frame's address with the count
/// in the low 12 bits (a count is at most [`MAX_SPACES`], one object per space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRefs {
    pub frame: u64,
    pub refs: u32,
}

impl FrameRefs {
    pub fn to_word(self) -> u64 {
        self.frame | u64::from(self.refs.min(0xfff))
    }

    /// `None` for a count of 0 or 1 (such frames are not listed).
    pub fn from_word(word: u64) -> Option<FrameRefs> {
        let refs = (word & 0xfff) as u32;
        (refs >= 2).then_some(FrameRefs {
            frame: word & !0xfff,
            refs,
        })
    }
}

/// What an owner uses a frame for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameUse {
    /// A user page's data.
    Data = 0,
    /// A page table (or PML4).
    Table = 1,
    /// The kernel heap.
    Heap = 2,
    /// The user trampoline page.
    Trampoline = 3,
    /// A 2 MiB block of the kernel heap: the record's frame and the 511 after it.
    HeapBlock = 4,
    /// A page of a shared VMObject (`map-shared`): every space mapping the object lists it.
    SharedData = 5,
}

/// One owned frame as a word: its address, with its [`FrameUse`] in the low bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameRecord {
    pub frame: u64,
    pub usage: FrameUse,
}

impl FrameRecord {
    pub fn to_word(self) -> u64 {
        self.frame | self.usage as u64
    }

    /// `None` for a word with other low bits set or an unknown use.
    pub fn from_word(word: u64) -> Option<FrameRecord> {
        let usage = match word & 0xfff {
            0 => FrameUse::Data,
            1 => FrameUse::Table,
            2 => FrameUse::Heap,
            3 => FrameUse::Trampoline,
            4 => FrameUse::HeapBlock,
            5 => FrameUse::SharedData,
            _ => return None,
        };
        Some(FrameRecord {
            frame: word & !0xfff,
            usage,
        })
    }
}

impl Hypercall {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Hypercall::Log,
            2 => Hypercall::Panic,
            3 => Hypercall::Exit,
            4 => Hypercall::Batch,
            5 => Hypercall::Snapshot,
            6 => Hypercall::Ping,
            7 => Hypercall::Frames,
            8 => Hypercall::StartCpus,
            9 => Hypercall::CpuOnline,
            10 => Hypercall::IpiRoundTrip,
            11 => Hypercall::LockOrder,
            _ => return None,
        })
    }
}

/// The first [`HEADER_SIZE`] bytes of the mailbox, in both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MailboxHeader {
    pub call: u32,
    /// 0 on success in a response; nonzero when the host rejected the request.
    pub status: u32,
    /// Payload length in bytes.
    pub len: u32,
    /// Record count in the payload.
    pub count: u32,
    pub args: [u64; 4],
}

impl MailboxHeader {
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        w.put_u32(self.call);
        w.put_u32(self.status);
        w.put_u32(self.len);
        w.put_u32(self.count);
        for a in self.args {
            w.put_u64(a);
        }
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        let mut h = MailboxHeader {
            call: r.u32()?,
            status: r.u32()?,
            len: r.u32()?,
            count: r.u32()?,
            args: [0; 4],
        };
        for a in h.args.iter_mut() {
            *a = r.u64()?;
        }
        Some(h)
    }
}

/// Encoded size of one [`Op`].
pub const OP_RECORD_SIZE: usize = 48;
/// Encoded size of one [`OpResult`].
pub const RESULT_RECORD_SIZE: usize = 32;
/// Encoded size of one [`SpaceRecord`].
pub const SPACE_RECORD_SIZE: usize = 16;
/// Encoded size of one [`RegionRecord`].
pub const REGION_RECORD_SIZE: usize = 56;
/// Bytes of a region name carried in a [`RegionRecord`].
pub const REGION_NAME_LEN: usize = 24;

/// Access bits as they travel in records (same bits as `region::Access`). On x86 a page that
/// can be written or executed can also be read, so the guest adds READ to any mask with WRITE
/// or EXECUTE; USER makes the region reachable from ring 3.
pub mod access_bits {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const EXECUTE: u32 = 4;
    pub const USER: u32 = 8;
    /// Shared anonymous memory (`MAP_SHARED`): a fork shares it instead of copying it. Only a
    /// map takes it; protect keeps a region's sharing.
    pub const SHARED: u32 = 16;
}

/// One memory-management operation the host asks the guest to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Result `value`: the new space's id.
    CreateSpace,
    DestroySpace {
        space: u32,
    },
    /// Like `fork`: a new space with `space`'s regions, private memory copy-on-write in both,
    /// shared memory shared. Result `value`: the new space's id.
    Fork {
        space: u32,
    },
    /// Result `addr`: where the region was placed.
    MapAnywhere {
        space: u32,
        size: u64,
        align: u64,
        access: u32,
    },
    MapFixed {
        space: u32,
        addr: u64,
        size: u64,
        access: u32,
    },
    MapRandomized {
        space: u32,
        size: u64,
        align: u64,
        access: u32,
    },
    Unmap {
        space: u32,
        addr: u64,
        size: u64,
    },
    Protect {
        space: u32,
        addr: u64,
        size: u64,
        access: u32,
    },
    /// Ring-3 load of the u64 at `addr`; result `value`: what was read.
    TouchRead {
        space: u32,
        addr: u64,
    },
    /// Ring-3 store of `value` at `addr`, then a load; result `value`: what was read back.
    TouchWrite {
        space: u32,
        addr: u64,
        value: u64,
    },
    /// Ring-3 call to `addr` (the kernel first writes a `ret` there if the page is writable from
    /// the kernel's side; otherwise executes whatever is there).
    TouchExec {
        space: u32,
        addr: u64,
    },
    /// Export the region tree of `space` (or [`KERNEL_SPACE`]) through [`Hypercall::Snapshot`].
    Snapshot {
        space: u32,
    },
    /// Export the frames `space` owns (for [`KERNEL_SPACE`]: the kernel's, and the allocator's
    /// bitmap first) through [`Hypercall::Frames`]. Result `value`: the owned frames sent.
    Frames {
        space: u32,
    },
    /// Read the u64 at user address `addr` of `space` from the kernel, the way
    /// `access_process_vm` does: the range must be user memory of a region that allows reading,
    /// and a page not present yet is faulted in. Result `value`: what was read.
    KernelRead {
        space: u32,
        addr: u64,
    },
    /// Write `value` at user address `addr` of `space` from the kernel, likewise (the region
    /// must allow writing), then read it back. Result `value`: what was read back.
    KernelWrite {
        space: u32,
        addr: u64,
        value: u64,
    },
    /// Fault in every page of `[addr, addr + size)` for writing, like
    /// `madvise(MADV_POPULATE_WRITE)`: the range must be mapped, by regions that allow user
    /// writes. All or nothing: without frames for every page it fails with `OutOfMemory` and
    /// changes nothing.
    Populate {
        space: u32,
        addr: u64,
        size: u64,
    },
    /// Run the region tree's own `check_invariants` on the tree of `space` (or
    /// [`KERNEL_SPACE`]), gap-index summaries included. Result `value`: 0 if it holds, else the
    /// [`InvariantViolation::code`](crate::region_tree::InvariantViolation::code) of the first
    /// broken invariant, with `addr` the address it names.
    CheckTree {
        space: u32,
    },
}

impl Op {
    /// The operation's name in the scenario format (and in the guest's lock-order findings).
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateSpace => "create-space",
            Op::DestroySpace { .. } => "destroy-space",
            Op::Fork { .. } => "fork",
            Op::MapAnywhere { .. } => "map-anywhere",
            Op::MapFixed { access, .. } if access & access_bits::SHARED != 0 => "map-shared",
            Op::MapFixed { .. } => "map-fixed",
            Op::MapRandomized { .. } => "map-randomized",
            Op::Unmap { .. } => "unmap",
            Op::Protect { .. } => "protect",
            Op::TouchRead { .. } => "touch-read",
            Op::TouchWrite { .. } => "touch-write",
            Op::TouchExec { .. } => "touch-exec",
            Op::Snapshot { .. } => "snapshot",
            Op::Frames { .. } => "frames",
            Op::KernelRead { .. } => "kernel-read",
            Op::KernelWrite { .. } => "kernel-write",
            Op::Populate { .. } => "populate",
            Op::CheckTree { .. } => "check-tree",
        }
    }

    /// The address space the operation names (`None` for `CreateSpace`, which names none).
    pub fn space(&self) -> Option<u32> {
        match *self {
            Op::CreateSpace => None,
            Op::DestroySpace { space }
            | Op::Fork { space }
            | Op::MapAnywhere { space, .. }
            | Op::MapFixed { space, .. }
            | Op::MapRandomized { space, .. }
            | Op::Unmap { space, .. }
            | Op::Protect { space, .. }
            | Op::TouchRead { space, .. }
            | Op::TouchWrite { space, .. }
            | Op::TouchExec { space, .. }
            | Op::Snapshot { space }
            | Op::Frames { space }
            | Op::KernelRead { space, .. }
            | Op::KernelWrite { space, .. }
            | Op::Populate { space, .. }
            | Op::CheckTree { space } => Some(space),
        }
    }

    /// The user address the operation names, for those that name one (placements chosen by
    /// the MM name none).
    pub fn addr_mut(&mut self) -> Option<&mut u64> {
        match self {
            Op::MapFixed { addr, .. }
            | Op::Unmap { addr, .. }
            | Op::Protect { addr, .. }
            | Op::TouchRead { addr, .. }
            | Op::TouchWrite { addr, .. }
            | Op::TouchExec { addr, .. }
            | Op::KernelRead { addr, .. }
            | Op::KernelWrite { addr, .. }
            | Op::Populate { addr, .. } => Some(addr),
            Op::CreateSpace
            | Op::DestroySpace { .. }
            | Op::Fork { .. }
            | Op::MapAnywhere { .. }
            | Op::MapRandomized { .. }
            | Op::Snapshot { .. }
            | Op::Frames { .. }
            | Op::CheckTree { .. } => None,
        }
    }

    const CREATE_SPACE: u32 = 1;
    const DESTROY_SPACE: u32 = 2;
    const MAP_ANYWHERE: u32 = 3;
    const MAP_FIXED: u32 = 4;
    const MAP_RANDOMIZED: u32 = 5;
    const UNMAP: u32 = 6;
    const PROTECT: u32 = 7;
    const TOUCH_READ: u32 = 8;
    const TOUCH_WRITE: u32 = 9;
    const TOUCH_EXEC: u32 = 10;
    const SNAPSHOT: u32 = 11;
    const FRAMES: u32 = 12;
    const KERNEL_READ: u32 = 13;
    const KERNEL_WRITE: u32 = 14;
    const POPULATE: u32 = 15;
    const FORK: u32 = 16;
    const CHECK_TREE: u32 = 17;

    /// Fields in wire order: kind, space, addr, size, align, access, value.
    fn fields(&self) -> (u32, u32, u64, u64, u64, u32, u64) {
        match *self {
            Op::CreateSpace => (Self::CREATE_SPACE, 0, 0, 0, 0, 0, 0),
            Op::DestroySpace { space } => (Self::DESTROY_SPACE, space, 0, 0, 0, 0, 0),
            Op::Fork { space } => (Self::FORK, space, 0, 0, 0, 0, 0),
            Op::MapAnywhere {
                space,
                size,
                align,
                access,
            } => (Self::MAP_ANYWHERE, space, 0, size, align, access, 0),
            Op::MapFixed {
                space,
                addr,
                size,
                access,
            } => (Self::MAP_FIXED, space, addr, size, 0, access, 0),
            Op::MapRandomized {
                space,
                size,
                align,
                access,
            } => (Self::MAP_RANDOMIZED, space, 0, size, align, access, 0),
            Op::Unmap { space, addr, size } => (Self::UNMAP, space, addr, size, 0, 0, 0),
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => (Self::PROTECT, space, addr, size, 0, access, 0),
            Op::TouchRead { space, addr } => (Self::TOUCH_READ, space, addr, 0, 0, 0, 0),
            Op::TouchWrite { space, addr, value } => {
                (Self::TOUCH_WRITE, space, addr, 0, 0, 0, value)
            }
            Op::TouchExec { space, addr } => (Self::TOUCH_EXEC, space, addr, 0, 0, 0, 0),
            Op::Snapshot { space } => (Self::SNAPSHOT, space, 0, 0, 0, 0, 0),
            Op::Frames { space } => (Self::FRAMES, space, 0, 0, 0, 0, 0),
            Op::KernelRead { space, addr } => (Self::KERNEL_READ, space, addr, 0, 0, 0, 0),
            Op::KernelWrite { space, addr, value } => {
                (Self::KERNEL_WRITE, space, addr, 0, 0, 0, value)
            }
            Op::Populate { space, addr, size } => (Self::POPULATE, space, addr, size, 0, 0, 0),
            Op::CheckTree { space } => (Self::CHECK_TREE, space, 0, 0, 0, 0, 0),
        }
    }

    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let (kind, space, addr, size, align, access, value) = self.fields();
        let mut w = Writer::new(buf);
        w.put_u32(kind);
        w.put_u32(space);
        w.put_u64(addr);
        w.put_u64(size);
        w.put_u64(align);
        w.put_u32(access);
        w.put_u32(0);
        w.put_u64(value);
        w.finish()
    }

    /// Decodes one record; `None` for a short buffer or an unknown kind.
    pub fn decode(buf: &[u8]) -> Option<Op> {
        let mut r = Reader::new(buf);
        let (kind, space, addr, size, align, access) =
            (r.u32()?, r.u32()?, r.u64()?, r.u64()?, r.u64()?, r.u32()?);
        let _pad = r.u32()?;
        let value = r.u64()?;
        Some(match kind {
            Self::CREATE_SPACE => Op::CreateSpace,
            Self::DESTROY_SPACE => Op::DestroySpace { space },
            Self::MAP_ANYWHERE => Op::MapAnywhere {
                space,
                size,
                align,
                access,
            },
            Self::MAP_FIXED => Op::MapFixed {
                space,
                addr,
                size,
                access,
            },
            Self::MAP_RANDOMIZED => Op::MapRandomized {
                space,
                size,
                align,
                access,
            },
            Self::UNMAP => Op::Unmap { space, addr, size },
            Self::PROTECT => Op::Protect {
                space,
                addr,
                size,
                access,
            },
            Self::TOUCH_READ => Op::TouchRead { space, addr },
            Self::TOUCH_WRITE => Op::TouchWrite { space, addr, value },
            Self::TOUCH_EXEC => Op::TouchExec { space, addr },
            Self::SNAPSHOT => Op::Snapshot { space },
            Self::FRAMES => Op::Frames { space },
            Self::KERNEL_READ => Op::KernelRead { space, addr },
            Self::KERNEL_WRITE => Op::KernelWrite { space, addr, value },
            Self::POPULATE => Op::Populate { space, addr, size },
            Self::FORK => Op::Fork { space },
            Self::CHECK_TREE => Op::CheckTree { space },
            _ => return None,
        })
    }
}

/// Why an operation failed, as the guest reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// Zero size, or a size or address that is not page-aligned.
    InvalidArgument = 1,
    /// Alignment not a power of two, or below the page size.
    BadAlignment = 2,
    /// The range runs past the top of the address space.
    Overflow = 3,
    /// The range lies outside the address space's total range.
    OutOfRange = 4,
    /// A fixed mapping would overlap an existing region.
    Overlap = 5,
    /// No hole is large enough.
    NoSpace = 6,
    /// The guest ran out of physical frames or heap.
    OutOfMemory = 7,
    /// The space id names no live address space.
    NoSuchSpace = 8,
    /// Protect over a range that is not fully mapped.
    NotMapped = 9,
    /// The access mask has unknown bits.
    BadAccess = 10,
    /// The record's kind is unknown.
    BadOp = 11,
    /// The touch faulted; see [`OpResult::fault`].
    Faulted = 12,
}

impl Status {
    pub fn from_u32(v: u32) -> Option<Self> {
        use Status::*;
        const ALL: [Status; 13] = [
            Ok,
            InvalidArgument,
            BadAlignment,
            Overflow,
            OutOfRange,
            Overlap,
            NoSpace,
            OutOfMemory,
            NoSuchSpace,
            NotMapped,
            BadAccess,
            BadOp,
            Faulted,
        ];
        ALL.get(v as usize).copied()
    }
}

/// How a touch from ring 3 ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    None = 0,
    /// Page fault at an address no region covers.
    SegvNoRegion = 1,
    /// Page fault against the region's permissions (or a user touch of kernel memory).
    SegvAccess = 2,
    /// General protection fault (for example a non-canonical address).
    GeneralProtection = 3,
    /// Invalid opcode while executing user memory.
    InvalidOpcode = 4,
}

impl FaultKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => FaultKind::None,
            1 => FaultKind::SegvNoRegion,
            2 => FaultKind::SegvAccess,
            3 => FaultKind::GeneralProtection,
            4 => FaultKind::InvalidOpcode,
            _ => return None,
        })
    }
}

/// What one operation produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpResult {
    pub status: Status,
    pub fault: FaultKind,
    /// Placed address, or the faulting address.
    pub addr: u64,
    /// Value read, or a new space id.
    pub value: u64,
}

impl OpResult {
    pub const fn ok() -> Self {
        OpResult {
            status: Status::Ok,
            fault: FaultKind::None,
            addr: 0,
            value: 0,
        }
    }

    pub const fn error(status: Status) -> Self {
        OpResult {
            status,
            fault: FaultKind::None,
            addr: 0,
            value: 0,
        }
    }

    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        w.put_u32(self.status as u32);
        w.put_u32(self.fault as u32);
        w.put_u64(self.addr);
        w.put_u64(self.value);
        w.put_u64(0);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        let status = Status::from_u32(r.u32()?)?;
        let fault = FaultKind::from_u32(r.u32()?)?;
        Some(OpResult {
            status,
            fault,
            addr: r.u64()?,
            value: r.u64()?,
        })
    }
}

/// A live address space and the root of its page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceRecord {
    pub space: u32,
    pub cr3: u64,
}

impl SpaceRecord {
    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        w.put_u32(self.space);
        w.put_u32(0);
        w.put_u64(self.cr3);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        let space = r.u32()?;
        let _pad = r.u32()?;
        Some(SpaceRecord {
            space,
            cr3: r.u64()?,
        })
    }
}

/// One region of an exported region tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionRecord {
    pub base: u64,
    pub size: u64,
    pub access: u32,
    /// Nonzero when the region has a VMObject behind it.
    pub backed: u32,
    /// For a region of shared memory, the id of its VMObject (the same in every space that
    /// shares it); 0 for private memory.
    pub object: u64,
    /// NUL-padded name.
    pub name: [u8; REGION_NAME_LEN],
}

impl RegionRecord {
    /// Copies `name` into the fixed field, cutting it at [`REGION_NAME_LEN`] bytes.
    pub fn name_field(name: &str) -> [u8; REGION_NAME_LEN] {
        let mut field = [0u8; REGION_NAME_LEN];
        let n = name.len().min(REGION_NAME_LEN);
        field[..n].copy_from_slice(&name.as_bytes()[..n]);
        field
    }

    /// The name without its NUL padding (lossy if the guest sent invalid UTF-8).
    pub fn name_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(REGION_NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or("<invalid utf-8>")
    }

    pub fn encode(&self, buf: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(buf);
        w.put_u64(self.base);
        w.put_u64(self.size);
        w.put_u32(self.access);
        w.put_u32(self.backed);
        w.put_u64(self.object);
        w.put_bytes(&self.name);
        w.finish()
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let mut r = Reader::new(buf);
        Some(RegionRecord {
            base: r.u64()?,
            size: r.u64()?,
            access: r.u32()?,
            backed: r.u32()?,
            object: r.u64()?,
            name: r.bytes()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let ops = [
            Op::CreateSpace,
            Op::DestroySpace { space: 3 },
            Op::Fork { space: 2 },
            Op::MapAnywhere {
                space: 1,
                size: 0x3000,
                align: 0x1000,
                access: 11,
            },
            Op::MapFixed {
                space: 1,
                addr: 0x40_0000,
                size: 0x1000,
                access: 9,
            },
            Op::MapRandomized {
                space: 2,
                size: 0x20_0000,
                align: 0x20_0000,
                access: 15,
            },
            Op::Unmap {
                space: 1,
                addr: 0x40_1000,
                size: 0x2000,
            },
            Op::Protect {
                space: 1,
                addr: 0x40_0000,
                size: 0x1000,
                access: 8,
            },
            Op::TouchRead {
                space: 1,
                addr: 0x40_0008,
            },
            Op::TouchWrite {
                space: 1,
                addr: 0x40_0010,
                value: 0xdead_beef,
            },
            Op::TouchExec {
                space: 1,
                addr: 0x40_0000,
            },
            Op::Snapshot {
                space: KERNEL_SPACE,
            },
            Op::Frames { space: 2 },
            Op::KernelRead {
                space: 1,
                addr: 0x40_0ffc,
            },
            Op::KernelWrite {
                space: 1,
                addr: 0x40_0008,
                value: 7,
            },
            Op::Populate {
                space: 1,
                addr: 0x40_0000,
                size: 0x4000,
            },
            Op::CheckTree { space: 3 },
        ];
        for op in ops {
            let mut buf = [0u8; OP_RECORD_SIZE];
            assert_eq!(op.encode(&mut buf), Some(OP_RECORD_SIZE));
            assert_eq!(Op::decode(&buf), Some(op));
        }
    }

    #[test]
    fn frame_records_round_trip_and_refuse_stray_bits() {
        let uses = [
            FrameUse::Data,
            FrameUse::Table,
            FrameUse::Heap,
            FrameUse::Trampoline,
            FrameUse::HeapBlock,
        ];
        for usage in uses {
            let record = FrameRecord {
                frame: 0x46000,
                usage,
            };
            assert_eq!(FrameRecord::from_word(record.to_word()), Some(record));
        }
        assert_eq!(FrameRecord::from_word(0x46006), None);
        assert_eq!(FrameRecord::from_word(0x46800), None);
    }

    #[test]
    fn frame_refs_round_trip_and_single_references_are_not_listed() {
        let refs = FrameRefs {
            frame: 0x46000,
            refs: 3,
        };
        assert_eq!(FrameRefs::from_word(refs.to_word()), Some(refs));
        assert_eq!(FrameRefs::from_word(0x46001), None);
        assert_eq!(FrameRefs::from_word(0x46000), None);
    }

    #[test]
    fn unknown_op_kind_is_rejected() {
        let mut buf = [0u8; OP_RECORD_SIZE];
        buf[0] = 99;
        assert_eq!(Op::decode(&buf), None);
        assert_eq!(Op::decode(&buf[..10]), None);
    }

    #[test]
    fn results_headers_and_records_round_trip() {
        let res = OpResult {
            status: Status::Faulted,
            fault: FaultKind::SegvAccess,
            addr: 0x1000,
            value: 5,
        };
        let mut buf = [0u8; RESULT_RECORD_SIZE];
        assert_eq!(res.encode(&mut buf), Some(RESULT_RECORD_SIZE));
        assert_eq!(OpResult::decode(&buf), Some(res));

        let hdr = MailboxHeader {
            call: 4,
            status: 0,
            len: 96,
            count: 2,
            args: [1, 2, 3, 4],
        };
        let mut buf = [0u8; HEADER_SIZE];
        assert_eq!(hdr.encode(&mut buf), Some(48));
        assert_eq!(MailboxHeader::decode(&buf), Some(hdr));

        let rec = RegionRecord {
            base: 0x1000,
            size: 0x2000,
            access: 3,
            backed: 1,
            object: 7,
            name: RegionRecord::name_field("a-rather-long-region-name-cut-here"),
        };
        let mut buf = [0u8; REGION_RECORD_SIZE];
        assert_eq!(rec.encode(&mut buf), Some(REGION_RECORD_SIZE));
        assert_eq!(RegionRecord::decode(&buf), Some(rec));
        assert_eq!(rec.name_str(), "a-rather-long-region-nam");

        let sp = SpaceRecord {
            space: 2,
            cr3: 0x5000,
        };
        let mut buf = [0u8; SPACE_RECORD_SIZE];
        assert_eq!(sp.encode(&mut buf), Some(SPACE_RECORD_SIZE));
        assert_eq!(SpaceRecord::decode(&buf), Some(sp));
    }

    #[test]
    fn hypercall_numbers_round_trip() {
        for n in 1..=11 {
            assert_eq!(Hypercall::from_u32(n).map(|c| c as u32), Some(n));
        }
        assert_eq!(Hypercall::from_u32(0), None);
        assert_eq!(Hypercall::from_u32(12), None);
    }

    #[test]
    fn status_codes_round_trip() {
        for v in 0..13 {
            assert_eq!(Status::from_u32(v).map(|s| s as u32), Some(v));
        }
        assert_eq!(Status::from_u32(13), None);
    }

    #[test]
    fn encode_into_short_buffer_fails_cleanly() {
        let mut buf = [0u8; 10];
        assert_eq!(Op::CreateSpace.encode(&mut buf), None);
    }
}
