//! Maps keyed by frame address, with a cheap multiplicative hash: the checker looks frames up
//! millions of times a second on the sim, where SipHash's flood resistance buys nothing (the
//! keys are page-aligned addresses, bounded in number by RAM).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes one u64 by a Fibonacci multiply, then a rotation: the multiply spreads the key's
/// bits upward only (a page-aligned key keeps 12 zero low bits), and the table indexes by the
/// low bits, so the well-mixed high half is rotated down.
#[derive(Default)]
pub struct FrameHasher(u64);

impl Hasher for FrameHasher {
    fn finish(&self) -> u64 {
        self.0.rotate_right(32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = (key ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_u32(&mut self, key: u32) {
        self.write_u64(u64::from(key));
    }
}

/// A map from frames (or other small integer keys) to `V`.
pub type FrameMap<K, V> = HashMap<K, V, BuildHasherDefault<FrameHasher>>;

/// A set of frames (or other small integer keys).
pub type FrameSet<K> = HashSet<K, BuildHasherDefault<FrameHasher>>;
