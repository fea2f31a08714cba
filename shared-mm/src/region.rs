//! A Region: a named span of virtual memory with an access mask and an optional backing.
#![forbid(unsafe_code)]

use core::cell::Cell;
use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign};

use intrusive_collections::RBTreeLink;

use crate::address::{VirtualAddress, VirtualRange};
use crate::region_tree::GapNode;

/// What a region allows: a small bit set of [`Access::READ`], [`Access::WRITE`],
/// [`Access::EXECUTE`] and [`Access::USER`].
///
/// Displayed as `u-rwx` / `k-r--`: `u` (user) or `k` (kernel only), then one column per
/// permission.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Access(u8);

impl Access {
    /// May be read.
    pub const READ: Access = Access(1 << 0);
    /// May be written.
    pub const WRITE: Access = Access(1 << 1);
    /// May be executed.
    pub const EXECUTE: Access = Access(1 << 2);
    /// Reachable from ring 3 (otherwise kernel only).
    pub const USER: Access = Access(1 << 3);
    /// Shared memory: a fork shares the region's pages instead of copying them.
    pub const SHARED: Access = Access(1 << 4);

    const ALL_BITS: u8 = 0b1_1111;

    /// No access at all (a kernel-only guard reservation).
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Every bit set.
    pub const fn all() -> Self {
        Self(Self::ALL_BITS)
    }

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set with exactly these bits, or `None` if an unknown bit is set.
    pub const fn from_bits(bits: u8) -> Option<Self> {
        if bits & !Self::ALL_BITS == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Whether no bit is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether every bit of `self` is set in `other`.
    pub const fn is_subset_of(self, other: Access) -> bool {
        other.contains(self)
    }

    /// The bits set in either.
    pub const fn union(self, other: Access) -> Self {
        Self(self.0 | other.0)
    }

    /// The bits set in both.
    pub const fn intersection(self, other: Access) -> Self {
        Self(self.0 & other.0)
    }

    /// The bits of `self` that are not in `other`.
    pub const fn difference(self, other: Access) -> Self {
        Self(self.0 & !other.0)
    }
}

impl BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        self.union(rhs)
    }
}

impl BitOrAssign for Access {
    fn bitor_assign(&mut self, rhs: Access) {
        *self = self.union(rhs);
    }
}

impl BitAnd for Access {
    type Output = Access;
    fn bitand(self, rhs: Access) -> Access {
        self.intersection(rhs)
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |bit: Access, c: char| if self.contains(bit) { c } else { '-' };
        let ring = if self.contains(Access::USER) {
            'u'
        } else {
            'k'
        };
        write!(
            f,
            "{ring}{}{}{}{}",
            flag(Access::SHARED, 's'),
            flag(Access::READ, 'r'),
            flag(Access::WRITE, 'w'),
            flag(Access::EXECUTE, 'x')
        )
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Access({self})")
    }
}

/// A named span of virtual memory with an access mask and an optional backing `B`.
///
/// The guest kernel chooses `B` (for example an `Rc`'d VM object); unbacked regions
/// (`backing: None`) are reservations such as the kernel image or the kmalloc range.
///
/// A region is created unplaced, handed to a [`RegionTree`](crate::region_tree::RegionTree)
/// as a `Box<Region<B>>`, and given its range by the tree. The access mask can be changed
/// while the region is placed (it lives in a [`Cell`]); the range cannot.
// `repr(C)` keeps what a tree descent reads together: each link next to its key.
#[repr(C)]
pub struct Region<B> {
    /// Link in the tree's address index (keyed by the range's base).
    pub(crate) address_link: RBTreeLink,
    range: Cell<Option<VirtualRange>>,
    /// The free hole immediately below this region and its node in the tree's gap index
    /// (linked iff the hole is non-empty); maintained by the tree.
    pub(crate) gap: GapNode,
    access: Cell<Access>,
    name: &'static str,
    backing: Option<B>,
}

impl<B> Region<B> {
    /// A new, unplaced region.
    pub fn new(name: &'static str, access: Access, backing: Option<B>) -> Self {
        Self {
            address_link: RBTreeLink::new(),
            gap: GapNode::new(),
            range: Cell::new(None),
            access: Cell::new(access),
            name,
            backing,
        }
    }

    /// Where the region is placed, or where it was last placed if it has since been
    /// removed; `None` if it was never placed. Always `Some` for a region reached through
    /// a [`RegionTree`](crate::region_tree::RegionTree).
    pub fn range(&self) -> Option<VirtualRange> {
        self.range.get()
    }

    /// First address of [`range`](Self::range).
    pub fn base(&self) -> Option<VirtualAddress> {
        self.range.get().map(|r| r.base())
    }

    /// Whether the region is currently in a tree.
    pub fn is_placed(&self) -> bool {
        self.address_link.is_linked()
    }

    /// The access mask.
    pub fn access(&self) -> Access {
        self.access.get()
    }

    /// Replaces the access mask (also while placed: the mask is not part of any tree key).
    pub fn set_access(&self, access: Access) {
        self.access.set(access);
    }

    /// The region's name, for diagnostics and snapshots.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The backing object, `None` for a reservation.
    pub fn backing(&self) -> Option<&B> {
        self.backing.as_ref()
    }

    /// Whether the region has a backing object.
    pub fn is_backed(&self) -> bool {
        self.backing.is_some()
    }

    /// Consumes an (unplaced) region and returns its backing object.
    pub fn into_backing(self) -> Option<B> {
        self.backing
    }

    /// `(base, last)` of the placed range, `(0, 0)` if unplaced. Only the tree calls this,
    /// and only on regions it has placed.
    pub(crate) fn span(&self) -> (u64, u64) {
        self.range
            .get()
            .map_or((0, 0), |r| (r.base().get(), r.last().get()))
    }

    /// Records the range the tree placed the region at.
    pub(crate) fn set_range(&self, range: VirtualRange) {
        self.range.set(Some(range));
    }
}

impl<B> fmt::Debug for Region<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("name", &self.name)
            .field("range", &self.range.get())
            .field("access", &self.access.get())
            .field("backed", &self.is_backed())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn access_display() {
        let rwx = Access::READ | Access::WRITE | Access::EXECUTE;
        assert_eq!(format!("{}", rwx | Access::USER), "u-rwx");
        assert_eq!(format!("{}", Access::READ), "k-r--");
        assert_eq!(format!("{}", Access::empty()), "k----");
        assert_eq!(
            format!("{:?}", Access::USER | Access::WRITE),
            "Access(u--w-)"
        );
    }

    #[test]
    fn access_set_operations() {
        let rw = Access::READ.union(Access::WRITE);
        assert!(rw.contains(Access::READ));
        assert!(!rw.contains(Access::EXECUTE));
        assert!(Access::READ.is_subset_of(rw));
        assert!(!rw.is_subset_of(Access::READ));
        assert!(Access::empty().is_subset_of(Access::empty()));
        assert_eq!(rw & Access::WRITE, Access::WRITE);
        assert_eq!(rw.difference(Access::READ), Access::WRITE);
        assert_eq!(Access::from_bits(0b10_0000), None);
        assert_eq!(Access::from_bits(Access::all().bits()), Some(Access::all()));
        let mut a = Access::empty();
        assert!(a.is_empty());
        a |= Access::EXECUTE;
        assert_eq!(a, Access::EXECUTE);
    }

    #[test]
    fn region_accessors() {
        let r = Region::new("heap", Access::READ | Access::WRITE, Some(7u32));
        assert_eq!(r.name(), "heap");
        assert_eq!(r.range(), None);
        assert_eq!(r.base(), None);
        assert!(!r.is_placed());
        assert!(r.is_backed());
        assert_eq!(r.backing(), Some(&7));
        r.set_access(Access::READ);
        assert_eq!(r.access(), Access::READ);
        assert_eq!(r.into_backing(), Some(7));

        let reservation: Region<u32> = Region::new("kernel image", Access::READ, None);
        assert!(!reservation.is_backed());
        assert_eq!(reservation.backing(), None);
    }
}
