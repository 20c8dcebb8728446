//! The library's own threads (a broker's, a child's watchdog), started so that a forked child
//! can start them too, and confirmed running before [`spawn`] returns.
//!
//! # Why not always `std::thread`
//!
//! Each thread std starts registers its guard page in a table of std's own, under a
//! process-wide lock, as its first act (`stack_overflow::thread_info`, before the thread's
//! closure runs), and takes that lock again as it ends. After `fork(2)` only the forking thread
//! exists in the child: if another thread of the parent was starting or ending a thread at that
//! instant (a thread pool does it all the time), the lock is held for ever in the child, and
//! every thread std starts there waits on it before its first instruction: a forked child with
//! no broker (nothing is read, every call waits for ever) and no watchdog (it outlives its
//! parent).
//!
//! So in a forked process ([`globals::is_forked`](crate::globals)) these threads are started
//! with `pthread_create(3)` and a trampoline of this module's, which takes no lock: it names the
//! thread (`prctl(PR_SET_NAME)`), says it runs, and calls the closure under `catch_unwind`.
//! What is given up there, and only there: std's "has overflowed its stack" message (an
//! overflow is a plain `SIGSEGV`), and `std::thread::current().name()` (the kernel's thread
//! name is set: `ps`, `top` and the profiler see it). Elsewhere std starts them, as any thread.
//!
//! Either way [`spawn`] returns only once the thread runs the caller's code, or fails after
//! [`START_TIMEOUT`]: a context whose broker did not start is never reported up and running.
//! A thread started by a program's own code in a forked child still goes through std; the
//! `fork` module of `mitogen_parent` says what that means.

use std::cell::Cell;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// How long [`spawn`] waits for the new thread to run. A thread that has not run by then is
/// taken for one that never will (the start is abandoned and an error returned): on a sane
/// machine a thread runs within milliseconds, however loaded.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A thread started by [`spawn`]: join it, or drop it to let it run on detached.
#[derive(Debug)]
pub struct Thread {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Std(std::thread::JoinHandle<()>),
    Raw(libc::pthread_t),
    Done,
}

// SAFETY: a `pthread_t` is an identifier any thread may join or detach (it is a pointer on
// musl, hence not `Send` by itself); `Thread` joins or detaches it exactly once.
unsafe impl Send for Thread {}
// SAFETY: as above; `&Thread` gives no access to the identifier.
unsafe impl Sync for Thread {}

/// The closure and what the trampoline needs, handed to the new thread through a raw pointer.
struct Start {
    name: String,
    body: Box<dyn FnOnce() + Send + 'static>,
}

thread_local! {
    /// Test hook (see [`hang_thread_starts_in_forks_of_this_thread`]): a thread-local of the
    /// forking thread, so the forked child's main thread, which is its copy, sees it, and no
    /// other test's fork does.
    static HANG_IN_FORKS: Cell<bool> = const { Cell::new(false) };
}

/// Test hook, not part of the API: while set on the calling thread, children that this thread
/// forks start their own threads (their broker first) as if the start never ran: the thread
/// waits for ever before its first instruction, as a thread of a forked child did before
/// this module, when another thread of the parent held std's thread-start lock at the fork.
#[doc(hidden)]
pub fn hang_thread_starts_in_forks_of_this_thread(on: bool) {
    HANG_IN_FORKS.with(|h| h.set(on));
}

/// An identifier of the calling thread, unique among this process's running threads
/// (`pthread_self(3)`; unlike `std::thread::current()` it allocates nothing).
pub fn current_id() -> usize {
    // SAFETY: pthread_self(3) has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// Start `body` on a new thread named `name` (at most 15 bytes reach the kernel) with a stack
/// of `stack_size` bytes, and wait until it runs. See the module docs for how.
///
/// # Errors
/// The thread cannot be created, or it did not run within [`START_TIMEOUT`] (then it is
/// detached: if it ever runs, it returns at once without calling `body`).
pub fn spawn(name: &str, stack_size: usize, body: impl FnOnce() + Send + 'static) -> io::Result<Thread> {
    let (started_r, started_w) = super::pipe(true)?;
    let hang = crate::globals::is_forked() && HANG_IN_FORKS.with(Cell::get);
    let body = move || {
        if hang {
            // The test hook: a thread that never gets to run its closure.
            loop {
                // SAFETY: pause(2) has no preconditions; it returns only on a signal.
                unsafe { libc::pause() };
            }
        }
        if !says_started(started_w) {
            return; // abandoned by `spawn`: the caller has moved on without this thread
        }
        body()
    };
    let thread = if crate::globals::is_forked() {
        spawn_raw(name, stack_size, Box::new(body))?
    } else {
        // An explicit stack size: otherwise std reads RUST_MIN_STACK under the environment
        // lock.
        let handle = std::thread::Builder::new().name(name.into()).stack_size(stack_size).spawn(body)?;
        Thread { kind: Kind::Std(handle) }
    };
    let deadline = Instant::now() + START_TIMEOUT;
    if super::wait_readable(started_r.as_fd(), Some(deadline))? {
        return Ok(thread);
    }
    // Closing the read end makes a late start's write fail: that thread returns unrun.
    drop(started_r);
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("the {name} thread did not run within {START_TIMEOUT:?}")))
}

/// The new thread's first act: one byte on the pipe `spawn` waits on. False when nobody is
/// waiting any more (`spawn` gave up on this thread).
fn says_started(w: OwnedFd) -> bool {
    super::write(w.as_fd(), b"s").is_ok_and(|n| n == 1)
}

/// `pthread_create(3)` with [`trampoline`], joinable.
fn spawn_raw(name: &str, stack_size: usize, body: Box<dyn FnOnce() + Send + 'static>) -> io::Result<Thread> {
    let start = Box::into_raw(Box::new(Start { name: name.to_owned(), body }));
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let mut id = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
    // SAFETY: the attribute object is initialised before use and destroyed after; the stack
    // size is rounded up to what the C library accepts; `start` is a valid pointer that the new
    // thread alone owns from a successful `pthread_create` on, and this function frees it again
    // when there is no such thread.
    let rc = unsafe {
        let attr = attr.as_mut_ptr();
        let rc = libc::pthread_attr_init(attr);
        if rc != 0 {
            drop(Box::from_raw(start));
            return Err(io::Error::from_raw_os_error(rc));
        }
        let size = stack_size.max(libc::PTHREAD_STACK_MIN).next_multiple_of(page_size());
        let mut rc = libc::pthread_attr_setstacksize(attr, size);
        if rc == 0 {
            rc = libc::pthread_create(id.as_mut_ptr(), attr, trampoline, start.cast());
        }
        libc::pthread_attr_destroy(attr);
        if rc != 0 {
            drop(Box::from_raw(start));
        }
        rc
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: initialised by the successful pthread_create above.
    Ok(Thread { kind: Kind::Raw(unsafe { id.assume_init() }) })
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096)
}

/// The raw thread's start: name it, run the closure, report a panic as a non-null result. No
/// unwind leaves it (`catch_unwind`), and it takes no lock of std's or the C library's.
extern "C" fn trampoline(start: *mut c_void) -> *mut c_void {
    // SAFETY: `start` is the pointer `spawn_raw` leaked for this thread alone.
    let start = unsafe { Box::from_raw(start.cast::<Start>()) };
    let Start { name, body } = *start;
    super::set_thread_title(&name);
    drop(name);
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => std::ptr::null_mut(),
        Err(_) => std::ptr::NonNull::<c_void>::dangling().as_ptr(),
    }
}

impl Thread {
    /// Wait for the thread to end.
    ///
    /// # Errors
    /// The thread panicked (its panic was reported by the panic hook as it happened): std's
    /// payload, or for a thread started without std a `&str` saying so.
    pub fn join(mut self) -> std::thread::Result<()> {
        match std::mem::replace(&mut self.kind, Kind::Done) {
            Kind::Std(handle) => handle.join(),
            Kind::Raw(id) => {
                let mut result = std::ptr::null_mut();
                // SAFETY: a joinable thread of this process, joined once (`kind` is now Done).
                let rc = unsafe { libc::pthread_join(id, &mut result) };
                if rc == 0 && result.is_null() {
                    Ok(())
                } else {
                    Err(Box::new("the thread panicked"))
                }
            }
            Kind::Done => Ok(()),
        }
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Kind::Raw(id) = std::mem::replace(&mut self.kind, Kind::Done) {
            // SAFETY: a joinable thread of this process, not joined: its resources are freed
            // when it ends.
            unsafe { libc::pthread_detach(id) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_thread_runs_before_spawn_returns_and_is_joined() {
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let t = spawn("unit-std", 64 << 10, move || r.store(true, Ordering::SeqCst)).unwrap();
        t.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_raw_thread_is_named_joined_and_reports_a_panic() {
        let name = Arc::new(std::sync::Mutex::new(String::new()));
        let n = name.clone();
        let t = spawn_raw(
            "unit-raw",
            64 << 10,
            Box::new(move || {
                let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
                *n.lock().unwrap() = comm.trim_end().to_owned();
            }),
        )
        .unwrap();
        t.join().unwrap();
        assert_eq!(*name.lock().unwrap(), "unit-raw");
        let panicking = spawn_raw("unit-panic", 64 << 10, Box::new(|| panic!("expected in unit-panic"))).unwrap();
        assert!(panicking.join().is_err(), "a panic is reported by join");
    }
}
