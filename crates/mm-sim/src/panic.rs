//! Guest panics in-process: a panic of the MM library while the sim runs it is caught and
//! reported like a panic the guest sends under KVM (file, line, column and message), not as a
//! crash of the VMM.

use mm_driver::RunError;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

/// Where and why the MM panicked.
struct Caught {
    file: String,
    line: u32,
    column: u32,
    message: String,
}

thread_local! {
    /// Whether this thread is running MM code for the sim now.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    static CAUGHT: RefCell<Option<Caught>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs, once per process, a panic hook that records panics of threads that are
/// [`catch`]ing and passes every other panic to the hook that was there before.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !CATCHING.get() {
                return previous(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "<non-string panic payload>".into());
            let (file, line, column) = info
                .location()
                .map(|l| (l.file().to_string(), l.line(), l.column()))
                .unwrap_or_else(|| ("<unknown>".into(), 0, 0));
            CAUGHT.set(Some(Caught {
                file,
                line,
                column,
                message,
            }));
        }));
    });
}

/// Runs `f` (MM code); a panic in it becomes [`RunError::GuestPanic`].
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, RunError> {
    install_hook();
    // Catches nest (an operation's inside a round's): the outer one still catches after.
    let outer = CATCHING.replace(true);
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(outer);
    result.map_err(|_| {
        let caught = CAUGHT.take().unwrap_or(Caught {
            file: "<unknown>".into(),
            line: 0,
            column: 0,
            message: "panic without a recorded location".into(),
        });
        RunError::GuestPanic {
            message: caught.message,
            file: caught.file,
            line: caught.line.into(),
            column: caught.column.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_guest_panic_with_its_location() {
        let err = catch(|| -> u32 { panic!("frame {:#x} freed twice", 0x5000) }).unwrap_err();
        match err {
            RunError::GuestPanic {
                message,
                file,
                line,
                ..
            } => {
                assert_eq!(message, "frame 0x5000 freed twice");
                assert!(file.ends_with("panic.rs") && line > 0, "{file}:{line}");
            }
            other => panic!("expected a guest panic, got {other}"),
        }
        assert_eq!(catch(|| 7).unwrap(), 7, "no panic, no error");
    }
}
