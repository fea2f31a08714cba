//! Shared memory in the model: objects whose pages every space that maps them sees, from first
//! principles (a map of pages per object). An object lives until no region of any space holds
//! it; its contents live as long.
#![forbid(unsafe_code)]

use super::space::Page;
use std::collections::{BTreeMap, HashMap, HashSet};

/// One shared object's pages.
#[derive(Clone, Debug, Default)]
struct Object {
    memory: HashMap<u64, Page>,
    /// Pages touched so far: each holds a guest frame until the object goes.
    committed: HashSet<u64>,
}

/// Every live shared object.
#[derive(Clone, Debug, Default)]
pub struct SharedMemory {
    objects: BTreeMap<u64, Object>,
    next: u64,
}

impl SharedMemory {
    /// A new, empty object; its id.
    pub fn create(&mut self) -> u64 {
        self.next += 1;
        self.objects.insert(self.next, Object::default());
        self.next
    }

    /// The contents of `page` of `object`, if written.
    pub fn page(&self, object: u64, page: u64) -> Option<&Page> {
        self.objects.get(&object)?.memory.get(&page)
    }

    /// The contents of `page` of `object`, created zeroed.
    pub fn page_mut(&mut self, object: u64, page: u64) -> &mut Page {
        let memory = &mut self.objects.entry(object).or_default().memory;
        memory.entry(page).or_insert_with(|| Box::new([0; 4096]))
    }

    /// `page` of `object` now has a frame.
    pub fn commit(&mut self, object: u64, page: u64) {
        self.objects
            .entry(object)
            .or_default()
            .committed
            .insert(page);
    }

    /// How many pages of `object` in `[first, last]` have a frame.
    pub fn committed_between(&self, object: u64, first: u64, last: u64) -> usize {
        self.objects.get(&object).map_or(0, |o| {
            o.committed
                .iter()
                .filter(|p| (first..=last).contains(*p))
                .count()
        })
    }

    /// Frames the live objects hold.
    pub fn frames(&self) -> usize {
        self.objects.values().map(|o| o.committed.len()).sum()
    }

    /// Drops `object`: no region holds it any more.
    pub fn forget(&mut self, object: u64) {
        self.objects.remove(&object);
    }
}
