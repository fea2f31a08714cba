//! One CPU as the MM sees it: its own [`Machine`], its index, the locks it holds and the
//! operation it runs (for the lock-order checker's findings). The MemoryManager is shared by
//! every CPU; each runs MM operations through its own `Cpu`.

use crate::lock_order::{Held, LockOrder, LockSite};
use crate::machine::Machine;
use crate::sync::LockClass;
use alloc::sync::Arc;
use core::panic::Location;
use shared_mm::smp::MAX_CPUS;

pub struct Cpu<M> {
    pub machine: M,
    index: u32,
    held: Held,
    /// The pairs every CPU of this MM has taken.
    order: Arc<LockOrder>,
    /// What this CPU runs now: the operation's name, or another path's.
    path: &'static str,
}

impl<M: Machine> Cpu<M> {
    /// CPU `index` (below [`MAX_CPUS`]) on `machine`, with a lock-order table of its own: the
    /// first CPU, which brings the MM up. Every other CPU comes from
    /// [`MemoryManager::cpu`](crate::MemoryManager::cpu), which shares the table.
    pub fn new(index: u32, machine: M) -> Self {
        Self::sharing(index, machine, Arc::default())
    }

    pub(crate) fn sharing(index: u32, machine: M, order: Arc<LockOrder>) -> Self {
        assert!(
            index < MAX_CPUS,
            "cpu {index} is past the last ({MAX_CPUS} CPUs)"
        );
        Cpu {
            machine,
            index,
            held: Held::default(),
            order,
            path: "boot",
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn machine(&self) -> &M {
        &self.machine
    }

    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    pub(crate) fn order(&self) -> &Arc<LockOrder> {
        &self.order
    }

    /// Names what this CPU runs from now on; returns what it ran before.
    pub(crate) fn enter_path(&mut self, path: &'static str) -> &'static str {
        core::mem::replace(&mut self.path, path)
    }

    /// The classes of the locks this CPU holds, outermost first.
    pub fn held(&self) -> impl Iterator<Item = LockClass> + '_ {
        self.held.classes()
    }

    /// Before the first try at a lock of `class` from `at`: the order check (a finding goes to
    /// the machine) and the machine's hook.
    #[inline]
    pub(crate) fn acquiring(&mut self, class: LockClass, at: &'static Location<'static>) {
        if !self.held.known_clean(class) {
            self.check_order(class, at);
        }
        self.machine.lock_acquiring(class);
    }

    /// The lock-order check of a take not known clean (the first under these locks).
    #[cold]
    fn check_order(&mut self, class: LockClass, at: &'static Location<'static>) {
        let site = LockSite {
            path: self.path,
            at,
        };
        if let Some(violation) = self.held.check(&self.order, self.index, class, site) {
            self.machine.lock_order_violation(&violation);
        }
    }

    #[inline]
    pub(crate) fn acquired(&mut self, class: LockClass) {
        self.held.push(class);
    }

    #[inline]
    pub(crate) fn released(&mut self, class: LockClass) {
        self.held.pop(class);
        self.machine.lock_released(class);
    }
}
