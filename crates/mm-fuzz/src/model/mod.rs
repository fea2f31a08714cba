//! The host-side reference model of the guest MM: predicts every operation's result from first
//! principles (simple ordered maps and naive scans, no shared code with the guest's RegionTree)
//! and reports each disagreement. A space's regions and private pages are in `space`, shared
//! objects in `shared`, what a byte reads in `memory`, and where a placement may or must
//! go in [`placement`].

mod memory;
pub mod placement;
mod shared;
mod space;

pub use space::{ModelRegion, SpaceModel};

use placement::{best_fit, has_aligned_hole};
use shared::SharedMemory;
use shared_mm::abi::access_bits::{EXECUTE, READ, SHARED, USER, WRITE};
use shared_mm::abi::{
    FaultKind, Op, OpResult, RegionRecord, Status, KERNEL_SPACE, KERNEL_SPACE_BASE, MAX_SPACES,
    USER_SPACE_BASE, USER_SPACE_END, USER_TRAMPOLINE,
};
use space::PAGE;
use std::collections::BTreeMap;

/// Normalized access as the guest computes it, or `None` for unknown bits.
pub fn normalize_access(bits: u32) -> Option<u32> {
    if bits & !(READ | WRITE | EXECUTE | USER | SHARED) != 0 {
        return None;
    }
    Some(if bits & (WRITE | EXECUTE) != 0 {
        bits | READ
    } else {
        bits
    })
}

/// The range checks shared by fixed map, unmap and protect, in the guest's order.
fn check_range(addr: u64, size: u64) -> Result<(), Status> {
    if size == 0 || !size.is_multiple_of(PAGE) || !addr.is_multiple_of(PAGE) {
        return Err(Status::InvalidArgument);
    }
    let last = addr.checked_add(size - 1).ok_or(Status::Overflow)?;
    if addr < USER_SPACE_BASE || last >= USER_SPACE_END {
        return Err(Status::OutOfRange);
    }
    Ok(())
}

fn check_request(size: u64, align: u64) -> Result<(), Status> {
    if size == 0 || !size.is_multiple_of(PAGE) {
        Err(Status::InvalidArgument)
    } else if !align.is_power_of_two() || align < PAGE {
        Err(Status::BadAlignment)
    } else {
        Ok(())
    }
}

/// One way the guest disagreed with the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub expected: String,
    pub got: OpResult,
}

/// The whole modelled guest: its address spaces and the id the next one gets.
#[derive(Clone, Debug)]
pub struct Model {
    pub spaces: BTreeMap<u32, SpaceModel>,
    /// The shared objects the spaces' shared regions hold.
    shared: SharedMemory,
    next_id: u32,
    /// Frames the guest can hand out after boot, when known: an OutOfMemory the model's
    /// count of frames in use does not come close to is a finding (a leak, most likely).
    frame_budget: Option<usize>,
    /// OutOfMemory results accepted so far.
    out_of_memory: u64,
    /// Whether `map-anywhere` must follow the best-fit policy, not only place validly.
    best_fit: bool,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            spaces: BTreeMap::new(),
            shared: SharedMemory::default(),
            next_id: 1,
            frame_budget: None,
            out_of_memory: 0,
            best_fit: true,
        }
    }
}

/// How far below the budget the model's count may be when the guest runs out of frames: the
/// count is an upper bound of what the spaces hold, but page tables a failed allocation left
/// behind and the budget's own estimate of the kernel's share are not counted.
const OUT_OF_MEMORY_SLACK: usize = 64;

/// What the model predicts for an operation.
enum Prediction {
    /// Exactly this status/fault/addr/value (fields set to `None` are not compared).
    Exact {
        status: Status,
        fault: FaultKind,
        addr: Option<u64>,
        value: Option<u64>,
    },
    /// `map-anywhere`: placed exactly at the best fit, or NoSpace when nothing fits.
    BestFit(Option<u64>),
    /// A successful placement somewhere valid, or NoSpace iff no hole exists (`map-randomized`,
    /// and `map-anywhere` with the best-fit check off).
    Placement {
        space: u32,
        size: u64,
        align: u64,
        hole_exists: bool,
    },
    /// Either of two outcomes the architecture allows.
    Either(Box<Prediction>, Box<Prediction>),
}

fn ok() -> Prediction {
    Prediction::Exact {
        status: Status::Ok,
        fault: FaultKind::None,
        addr: None,
        value: None,
    }
}

fn error(status: Status) -> Prediction {
    Prediction::Exact {
        status,
        fault: FaultKind::None,
        addr: None,
        value: None,
    }
}

fn fault(kind: FaultKind, addr: u64) -> Prediction {
    Prediction::Exact {
        status: Status::Faulted,
        fault: kind,
        addr: Some(addr),
        value: None,
    }
}

fn value(v: u64) -> Prediction {
    Prediction::Exact {
        status: Status::Ok,
        fault: FaultKind::None,
        addr: None,
        value: Some(v),
    }
}

/// Whether `op` may need a new frame (so an OutOfMemory result can be right).
fn allocates_frames(op: &Op) -> bool {
    matches!(
        op,
        Op::CreateSpace
            | Op::Fork { .. }
            | Op::TouchRead { .. }
            | Op::TouchWrite { .. }
            | Op::TouchExec { .. }
            | Op::KernelRead { .. }
            | Op::KernelWrite { .. }
            | Op::Populate { .. }
    )
}

/// The fault a ring-3 access needing `need` takes at `at` in `s`, if it takes one.
fn page_denies(s: &SpaceModel, at: u64, need: u32) -> Option<Prediction> {
    if at >= KERNEL_SPACE_BASE {
        return Some(fault(FaultKind::SegvAccess, at));
    }
    if at >= USER_TRAMPOLINE {
        // The trampoline page: user r-x, outside every region.
        return (need == WRITE).then(|| fault(FaultKind::SegvNoRegion, at));
    }
    let Some((_, region)) = s.region_at(at) else {
        return Some(fault(FaultKind::SegvNoRegion, at));
    };
    (region.access & USER == 0 || region.access & need == 0)
        .then(|| fault(FaultKind::SegvAccess, at))
}

/// One past the last address of the canonical lower half.
const LOWER_HALF_END: u64 = 0x0000_8000_0000_0000;

/// Whether `addr` is canonical (bits 63..47 all equal).
fn canonical(addr: u64) -> bool {
    let top = addr >> 47;
    top == 0 || top == 0x1_ffff
}

impl Model {
    /// A model of a guest with `frames` frames to hand out after boot.
    pub fn with_frame_budget(frames: usize) -> Self {
        Model {
            frame_budget: Some(frames),
            ..Model::default()
        }
    }

    /// The same model, predicting `map-anywhere` by the documented best-fit policy (`true`,
    /// the default) or accepting any valid placement (to measure what the policy check costs).
    pub fn with_best_fit(self, best_fit: bool) -> Self {
        Model { best_fit, ..self }
    }

    /// Whether `map-anywhere` is held to the best-fit policy.
    pub fn checks_best_fit(&self) -> bool {
        self.best_fit
    }

    /// The same model of a guest that has made spaces before: the next it makes is `next_id`.
    pub fn numbering_spaces_from(self, next_id: u32) -> Self {
        Model { next_id, ..self }
    }

    /// The id the guest gives the next space it makes.
    pub fn next_space_id(&self) -> u32 {
        self.next_id
    }

    /// How many OutOfMemory results the model has accepted.
    pub fn out_of_memory_results(&self) -> u64 {
        self.out_of_memory
    }

    /// The frames the guest has to hand out, when known.
    pub fn frame_budget(&self) -> Option<usize> {
        self.frame_budget
    }

    /// Guest frames the spaces hold at most (committed pages plus page tables, and the pages of
    /// shared objects once).
    pub fn frames_estimate(&self) -> usize {
        let spaces: usize = self.spaces.values().map(SpaceModel::frames_estimate).sum();
        spaces + self.shared.frames()
    }

    /// Checks `got` against the prediction for `op`, then applies `op` (with the guest's own
    /// placement where the model allows any valid one). Returns the disagreement, if any.
    pub fn apply(&mut self, op: &Op, got: &OpResult) -> Option<Mismatch> {
        let prediction = self.predict(op);
        let would_succeed = matches!(
            prediction,
            Prediction::Exact {
                status: Status::Ok,
                ..
            }
        );
        if got.status == Status::OutOfMemory && allocates_frames(op) && would_succeed {
            let refused = self.out_of_memory(op);
            if refused.is_none() {
                self.out_of_memory += 1;
            }
            return refused.map(|expected| Mismatch {
                expected,
                got: *got,
            });
        }
        if let Some(expected) = self.verdict(&prediction, got) {
            return Some(Mismatch {
                expected,
                got: *got,
            });
        }
        self.update(op, got);
        None
    }

    /// `None` when the guest may be out of frames for `op` now, else why the model thinks not.
    fn out_of_memory(&self, op: &Op) -> Option<String> {
        let budget = self.frame_budget?;
        let wanted = match *op {
            Op::Populate { space, addr, size } => self.spaces.get(&space).map_or(0, |s| {
                let committed = self.committed_in(s, addr, addr + (size - 1));
                (size / PAGE) as usize - committed
            }),
            _ => 0,
        };
        let in_use = self.frames_estimate() + wanted;
        (in_use + OUT_OF_MEMORY_SLACK < budget).then(|| {
            format!("no OutOfMemory: the spaces hold at most {in_use} of the {budget} frames")
        })
    }

    /// `None` when `got` is what `prediction` allows, else what was expected.
    fn verdict(&self, prediction: &Prediction, got: &OpResult) -> Option<String> {
        match *prediction {
            Prediction::Exact {
                status,
                fault,
                addr,
                value,
            } => {
                let matches = got.status == status
                    && got.fault == fault
                    && addr.is_none_or(|a| a == got.addr)
                    && value.is_none_or(|v| v == got.value);
                (!matches).then(|| {
                    let mut want = format!("{status:?}");
                    if fault != FaultKind::None {
                        want += &format!(" {fault:?}");
                    }
                    if let Some(a) = addr {
                        want += &format!(" at {a:#x}");
                    }
                    if let Some(v) = value {
                        want += &format!(" value {v:#x}");
                    }
                    want
                })
            }
            Prediction::Placement {
                space,
                size,
                align,
                hole_exists,
            } => self.check_placement(space, size, align, hole_exists, got),
            Prediction::BestFit(at) => {
                let placed = got.status == Status::Ok && got.fault == FaultKind::None;
                match at {
                    Some(at) if placed && got.addr == at => None,
                    None if got.status == Status::NoSpace => None,
                    Some(at) => Some(format!("Ok at {at:#x} (the best fit)")),
                    None => Some("NoSpace (no hole fits)".into()),
                }
            }
            Prediction::Either(ref a, ref b) => {
                let (first, second) = (self.verdict(a, got)?, self.verdict(b, got)?);
                Some(format!("{first} or {second}"))
            }
        }
    }

    fn check_placement(
        &self,
        space: u32,
        size: u64,
        align: u64,
        hole: bool,
        got: &OpResult,
    ) -> Option<String> {
        match got.status {
            Status::NoSpace if !hole => None,
            Status::NoSpace => Some(format!("a placement: an aligned hole of {size:#x} exists")),
            Status::Ok => {
                let s = &self.spaces[&space];
                let end = got.addr.checked_add(size);
                let valid = got.addr.is_multiple_of(align)
                    && got.addr >= USER_SPACE_BASE
                    && end.is_some_and(|e| e <= USER_SPACE_END)
                    && !s.overlaps(got.addr, size);
                if !valid {
                    return Some(format!(
                        "a valid {align:#x}-aligned placement of {size:#x} bytes"
                    ));
                }
                None
            }
            _ => Some(if hole {
                "Ok (a placement)".into()
            } else {
                "NoSpace".into()
            }),
        }
    }

    /// The first checks of every map: the space must exist, then the access mask be valid.
    fn new_region_space(&self, space: u32, access: u32) -> Result<&SpaceModel, Status> {
        let s = self.spaces.get(&space).ok_or(Status::NoSuchSpace)?;
        normalize_access(access).ok_or(Status::BadAccess)?;
        Ok(s)
    }

    fn predict(&self, op: &Op) -> Prediction {
        let space_of = |id: u32| self.spaces.get(&id);
        match *op {
            Op::CreateSpace => {
                if self.spaces.len() >= MAX_SPACES {
                    error(Status::NoSpace)
                } else {
                    value(self.next_id as u64)
                }
            }
            Op::DestroySpace { space } => {
                if space_of(space).is_some() {
                    ok()
                } else {
                    error(Status::NoSuchSpace)
                }
            }
            Op::Fork { space } => {
                if space_of(space).is_none() {
                    error(Status::NoSuchSpace)
                } else if self.spaces.len() >= MAX_SPACES {
                    error(Status::NoSpace)
                } else {
                    value(self.next_id as u64)
                }
            }
            Op::MapAnywhere {
                space,
                size,
                align,
                access,
            }
            | Op::MapRandomized {
                space,
                size,
                align,
                access,
            } => {
                let s = match self.new_region_space(space, access) {
                    Ok(s) => s,
                    Err(status) => return error(status),
                };
                if let Err(e) = check_request(size, align) {
                    return error(e);
                }
                if self.best_fit && matches!(op, Op::MapAnywhere { .. }) {
                    return Prediction::BestFit(best_fit(s, size, align));
                }
                Prediction::Placement {
                    space,
                    size,
                    align,
                    hole_exists: has_aligned_hole(s, size, align),
                }
            }
            Op::MapFixed {
                space,
                addr,
                size,
                access,
            } => {
                let s = match self.new_region_space(space, access) {
                    Ok(s) => s,
                    Err(status) => return error(status),
                };
                if let Err(e) = check_range(addr, size) {
                    return error(e);
                }
                if s.overlaps(addr, size) {
                    return error(Status::Overlap);
                }
                Prediction::Exact {
                    status: Status::Ok,
                    fault: FaultKind::None,
                    addr: Some(addr),
                    value: None,
                }
            }
            Op::Unmap { space, addr, size } => {
                if space_of(space).is_none() {
                    return error(Status::NoSuchSpace);
                }
                check_range(addr, size).map_or_else(error, |()| ok())
            }
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => {
                let Some(s) = space_of(space) else {
                    return error(Status::NoSuchSpace);
                };
                if let Err(e) = check_range(addr, size) {
                    return error(e);
                }
                // Sharing is chosen at map time: protect refuses the bit.
                if normalize_access(access).is_none_or(|a| a & SHARED != 0) {
                    return error(Status::BadAccess);
                }
                let mut next = addr;
                let last = addr + (size - 1);
                // Walk region by region; every byte of the range must be covered.
                loop {
                    let Some((base, r)) = s.region_at(next) else {
                        return error(Status::NotMapped);
                    };
                    let end = base + r.size; // Regions end at or below USER_SPACE_END.
                    if end > last {
                        return ok();
                    }
                    next = end;
                }
            }
            Op::TouchRead { space, addr } => self.predict_touch(space, addr, READ, None),
            Op::TouchWrite {
                space,
                addr,
                value: v,
            } => self.predict_touch(space, addr, WRITE, Some(v)),
            Op::TouchExec { space, addr } => self.predict_touch(space, addr, EXECUTE, None),
            Op::KernelRead { space, addr } => self.predict_kernel_access(space, addr, READ, None),
            Op::KernelWrite {
                space,
                addr,
                value: v,
            } => self.predict_kernel_access(space, addr, WRITE, Some(v)),
            Op::Frames { space } => {
                if space == KERNEL_SPACE || space_of(space).is_some() {
                    ok()
                } else {
                    error(Status::NoSuchSpace)
                }
            }
            // A tree that holds its invariants reports no broken one.
            Op::CheckTree { space } => {
                if space == KERNEL_SPACE || space_of(space).is_some() {
                    value(0)
                } else {
                    error(Status::NoSuchSpace)
                }
            }
            Op::Populate { space, addr, size } => self.predict_populate(space, addr, size),
            Op::Snapshot { space } => {
                if space == KERNEL_SPACE {
                    ok()
                } else {
                    match space_of(space) {
                        Some(s) => value(s.regions.len() as u64),
                        None => error(Status::NoSuchSpace),
                    }
                }
            }
        }
    }

    fn predict_touch(&self, space: u32, addr: u64, need: u32, write: Option<u64>) -> Prediction {
        let Some(s) = self.spaces.get(&space) else {
            return error(Status::NoSuchSpace);
        };
        // A load or store touches 8 bytes; an execute touch, the one byte of its `int3`. Linear
        // addresses wrap at 2^64 as on x86 (the access at 0xffff_ffff_ffff_ffff ends at 0x6):
        // both ends are canonical, and the page of the first byte, a kernel page, faults first.
        let last = if need == EXECUTE {
            addr
        } else {
            addr.wrapping_add(7)
        };
        let general_protection = fault(FaultKind::GeneralProtection, addr);
        if !canonical(addr) {
            return general_protection;
        }
        if !canonical(last) {
            // An access that runs off the top of the lower half: #GP with 4-level paging. A
            // host with 5-level paging (ring 3 runs natively under KVM's PVM) sees a canonical
            // address and checks the pages in order: the first byte's (the trampoline, which a
            // write faults on), then the missing one past it, a fault with no region.
            let missing = fault(FaultKind::SegvNoRegion, LOWER_HALF_END);
            let five_level = page_denies(s, addr, need).unwrap_or(missing);
            return Prediction::Either(Box::new(general_protection), Box::new(five_level));
        }
        // Page by page, the first byte's first; a fault on the other reports its first byte.
        let second = (last / PAGE != addr / PAGE).then_some(last & !(PAGE - 1));
        for at in std::iter::once(addr).chain(second) {
            if let Some(denied) = page_denies(s, at, need) {
                return denied;
            }
        }
        match (need, write) {
            (WRITE, Some(v)) => value(v),
            (EXECUTE, _) => value(0),
            _ => value(self.read_u64(s, addr)),
        }
    }

    /// Populate: a valid range, covered by regions, each with USER and WRITE.
    fn predict_populate(&self, space: u32, addr: u64, size: u64) -> Prediction {
        let Some(s) = self.spaces.get(&space) else {
            return error(Status::NoSuchSpace);
        };
        if let Err(e) = check_range(addr, size) {
            return error(e);
        }
        let last = addr + (size - 1);
        let mut next = addr;
        let mut denied = None;
        loop {
            let Some((base, r)) = s.region_at(next) else {
                return error(Status::NotMapped);
            };
            if denied.is_none() && r.access & (USER | WRITE) != USER | WRITE {
                denied = Some(base.max(addr));
            }
            let end = base + r.size;
            if end > last {
                break;
            }
            next = end;
        }
        denied.map_or_else(ok, |at| fault(FaultKind::SegvAccess, at))
    }

    /// A kernel access to the u64 at `addr`: the range must be user memory, and each of its
    /// pages in a region with USER and `need` (the access `access_process_vm` checks).
    fn predict_kernel_access(
        &self,
        space: u32,
        addr: u64,
        need: u32,
        write: Option<u64>,
    ) -> Prediction {
        let Some(s) = self.spaces.get(&space) else {
            return error(Status::NoSuchSpace);
        };
        let in_user =
            addr >= USER_SPACE_BASE && addr.checked_add(8).is_some_and(|e| e <= USER_SPACE_END);
        if !in_user {
            return fault(FaultKind::SegvAccess, addr);
        }
        let last = addr + 7;
        let second = (last / PAGE != addr / PAGE).then_some(last & !(PAGE - 1));
        for at in std::iter::once(addr).chain(second) {
            let Some((_, region)) = s.region_at(at) else {
                return fault(FaultKind::SegvNoRegion, at);
            };
            if region.access & USER == 0 || region.access & need == 0 {
                return fault(FaultKind::SegvAccess, at);
            }
        }
        value(write.unwrap_or_else(|| self.read_u64(s, addr)))
    }

    fn update(&mut self, op: &Op, got: &OpResult) {
        if got.status == Status::Faulted {
            return self.commit_before_fault(op, got);
        }
        if got.status != Status::Ok {
            return;
        }
        match *op {
            Op::CreateSpace => {
                self.spaces.insert(self.next_id, SpaceModel::default());
                self.next_id += 1;
            }
            Op::Fork { space } => {
                // The child sees a copy of the parent's private memory as it is now, and the
                // same shared objects.
                let child = self.spaces.get(&space).cloned().unwrap_or_default();
                self.spaces.insert(self.next_id, child);
                self.next_id += 1;
            }
            Op::DestroySpace { space } => {
                if let Some(gone) = self.spaces.remove(&space) {
                    self.drop_unheld(gone.objects());
                }
            }
            Op::MapAnywhere {
                space,
                size,
                access,
                ..
            }
            | Op::MapRandomized {
                space,
                size,
                access,
                ..
            }
            | Op::MapFixed {
                space,
                size,
                access,
                ..
            } => self.map(space, got.addr, size, access),
            Op::Unmap { space, addr, size } => {
                if let Some(s) = self.spaces.get_mut(&space) {
                    let released = s.cut(addr, size);
                    self.drop_unheld(released.into_iter());
                }
            }
            Op::Protect {
                space,
                addr,
                size,
                access,
            } => {
                let access = normalize_access(access).expect("checked by predict");
                if let Some(s) = self.spaces.get_mut(&space) {
                    s.protect(addr, size, access);
                }
            }
            Op::TouchExec { space, addr } => self.commit_touched(space, addr, addr),
            Op::TouchRead { space, addr } | Op::KernelRead { space, addr } => {
                self.commit_touched(space, addr, addr + 7)
            }
            Op::TouchWrite { space, addr, value } | Op::KernelWrite { space, addr, value } => {
                self.commit_touched(space, addr, addr + 7);
                self.write_u64(space, addr, value);
            }
            Op::Populate { space, addr, size } => {
                for page in (addr..=addr + (size - 1)).step_by(PAGE as usize) {
                    self.commit(space, page);
                }
            }
            Op::Frames { .. } | Op::Snapshot { .. } | Op::CheckTree { .. } => {}
        }
    }

    /// A new region at `base` of `space`: private memory, or a new shared object.
    fn map(&mut self, space: u32, base: u64, size: u64, access: u32) {
        let access = normalize_access(access).expect("checked by predict");
        let object = (access & SHARED != 0).then(|| self.shared.create());
        if let Some(s) = self.spaces.get_mut(&space) {
            s.regions.insert(
                base,
                ModelRegion {
                    size,
                    access,
                    object,
                },
            );
        }
    }

    /// Forgets those of `released` (objects regions just stopped holding) that no region of
    /// any space holds any more: their frames go back. Only a released object can have become
    /// unheld, so only those are looked for.
    fn drop_unheld(&mut self, released: impl Iterator<Item = u64>) {
        for object in released {
            let held = self
                .spaces
                .values()
                .any(|s| s.objects().any(|held| held == object));
            if !held {
                self.shared.forget(object);
            }
        }
    }

    /// An access that faulted on the second of its two pages made the first present first.
    fn commit_before_fault(&mut self, op: &Op, got: &OpResult) {
        let (Op::TouchRead { space, addr }
        | Op::TouchWrite { space, addr, .. }
        | Op::KernelRead { space, addr }
        | Op::KernelWrite { space, addr, .. }) = *op
        else {
            return;
        };
        let second = (addr.wrapping_add(7)) & !(PAGE - 1);
        if second != addr & !(PAGE - 1) && got.addr == second {
            self.commit_touched(space, addr, addr);
        }
    }

    /// Compares an exported region list of `space` with the model; `Err` describes the first
    /// difference.
    pub fn compare_snapshot(&self, space: u32, regions: &[RegionRecord]) -> Result<(), String> {
        let Some(s) = self.spaces.get(&space) else {
            return Err(format!(
                "snapshot of space {space}, which the model does not have"
            ));
        };
        // The guest names a shared region's object; the model only says whether it has one.
        let got: Vec<(u64, u64, u32, bool)> = regions
            .iter()
            .map(|r| (r.base, r.size, r.access, r.object != 0))
            .collect();
        let want: Vec<(u64, u64, u32, bool)> = s
            .regions
            .iter()
            .map(|(&b, r)| (b, r.size, r.access, r.object.is_some()))
            .collect();
        if got == want {
            return Ok(());
        }
        let first = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g != w)
            .unwrap_or(got.len().min(want.len()));
        Err(format!(
            "space {space}: region {first} differs: guest has {:x?}, model has {:x?} ({} vs {} regions)",
            got.get(first),
            want.get(first),
            got.len(),
            want.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_mm::abi::TRAMPOLINE_CODE;

    const URW: u32 = USER | READ | WRITE;

    fn ok_at(addr: u64) -> OpResult {
        OpResult {
            addr,
            ..OpResult::ok()
        }
    }

    fn faulted(fault: FaultKind, addr: u64) -> OpResult {
        OpResult {
            status: Status::Faulted,
            fault,
            addr,
            value: 0,
        }
    }

    /// A model with space 1 and one read-write page at 0x400000.
    fn model() -> Model {
        let mut m = Model::default();
        assert!(m
            .apply(
                &Op::CreateSpace,
                &OpResult {
                    value: 1,
                    ..OpResult::ok()
                }
            )
            .is_none());
        let map = Op::MapFixed {
            space: 1,
            addr: 0x40_0000,
            size: PAGE,
            access: URW,
        };
        assert!(m.apply(&map, &ok_at(0x40_0000)).is_none());
        m
    }

    #[test]
    fn an_access_straddling_into_a_hole_faults_at_the_second_page() {
        let mut m = model();
        let read = Op::TouchRead {
            space: 1,
            addr: 0x40_0ffc,
        };
        assert!(m
            .apply(&read, &faulted(FaultKind::SegvNoRegion, 0x40_1000))
            .is_none());
        assert!(m
            .apply(&read, &faulted(FaultKind::SegvNoRegion, 0x40_0ffc))
            .is_some());
    }

    #[test]
    fn a_value_straddling_two_pages_reads_back() {
        let mut m = model();
        let map = Op::MapFixed {
            space: 1,
            addr: 0x40_1000,
            size: PAGE,
            access: URW,
        };
        assert!(m.apply(&map, &ok_at(0x40_1000)).is_none());
        let (addr, v) = (0x40_0ffd, 0x1122_3344_5566_7788);
        let write = Op::TouchWrite {
            space: 1,
            addr,
            value: v,
        };
        let read_back = OpResult {
            value: v,
            ..OpResult::ok()
        };
        assert!(m.apply(&write, &read_back).is_none());
        let read = Op::TouchRead { space: 1, addr };
        assert!(m.apply(&read, &read_back).is_none());
        let upper = Op::TouchRead {
            space: 1,
            addr: 0x40_1000,
        };
        let upper_value = OpResult {
            value: v >> 24,
            ..OpResult::ok()
        };
        assert!(m.apply(&upper, &upper_value).is_none());
    }

    #[test]
    fn a_read_off_the_top_of_the_lower_half_does_not_panic() {
        let mut m = model();
        let read = Op::TouchRead {
            space: 1,
            addr: 0x7fff_ffff_fff9,
        };
        let gp = faulted(FaultKind::GeneralProtection, 0x7fff_ffff_fff9);
        assert!(m.apply(&read, &gp).is_none(), "4-level paging: #GP");
        let la57 = faulted(FaultKind::SegvNoRegion, LOWER_HALF_END);
        assert!(m.apply(&read, &la57).is_none(), "5-level host: #PF at 2^47");
        let trampoline = Op::TouchRead {
            space: 1,
            addr: USER_TRAMPOLINE + 1,
        };
        let code = u64::from_le_bytes(TRAMPOLINE_CODE[1..9].try_into().unwrap());
        let want = OpResult {
            value: code,
            ..OpResult::ok()
        };
        assert!(m.apply(&trampoline, &want).is_none());
        // A write faults on the trampoline page first, on a 5-level host; never past it.
        let write = Op::TouchWrite {
            space: 1,
            addr: 0x7fff_ffff_fffa,
            value: 1,
        };
        let on_trampoline = faulted(FaultKind::SegvNoRegion, 0x7fff_ffff_fffa);
        assert!(m.apply(&write, &on_trampoline).is_none(), "5-level host");
        let past_it = faulted(FaultKind::SegvNoRegion, LOWER_HALF_END);
        assert!(m.apply(&write, &past_it).is_some());
    }

    /// The decision for an access that wraps past 2^64 (README, "Faults"): x86 wraps linear
    /// addresses, both ends of 8 bytes at 0xffff_ffff_ffff_ffff are canonical, and the first
    /// byte's page, a kernel page, faults first: segv-access at the address, never #GP. An
    /// execute touch is one byte and faults the same way.
    #[test]
    fn an_access_that_wraps_past_2_64_faults_on_its_kernel_page() {
        let mut m = model();
        let top = u64::MAX;
        let ops = [
            Op::TouchRead {
                space: 1,
                addr: top,
            },
            Op::TouchWrite {
                space: 1,
                addr: top,
                value: 1,
            },
            Op::TouchExec {
                space: 1,
                addr: top,
            },
            Op::TouchRead {
                space: 1,
                addr: top - 6,
            },
        ];
        for op in ops {
            let at = match op {
                Op::TouchRead { addr, .. }
                | Op::TouchWrite { addr, .. }
                | Op::TouchExec { addr, .. } => addr,
                _ => unreachable!(),
            };
            let gp = faulted(FaultKind::GeneralProtection, at);
            assert!(m.apply(&op, &gp).is_some(), "{op:?}: not #GP");
            let access = faulted(FaultKind::SegvAccess, at);
            assert!(m.apply(&op, &access).is_none(), "{op:?}: segv-access");
        }
    }

    fn value(value: u64) -> OpResult {
        OpResult {
            value,
            ..OpResult::ok()
        }
    }

    /// `model()` with 0x400000 written, a shared page at 0x500000 written, and space 1
    /// forked into space 2.
    fn forked() -> Model {
        let mut m = model();
        let shared = Op::MapFixed {
            space: 1,
            addr: 0x50_0000,
            size: PAGE,
            access: URW | SHARED,
        };
        assert!(m.apply(&shared, &ok_at(0x50_0000)).is_none());
        for (addr, v) in [(0x40_0000, 1), (0x50_0000, 2)] {
            let write = Op::TouchWrite {
                space: 1,
                addr,
                value: v,
            };
            assert!(m.apply(&write, &value(v)).is_none());
        }
        assert!(m.apply(&Op::Fork { space: 1 }, &value(2)).is_none());
        m
    }

    #[test]
    fn after_fork_private_memory_is_a_copy_and_shared_memory_is_shared() {
        let mut m = forked();
        let write = |space, addr, v| Op::TouchWrite {
            space,
            addr,
            value: v,
        };
        let read = |space, addr| Op::TouchRead { space, addr };
        assert!(m.apply(&read(2, 0x40_0000), &value(1)).is_none());
        assert!(m.apply(&write(2, 0x40_0000, 3), &value(3)).is_none());
        assert!(
            m.apply(&read(1, 0x40_0000), &value(1)).is_none(),
            "own copy"
        );
        assert!(m.apply(&read(1, 0x40_0000), &value(3)).is_some());
        assert!(m.apply(&write(2, 0x50_0000, 4), &value(4)).is_none());
        assert!(m.apply(&read(1, 0x50_0000), &value(4)).is_none(), "shared");
        assert!(m.apply(&read(1, 0x50_0000), &value(2)).is_some());
    }

    #[test]
    fn shared_values_live_until_the_last_unmap() {
        let mut m = forked();
        let unmap = Op::Unmap {
            space: 1,
            addr: 0x50_0000,
            size: PAGE,
        };
        assert!(m.apply(&unmap, &OpResult::ok()).is_none());
        let read = Op::TouchRead {
            space: 2,
            addr: 0x50_0000,
        };
        assert!(m.apply(&read, &value(2)).is_none());
        let protect = Op::Protect {
            space: 2,
            addr: 0x50_0000,
            size: PAGE,
            access: URW | SHARED,
        };
        let refused = OpResult::error(Status::BadAccess);
        assert!(
            m.apply(&protect, &refused).is_none(),
            "SHARED is set at map time only"
        );
    }

    #[test]
    fn a_shared_object_goes_with_its_last_region() {
        // The shared page of `forked()` holds a frame while either space maps it.
        let mut m = forked();
        assert_eq!(m.shared.frames(), 1);
        let unmap = |space| Op::Unmap {
            space,
            addr: 0x50_0000,
            size: PAGE,
        };
        assert!(m.apply(&unmap(1), &OpResult::ok()).is_none());
        assert_eq!(m.shared.frames(), 1, "space 2 still maps it");
        assert!(m
            .apply(&Op::DestroySpace { space: 2 }, &OpResult::ok())
            .is_none());
        assert_eq!(m.shared.frames(), 0, "no region holds it");
    }

    #[test]
    fn an_unmapped_page_of_many_written_reads_as_zero_when_mapped_again() {
        // Eight written pages, then one unmapped and mapped again: the unmap forgets that page
        // alone (one by one, as there are fewer pages in the range than written).
        let mut m = Model::default();
        assert!(m.apply(&Op::CreateSpace, &value(1)).is_none());
        let map = |addr, size| Op::MapFixed {
            space: 1,
            addr,
            size,
            access: URW,
        };
        assert!(m
            .apply(&map(0x40_0000, 8 * PAGE), &ok_at(0x40_0000))
            .is_none());
        for page in 0..8 {
            let addr = 0x40_0000 + page * PAGE;
            let write = Op::TouchWrite {
                space: 1,
                addr,
                value: page + 1,
            };
            assert!(m.apply(&write, &value(page + 1)).is_none());
        }
        let unmap = Op::Unmap {
            space: 1,
            addr: 0x40_3000,
            size: PAGE,
        };
        assert!(m.apply(&unmap, &OpResult::ok()).is_none());
        assert!(m.apply(&map(0x40_3000, PAGE), &ok_at(0x40_3000)).is_none());
        let read = |addr| Op::TouchRead { space: 1, addr };
        assert!(m.apply(&read(0x40_3000), &value(0)).is_none(), "forgotten");
        assert!(m.apply(&read(0x40_2000), &value(3)).is_none(), "kept below");
        assert!(m.apply(&read(0x40_4000), &value(5)).is_none(), "kept above");
    }

    #[test]
    fn a_fork_of_no_space_is_an_error_and_makes_none() {
        let mut m = model();
        let missing = OpResult::error(Status::NoSuchSpace);
        assert!(m.apply(&Op::Fork { space: 9 }, &missing).is_none());
        assert_eq!(m.next_space_id(), 2);
    }
}
