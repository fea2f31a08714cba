//! The lock-order checker. Each CPU records the locks it holds; one table shared by every CPU
//! remembers, for each ordered pair of lock classes (A held while B is taken), the first path
//! that did it. Taking B while holding A when B was once held while A was taken is a finding
//! that names both locks and both paths: the two paths can deadlock each other, whether or not
//! they ever ran at the same time. Taking a second lock of a class already held is one too
//! (two spaces, say, locked in either order by two CPUs).
//!
//! It is always on: a pair already seen costs one atomic load per lock held, and only the first
//! take of a pair takes the table's own lock (a leaf, outside the MM's classes).

use crate::sync::LockClass;
use core::fmt;
use core::panic::Location;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::mutex::SpinMutex;

const CLASSES: usize = LockClass::ALL.len();

/// Most locks one CPU holds at once: one of each class.
pub const MAX_HELD: usize = CLASSES;

/// Where a lock was taken: the operation (or other path) running, and the call taking it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockSite {
    pub path: &'static str,
    pub at: &'static Location<'static>,
}

impl fmt::Display for LockSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "in {} at {}:{}",
            self.path,
            self.at.file(),
            self.at.line()
        )
    }
}

/// One lock taken while another was held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nesting {
    pub held: LockClass,
    pub taken: LockClass,
    pub cpu: u32,
    /// Where the inner lock was taken.
    pub site: LockSite,
}

/// A `lock-order` finding: `now` takes two classes in the order opposite to `before`'s (or
/// takes a class it already holds, `before` being the take it holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOrderViolation {
    pub now: Nesting,
    pub before: Nesting,
}

impl fmt::Display for LockOrderViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (now, before) = (&self.now, &self.before);
        write!(
            f,
            "cpu {} takes {} while holding {} ({}), but cpu {} took {} while holding {} ({})",
            now.cpu,
            now.taken,
            now.held,
            now.site,
            before.cpu,
            before.taken,
            before.held,
            before.site
        )
    }
}

/// The pairs every CPU has taken, shared by all of them.
pub struct LockOrder {
    /// Bit `held * CLASSES + taken`: that pair was seen.
    seen: AtomicU64,
    /// The first nesting of each pair, by `[held][taken]`.
    first: SpinMutex<[[Option<Nesting>; CLASSES]; CLASSES]>,
}

impl Default for LockOrder {
    fn default() -> Self {
        LockOrder {
            seen: AtomicU64::new(0),
            first: SpinMutex::new([[None; CLASSES]; CLASSES]),
        }
    }
}

const fn bit(held: LockClass, taken: LockClass) -> u64 {
    1 << (held.index() * CLASSES + taken.index())
}

impl LockOrder {
    /// `nesting` is about to happen: remembers it if it is the first of its pair, and returns
    /// the finding if the opposite pair was seen before.
    fn note(&self, nesting: Nesting) -> Option<LockOrderViolation> {
        let (held, taken) = (nesting.held, nesting.taken);
        let pair = bit(held, taken);
        // SeqCst: of two CPUs taking a pair each in opposite orders at once, at least one sees
        // the other's bit.
        if self.seen.load(Ordering::SeqCst) & pair == 0 {
            let mut first = self.first.lock();
            first[held.index()][taken.index()].get_or_insert(nesting);
            self.seen.fetch_or(pair, Ordering::SeqCst);
        }
        if self.seen.load(Ordering::SeqCst) & bit(taken, held) == 0 {
            return None;
        }
        let before = self.first.lock()[taken.index()][held.index()]?;
        Some(LockOrderViolation {
            now: nesting,
            before,
        })
    }
}

/// The locks one CPU holds, innermost last.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    locks: [LockClass; MAX_HELD],
    len: usize,
    /// The classes held, as a bit mask.
    mask: u8,
    /// The mask under each lock held: what popping it returns to.
    masks: [u8; MAX_HELD],
    /// By class taken, the held masks already checked clean (bit `mask`): taking that class
    /// under that mask needs no look at all (the fast path, most takes).
    clean: [u64; CLASSES],
    /// The pairs this CPU has noted in the shared table already (bits as there). It need not
    /// look again: a CPU that later takes the opposite pair finds this one's bit and reports
    /// it. So a pair costs one atomic look per CPU, once.
    noted: u64,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            locks: [LockClass::Exec; MAX_HELD],
            len: 0,
            mask: 0,
            masks: [0; MAX_HELD],
            clean: [0; CLASSES],
            noted: 0,
        }
    }
}

impl Held {
    /// Whether taking `taken` now was checked clean before (under the same locks): the fast
    /// path, with nothing to look up.
    #[inline]
    pub fn known_clean(&self, taken: LockClass) -> bool {
        let class = taken.index();
        self.mask & (1 << class) == 0 && self.clean[class] & (1 << self.mask) != 0
    }

    /// `cpu` is about to take `taken` at `site`: every lock it holds makes a nesting with it.
    /// Returns the first finding.
    pub fn check(
        &mut self,
        order: &LockOrder,
        cpu: u32,
        taken: LockClass,
        site: LockSite,
    ) -> Option<LockOrderViolation> {
        let class = taken.index();
        let repeated = self.mask & (1 << class) != 0;
        let mut found = None;
        for &held in &self.locks[..self.len] {
            if self.noted & bit(held, taken) != 0 {
                continue;
            }
            let nesting = Nesting {
                held,
                taken,
                cpu,
                site,
            };
            if held == taken {
                // Two of one class: any two CPUs taking two of them in opposite orders
                // deadlock. This take is both paths.
                found = found.or(Some(LockOrderViolation {
                    now: nesting,
                    before: nesting,
                }));
                continue;
            }
            found = found.or(order.note(nesting));
            self.noted |= bit(held, taken);
        }
        if found.is_none() && !repeated {
            self.clean[class] |= 1 << self.mask;
        }
        found
    }

    #[inline]
    pub fn push(&mut self, class: LockClass) {
        assert!(
            self.len < MAX_HELD,
            "a CPU holds more than {MAX_HELD} locks"
        );
        self.locks[self.len] = class;
        self.masks[self.len] = self.mask;
        self.mask |= 1 << class.index();
        self.len += 1;
    }

    /// Drops the innermost lock of `class` (locks are released in the reverse order of their
    /// taking, closures being nested).
    #[inline]
    pub fn pop(&mut self, class: LockClass) {
        let top = self.len.checked_sub(1).map(|i| self.locks[i]);
        assert!(
            top == Some(class),
            "released {class} but it is not the innermost lock held"
        );
        self.len -= 1;
        self.mask = self.masks[self.len];
    }

    /// The classes held, outermost first.
    pub fn classes(&self) -> impl Iterator<Item = LockClass> + '_ {
        self.locks[..self.len].iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(path: &'static str) -> LockSite {
        LockSite {
            path,
            at: Location::caller(),
        }
    }

    fn holding(classes: &[(LockClass, &'static str)]) -> Held {
        let mut held = Held::default();
        for &(class, _) in classes {
            held.push(class);
        }
        held
    }

    #[test]
    fn one_order_is_never_a_finding() {
        let order = LockOrder::default();
        let mut held = holding(&[(LockClass::Space, "unmap")]);
        for _ in 0..3 {
            assert_eq!(
                held.check(&order, 0, LockClass::Frames, site("unmap")),
                None
            );
        }
        let mut held = holding(&[(LockClass::Space, "touch"), (LockClass::Object, "touch")]);
        assert_eq!(
            held.check(&order, 1, LockClass::Frames, site("touch")),
            None
        );
    }

    #[test]
    fn the_opposite_order_names_both_locks_and_both_paths() {
        let order = LockOrder::default();
        let mut first = holding(&[(LockClass::Object, "touch-write")]);
        assert_eq!(
            first.check(&order, 0, LockClass::Frames, site("touch-write")),
            None
        );
        let mut second = holding(&[(LockClass::Frames, "unmap")]);
        let found = second
            .check(&order, 1, LockClass::Object, site("unmap"))
            .expect("object after frames, after frames after object");
        assert_eq!(
            (found.now.held, found.now.taken, found.now.cpu),
            (LockClass::Frames, LockClass::Object, 1)
        );
        assert_eq!(
            (found.before.held, found.before.taken, found.before.cpu),
            (LockClass::Object, LockClass::Frames, 0)
        );
        let text = found.to_string();
        for part in [
            "cpu 1 takes object while holding frames (in unmap at ",
            "but cpu 0 took frames while holding object (in touch-write at ",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(text.contains("lock_order.rs:"), "{text}");
    }

    #[test]
    fn a_second_lock_of_a_held_class_is_a_finding() {
        let order = LockOrder::default();
        let mut held = holding(&[(LockClass::Space, "fork")]);
        let found = held
            .check(&order, 0, LockClass::Space, site("fork"))
            .expect("two spaces");
        assert_eq!(
            (found.now.held, found.now.taken),
            (LockClass::Space, LockClass::Space)
        );
    }

    #[test]
    fn the_held_list_releases_innermost_first() {
        let mut held = holding(&[(LockClass::Space, "a"), (LockClass::Frames, "a")]);
        held.pop(LockClass::Frames);
        assert_eq!(held.classes().collect::<Vec<_>>(), [LockClass::Space]);
        let out_of_order = std::panic::catch_unwind(move || {
            let mut held = holding(&[(LockClass::Space, "a"), (LockClass::Frames, "a")]);
            held.pop(LockClass::Space);
        });
        assert!(out_of_order.is_err());
    }
}
