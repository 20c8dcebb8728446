//! Every libc call of this crate, behind safe functions.
//!
//! Above this module the crate sees only `OwnedFd` / `BorrowedFd` and `io::Result`. Every fd created
//! here is close-on-exec and (where a caller asks) non-blocking in the very call that creates it,
//! because another thread may fork and exec a child at any moment (see `socket(2)`,
//! `SOCK_CLOEXEC`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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

/// Duplicate `fd` to a new close-on-exec descriptor (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a borrowed, open fd; F_DUPFD_CLOEXEC returns a new fd we then own.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn set_flag(
    fd: RawFd,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
    on: bool,
) -> io::Result<()> {
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
    set_flag(
        fd.as_raw_fd(),
        libc::F_GETFL,
        libc::F_SETFL,
        libc::O_NONBLOCK,
        on,
    )
}

/// Set or clear `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_flag(
        fd.as_raw_fd(),
        libc::F_GETFD,
        libc::F_SETFD,
        libc::FD_CLOEXEC,
        on,
    )
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
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts;
    let tsp = match deadline {
        None => std::ptr::null(),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
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
