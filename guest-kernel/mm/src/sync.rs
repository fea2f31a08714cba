//! The MM's locks: one wrapper over `spin` that every MM lock uses. Each lock has a class, and
//! taking it goes through the CPU that takes it: the lock-order checker sees every take, and the
//! machine's lock hooks run at each (a preemption point on the sim; on x86_64 a contended lock
//! spins with interrupts enabled, so shootdown IPIs still land).
//!
//! Closure style (`lock.with(cpu, |state, cpu| ...)`), not RAII guards: the wrapper must call
//! the machine at the release too, and a guard holding the CPU's `&mut` machine would keep the
//! closure from using it.
//!
//! The classes, in the only order in which they may be taken (a lower one before a higher one):
//! 1. [`LockClass::Exec`]: the gate every operation passes as a reader, and an exec touch as
//!    the writer (it patches the user page it executes, which no other CPU may see);
//! 2. [`LockClass::Spaces`]: the table of address spaces and the next id;
//! 3. [`LockClass::Space`]: one address space (tree, page tables, CPU set); at most one at a time;
//! 4. [`LockClass::Object`]: one shared VMObject's pages;
//! 5. [`LockClass::Frames`]: the frame allocator, the reference counts, the object ids;
//! 6. [`LockClass::Rng`]: the placement RNG.
//!
//! The guest's flush-trace buffer has a lock of its own below all of these: a leaf, taken only
//! inside a machine call.

use crate::cpu::Cpu;
use crate::machine::Machine;
use core::fmt;
use core::panic::Location;
use spin::mutex::SpinMutex;
use spin::RwLock;

/// The class of an MM lock: what the lock-order checker reasons about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockClass {
    Exec = 0,
    Spaces = 1,
    Space = 2,
    Object = 3,
    Frames = 4,
    Rng = 5,
}

impl LockClass {
    /// Every class, in lock order.
    pub const ALL: [LockClass; 6] = [
        LockClass::Exec,
        LockClass::Spaces,
        LockClass::Space,
        LockClass::Object,
        LockClass::Frames,
        LockClass::Rng,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            LockClass::Exec => "exec",
            LockClass::Spaces => "spaces",
            LockClass::Space => "space",
            LockClass::Object => "object",
            LockClass::Frames => "frames",
            LockClass::Rng => "rng",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for LockClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Takes a lock of `class` for `cpu` at `site`: the order check and the hook before the first
/// try, the contended hook at each failed one, then the lock is the CPU's.
fn acquire<M: Machine, G>(
    cpu: &mut Cpu<M>,
    class: LockClass,
    site: &'static Location<'static>,
    mut attempt: impl FnMut() -> Option<G>,
) -> G {
    cpu.acquiring(class, site);
    let guard = loop {
        if let Some(guard) = attempt() {
            break guard;
        }
        cpu.machine.lock_contended(class);
    };
    cpu.acquired(class);
    guard
}

/// A mutual-exclusion lock of one class over `T`.
pub struct Lock<T> {
    class: LockClass,
    inner: SpinMutex<T>,
}

impl<T> Lock<T> {
    pub const fn new(class: LockClass, value: T) -> Self {
        Lock {
            class,
            inner: SpinMutex::new(value),
        }
    }

    /// Runs `f` on the state with the lock held by `cpu`.
    #[track_caller]
    pub fn with<M: Machine, R>(
        &self,
        cpu: &mut Cpu<M>,
        f: impl FnOnce(&mut T, &mut Cpu<M>) -> R,
    ) -> R {
        let mut guard = acquire(cpu, self.class, Location::caller(), || {
            self.inner.try_lock()
        });
        let result = f(&mut guard, cpu);
        drop(guard);
        cpu.released(self.class);
        result
    }

    /// The state, through exclusive access (no other CPU can hold the lock).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

/// A reader-writer gate of one class, guarding nothing but who may run beside whom.
pub struct Gate {
    class: LockClass,
    inner: RwLock<()>,
}

impl Gate {
    pub const fn new(class: LockClass) -> Self {
        Gate {
            class,
            inner: RwLock::new(()),
        }
    }

    /// Runs `f` beside any other reader.
    #[track_caller]
    pub fn shared<M: Machine, R>(&self, cpu: &mut Cpu<M>, f: impl FnOnce(&mut Cpu<M>) -> R) -> R {
        let guard = acquire(cpu, self.class, Location::caller(), || {
            self.inner.try_read()
        });
        let result = f(cpu);
        drop(guard);
        cpu.released(self.class);
        result
    }

    /// Runs `f` alone: no reader and no other writer runs meanwhile.
    #[track_caller]
    pub fn exclusive<M: Machine, R>(
        &self,
        cpu: &mut Cpu<M>,
        f: impl FnOnce(&mut Cpu<M>) -> R,
    ) -> R {
        let guard = acquire(cpu, self.class, Location::caller(), || {
            self.inner.try_write()
        });
        let result = f(cpu);
        drop(guard);
        cpu.released(self.class);
        result
    }
}
