//! Every libc call of this crate, behind safe functions: sockets for children, process ids as
//! pidfds, `fork`, and descriptor clean-up in a forked child.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A blocking, close-on-exec `AF_UNIX` stream socket pair: the child's end must block until its
/// own runtime makes it non-blocking.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for socketpair(2) to fill.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair succeeded; both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec pipe `(read, write)` whose write end blocks (it becomes a child's stderr).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2(2) to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded; both fds are new and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `pidfd_open(2)`: a close-on-exec descriptor that becomes readable when `pid` exits.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the syscall takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd owned by nobody else; pidfds are always close-on-exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Send `signal` to the process behind `pidfd` (no risk of hitting a reused pid).
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the syscall takes an fd, a signal number, a null siginfo and flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), signal, std::ptr::null::<u8>(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `waitpid(pid, WNOHANG)`: `Some(raw status)` once the child has exited and is reaped.
pub(crate) fn try_wait(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match r {
            0 => return Ok(None),
            r if r == pid => return Ok(Some(status)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Wait at most `timeout` for `fd` to become readable.
pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // Round up: a sub-millisecond remainder must not become a zero timeout (a busy spin).
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    match r {
        r if r < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        r => Ok(r > 0),
    }
}

/// Describe a raw wait status the way a shell would.
pub(crate) fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        match nix::sys::signal::Signal::try_from(sig) {
            Ok(name) => format!("killed by signal {sig} ({name})"),
            Err(_) => format!("killed by signal {sig}"),
        }
    } else {
        format!("wait status {status:#x}")
    }
}

/// The outcome of [`fork`].
pub(crate) enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork(2)`. In the child only the calling thread exists; the caller must not return into code
/// that expects the parent's other threads, and must end with `_exit`.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions; the hazards (locks held by threads that
    // do not exist in the child) are handled by the caller, which touches only fresh state.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// In a forked child: replace every descriptor from 3 up except `keep` with `/dev/null`, so no
/// copy of the parent's streams (sockets to other children, the poller) keeps a peer from
/// seeing EOF, while every number stays taken: code of the parent's (a logger writing to its
/// file) that still writes to one writes to `/dev/null`, never to a socket the child opens
/// later under the same number. Falls back to closing them when `/proc` is not mounted.
pub(crate) fn null_fds_except(keep: RawFd) {
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => return close_fds_except(keep),
    };
    // SAFETY: a NUL-terminated path literal; open returns a new fd or -1.
    let null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if null < 0 {
        return close_fds_except(keep);
    }
    for fd in open.into_iter().filter(|&fd| fd > 2 && fd != keep && fd != null) {
        // SAFETY: F_GETFD only asks whether `fd` is open (the listing's own fd is closed by now);
        // dup3 atomically replaces an fd this freshly forked, one-thread child owns, and which
        // every OwnedFd of the parent's that refers to it will only ever close.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) >= 0 {
                libc::dup3(null, fd, libc::O_CLOEXEC);
            }
        }
    }
    // SAFETY: `null` was opened above and is owned by nobody else.
    unsafe { libc::close(null) };
}

/// Close every descriptor from 3 up except `keep`.
fn close_fds_except(keep: RawFd) {
    // SAFETY: close_range only closes descriptors; the caller owns the process's fd table (a
    // freshly forked child with one thread) and forgets every OwnedFd it cannot vouch for.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

/// Write `text` to fd 2 with one `write(2)`, taking no lock (std's stderr lock may be held by
/// a thread that does not exist in a forked child).
pub(crate) fn write_stderr(text: &str) {
    // SAFETY: `text` is valid for reads of its length.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

/// End a forked child at once, running nothing of the parent's.
pub(crate) fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions and never returns.
    unsafe { libc::_exit(status) }
}

/// This user's login name, for default context names.
pub(crate) fn username() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| {
        // SAFETY: getuid has no preconditions.
        format!("uid{}", unsafe { libc::getuid() })
    })
}

/// This host's name.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for `buf.len()` bytes; gethostname NUL-terminates within it.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `dup2(2)` onto a standard descriptor.
pub(crate) fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on a borrowed open fd onto a standard descriptor no OwnedFd owns.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) })?;
    Ok(())
}
