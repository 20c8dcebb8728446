//! Allocation hints for bulk buffers.

use std::ptr::NonNull;

use nix::sys::mman::{madvise, MmapAdvise};

/// A `Vec` with room for `cap` bytes. Large ones are marked `MADV_HUGEPAGE`, so filling them
/// costs one page fault per 2 MiB instead of one per 4 KiB (bulk messages are many MiB, and
/// glibc returns such blocks to the kernel on every free, so each one faults afresh).
pub fn alloc_bytes(cap: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let v: Vec<u8> = Vec::with_capacity(cap);
    if cap >= 2 * HUGE {
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + cap) & !(HUGE - 1);
        if let (true, Some(addr)) = (end > start, NonNull::new(start as *mut libc::c_void)) {
            // SAFETY: [start, end) lies inside the allocation we own; madvise only changes how
            // the kernel backs those pages, never their contents or validity.
            let _ = unsafe { madvise(addr, end - start, MmapAdvise::MADV_HUGEPAGE) };
        }
    }
    v
}

/// Keep freed bulk buffers in the heap instead of handing them back to the kernel after every
/// message: glibc's defaults return any free block over ~2 MiB at once, so each bulk message
/// would fault its pages in afresh (measured: page faults were 90% of a child's time moving
/// 1 MiB messages). Applied in children only, which this library owns; a master's allocator is
/// its program's business. libc: `mallopt(3)` is glibc's, nix does not wrap it; with another
/// libc (musl, a static build) this does nothing.
pub fn tune_malloc_for_bulk() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
