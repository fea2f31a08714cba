//! Switching between simulated CPUs: each CPU with work in a round runs it as a stackful
//! coroutine (corosensei), and a machine call deep inside the MM suspends the CPU that makes it
//! back to the scheduler's loop. The coroutine's yielder is reached from there through a
//! thread-local pointer, set only while that coroutine runs: this module is the sim's one
//! `unsafe` block.
#![allow(unsafe_code)]

use corosensei::stack::DefaultStack;
use corosensei::{CoroutineResult, ScopedCoroutine, Yielder};
use std::cell::Cell;
use std::ptr;

/// What a CPU's coroutine yields and is resumed with: nothing (the scheduler's state says why).
pub type CpuYielder = Yielder<(), ()>;

/// One simulated CPU's work in a round, on its own stack.
pub type CpuCoroutine<'a> = ScopedCoroutine<'a, (), (), (), &'a mut DefaultStack>;

/// Bytes of each CPU's coroutine stack: the MM's deepest path (a fork of a large space) uses a
/// few KiB; the rest is margin (untouched pages cost nothing).
pub const STACK_SIZE: usize = 1 << 20;

thread_local! {
    /// The yielder of the coroutine running on this thread now; null outside every coroutine.
    static RUNNING: Cell<*const CpuYielder> = const { Cell::new(ptr::null()) };
}

/// A stack for one CPU's coroutines (reused round after round).
pub fn stack() -> DefaultStack {
    match DefaultStack::new(STACK_SIZE) {
        Ok(stack) => stack,
        Err(e) => panic!("cannot map a {STACK_SIZE}-byte stack for a simulated CPU: {e}"),
    }
}

/// The body of a CPU's coroutine: `work` with `yielder` reachable by [`suspend`].
pub fn body(yielder: &CpuYielder, work: impl FnOnce()) {
    RUNNING.set(yielder);
    work();
    RUNNING.set(ptr::null());
}

/// Suspends the coroutine that runs now, back to the loop that resumed it; returns when the
/// loop resumes it. Outside every coroutine (a CPU served by the scheduler's loop) it does
/// nothing.
pub fn suspend() {
    let yielder = RUNNING.get();
    if yielder.is_null() {
        return;
    }
    // SAFETY: `RUNNING` is non-null only between `body` setting it to the yielder of the
    // coroutine it runs in and that coroutine leaving the stack: `resume` clears it whenever the
    // coroutine suspends, returns or unwinds, and this function sets it back only once the same
    // coroutine runs again. So we are on that coroutine's stack, inside `body`, whose yielder
    // argument lives for the whole body: the reference is valid, and used on its own thread.
    let yielder = unsafe { &*yielder };
    yielder.suspend(());
    RUNNING.set(yielder);
}

/// Clears the running yielder when the loop gets control back, however it does.
struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        RUNNING.set(ptr::null());
    }
}

/// Runs `coroutine` until it suspends (false) or is done (true). A panic in it goes on in the
/// caller.
pub fn resume(
    coroutine: &mut corosensei::ScopedCoroutineRef<'_, (), (), (), &mut DefaultStack>,
) -> bool {
    let _clear = Clear;
    matches!(coroutine.resume(()), CoroutineResult::Return(()))
}
