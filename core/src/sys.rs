//! Every libc call of this crate, behind safe functions.
//!
//! Above this module the crate sees only `OwnedFd` / `BorrowedFd` and `io::Result`. Every fd created
//! here is close-on-exec and (where a caller asks) non-blocking in the very call that creates it,
//! because another thread may fork and exec a child at any moment (see `socket(2)`,
//! `SOCK_CLOEXEC`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A connected `AF_UNIX` stream socket pair, both ends `SOCK_CLOEXEC`, and `SOCK_NONBLOCK` when
/// `nonblocking` is set.
pub(crate) fn socketpair(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    let mut ty = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    if nonblocking {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: `fds` is a valid two-element array for socketpair(2) to fill.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe `(read, write)`, both ends `O_CLOEXEC | O_NONBLOCK`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2(2) to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe `(read, write)`, both ends `O_CLOEXEC`, only the read end `O_NONBLOCK`: the write end
/// becomes a process's stdout or stderr, where user code expects blocking writes.
pub(crate) fn pipe_blocking_write() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2(2) to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    set_nonblocking(r.as_fd(), true)?;
    Ok((r, w))
}

/// Make `target` (0, 1 or 2) refer to what `fd` refers to (`dup2(2)`); the new descriptor is
/// inherited across `exec`.
pub(crate) fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on a borrowed open fd; `target` is a standard descriptor we replace on purpose
    // and that no OwnedFd owns.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    Ok(())
}

/// Open `/dev/null` read-write, close-on-exec.
pub(crate) fn open_devnull() -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path literal; open returns a new fd we then own.
    let fd = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Borrow standard descriptor `fd` (0, 1 or 2).
pub(crate) fn borrow_std(fd: RawFd) -> BorrowedFd<'static> {
    debug_assert!((0..=2).contains(&fd));
    // SAFETY: in a child the standard descriptors are open for the life of the process (the
    // parent provides them) and are only ever replaced with dup2, never closed.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Keep freed bulk buffers in the heap instead of handing them back to the kernel after every
/// message: glibc's defaults return any free block over ~2 MiB at once, so each bulk message
/// would fault its pages in afresh (measured: page faults were 90% of a child's time moving
/// 1 MiB messages). Applied in children only, which this library owns; a master's allocator is
/// its program's business.
pub(crate) fn tune_malloc_for_bulk() {
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

/// `setsid(2)`: leave the parent's session and process group.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() }).map(|_| ())
}

/// Ignore `SIGPIPE`, as Rust's runtime does before `main` (a child may start before it).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Set the calling thread's name as shown by `ps -o comm` (15 bytes at most; `PR_SET_NAME`).
pub(crate) fn set_thread_title(title: &str) {
    let mut buf = [0u8; 16];
    let n = title.len().min(15);
    buf[..n].copy_from_slice(&title.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `buf`.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

/// End the process at once with `status`, running no destructors or `atexit` handlers (in a
/// forked child they belong to the parent, whose memory it shares).
pub(crate) fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and never returns.
    unsafe { libc::_exit(status) }
}

/// Called by the loader before `main`, in every process that links this crate: a process
/// started as a child (argv\[1\] is the child marker) becomes one here and never returns, so
/// test binaries built by `cargo test`, whose `main` belongs to the test harness, work as
/// children too.
///
/// The arguments come from `/proc/self/cmdline`, not from the `(argc, argv, envp)` that glibc
/// passes to `.init_array` functions: that is a glibc extension, and a static build with another
/// libc (musl), the natural thing to ship to other hosts, calls them with no arguments. Where
/// `/proc` is not mounted this does nothing, and `main` calling [`init`](crate::init) (which
/// reads std's arguments) enters child mode instead.
extern "C" fn child_ctor() {
    if is_child_cmdline(&std::fs::read("/proc/self/cmdline").unwrap_or_default()) {
        crate::child::run_exec_child();
    }
}

/// Whether a NUL-separated command line has the child marker as its second word.
fn is_child_cmdline(cmdline: &[u8]) -> bool {
    cmdline.split(|&b| b == 0).nth(1) == Some(crate::child::CHILD_MARKER.as_bytes())
}

/// `.init_array` entries run before `main` (with any libc: ELF's own initialisation order).
#[used]
#[link_section = ".init_array"]
static CHILD_CTOR: extern "C" fn() = child_ctor;

/// Duplicate `fd` to a new close-on-exec descriptor (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a borrowed, open fd; F_DUPFD_CLOEXEC returns a new fd we then own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn set_flag(fd: RawFd, get: libc::c_int, set: libc::c_int, flag: libc::c_int, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_GETFD on an fd the caller keeps open for the duration of the call.
    let old = cvt(unsafe { libc::fcntl(fd, get) })?;
    let new = if on { old | flag } else { old & !flag };
    if new != old {
        // SAFETY: as above; only flag bits change.
        cvt(unsafe { libc::fcntl(fd, set, new) })?;
    }
    Ok(())
}

/// Set or clear `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_flag(fd.as_raw_fd(), libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK, on)
}

/// Set or clear `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_flag(fd.as_raw_fd(), libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC, on)
}

/// Whether `FD_CLOEXEC` is set on `fd`.
#[cfg(test)]
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFD on a borrowed open fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// Whether `O_NONBLOCK` is set on `fd`.
#[cfg(test)]
pub(crate) fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: F_GETFL on a borrowed open fd.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// `read(2)` into `buf`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    cvt_size(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// `read(2)` of up to `max` bytes appended to `vec`'s spare capacity (reserving it if needed),
/// without initialising the memory first.
pub(crate) fn read_into_spare(fd: BorrowedFd<'_>, vec: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    vec.reserve(max);
    let spare = vec.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: `spare` is valid for writes of `want` bytes; read(2) writes at most that many.
    let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) })?;
    // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
    unsafe { vec.set_len(vec.len() + n) };
    Ok(n)
}

/// A `Vec` with room for `cap` bytes. Large ones are marked `MADV_HUGEPAGE`, so filling them
/// costs one page fault per 2 MiB instead of one per 4 KiB (bulk messages are many MiB, and
/// glibc returns such blocks to the kernel on every free, so each one faults afresh).
pub(crate) fn alloc_bytes(cap: usize) -> Vec<u8> {
    const HUGE: usize = 2 << 20;
    let v: Vec<u8> = Vec::with_capacity(cap);
    if cap >= 2 * HUGE {
        let start = (v.as_ptr() as usize).next_multiple_of(HUGE);
        let end = (v.as_ptr() as usize + cap) & !(HUGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the allocation we own; madvise only changes how
            // the kernel backs those pages, never their contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// `write(2)` from `buf`.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

/// `writev(2)` from `bufs` (at most `IOV_MAX` of them are used).
pub(crate) fn writev(fd: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(1024) as libc::c_int;
    // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, and every slice outlives the call.
    cvt_size(unsafe { libc::writev(fd.as_raw_fd(), bufs.as_ptr().cast(), n) })
}

/// Wait until `fd` is readable or `deadline` passes, with `ppoll(2)` so the timeout has
/// nanosecond resolution (no rounding down to a busy spin). Returns whether it became readable;
/// `EINTR` is reported as `Ok(false)` so callers re-check their deadline and loop.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts;
    let tsp = match deadline {
        None => std::ptr::null(),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            ts =
                libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
            &ts as *const libc::timespec
        }
    };
    // SAFETY: `pfd` is one valid pollfd; `tsp` is null or points at `ts`, alive for the call.
    let ret = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    Ok(ret > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_marker_is_read_from_the_second_word_of_the_command_line() {
        assert!(is_child_cmdline(b"/x/prog\0--mitogen-child\0"));
        assert!(!is_child_cmdline(b"/x/prog\0--other\0--mitogen-child\0"));
        assert!(!is_child_cmdline(b"/x/prog\0"));
        assert!(!is_child_cmdline(b""));
    }
}
