//! The static build's allocator.
//!
//! A musl build (the static one, which runs on any Linux of its machine) would otherwise allocate
//! with musl's `malloc`, which keeps one lock for every thread and maps each large block afresh:
//! measured here, it made pipelined calls 3x and 1 MiB messages about 10x slower than the glibc
//! build. With the default feature `static-allocator`, a musl build's global allocator is
//! instead dlmalloc (the `dlmalloc` crate, pure Rust: the rust-lld cross builds need no C
//! compiler), whose large blocks stay in the heap for the next message.
//!
//! Every context may `fork()` while other threads allocate, and the forked child then allocates
//! on the one thread it has: a lock another thread held at the instant of the fork would stay
//! held there for ever. dlmalloc's `enable_alloc_after_fork` registers `pthread_atfork`
//! handlers that take its lock before the fork and release it on both sides, so the child
//! inherits the heap in a consistent state and unlocked; [`ForkSafe`] calls it before its first
//! allocation. (`fork(2)` through libc runs those handlers; the library forks only that way.)

#[cfg(all(target_env = "musl", feature = "static-allocator"))]
#[global_allocator]
static ALLOCATOR: imp::ForkSafe = imp::ForkSafe;

#[cfg(all(target_env = "musl", feature = "static-allocator"))]
mod imp {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicBool, Ordering};

    use dlmalloc::GlobalDlmalloc;

    /// dlmalloc's global heap, with its fork handlers registered before the first allocation.
    pub(super) struct ForkSafe;

    /// Whether the fork handlers are registered.
    static READY: AtomicBool = AtomicBool::new(false);

    #[cold]
    fn register_fork_handlers() {
        // SAFETY: this runs before this allocator hands out its first block (every allocating
        // entry point below checks READY first). The function takes dlmalloc's lock, registers
        // the handlers once under it (a second caller finds them registered), and releases it;
        // `pthread_atfork` allocates with libc's malloc, never with this allocator.
        unsafe { dlmalloc::enable_alloc_after_fork() };
        READY.store(true, Ordering::Release);
    }

    #[inline]
    fn ready() {
        if !READY.load(Ordering::Acquire) {
            register_fork_handlers();
        }
    }

    // SAFETY: every method forwards to GlobalDlmalloc, which upholds GlobalAlloc's contract;
    // `ready` only registers the fork handlers and allocates nothing from this allocator.
    unsafe impl GlobalAlloc for ForkSafe {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ready();
            // SAFETY: the caller's obligations are GlobalDlmalloc's.
            unsafe { GlobalDlmalloc.alloc(layout) }
        }

        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            ready();
            // SAFETY: as for alloc.
            unsafe { GlobalDlmalloc.alloc_zeroed(layout) }
        }

        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from this allocator (the caller's obligation), hence from
            // GlobalDlmalloc.
            unsafe { GlobalDlmalloc.dealloc(ptr, layout) }
        }

        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: as for dealloc; a block to reallocate means the handlers are registered.
            unsafe { GlobalDlmalloc.realloc(ptr, layout, new_size) }
        }
    }
}
