//! Descriptors: pipes, socket pairs, `dup`, flags, reads and writes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::socket::{AddressFamily, SockFlag, SockType};
use nix::sys::stat::Mode;

use super::io;

/// The largest write a pipe performs atomically (`PIPE_BUF`).
pub const PIPE_BUF: usize = libc::PIPE_BUF;

/// A connected `AF_UNIX` stream socket pair, both ends close-on-exec, and non-blocking when
/// `nonblocking` is set (a child's end must block until its own runtime takes it).
pub fn socketpair(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    nix::sys::socket::socketpair(AddressFamily::Unix, SockType::Stream, None, flags).map_err(io)
}

/// A pipe `(read, write)`, both ends close-on-exec, and non-blocking when `nonblocking` is set.
pub fn pipe(nonblocking: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut flags = OFlag::O_CLOEXEC;
    if nonblocking {
        flags |= OFlag::O_NONBLOCK;
    }
    nix::unistd::pipe2(flags).map_err(io)
}

/// A pipe `(read, write)`, both ends close-on-exec, only the read end non-blocking: the write
/// end becomes a process's stdout or stderr, where user code expects blocking writes.
pub fn pipe_blocking_write() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe(false)?;
    set_nonblocking(r.as_fd(), true)?;
    Ok((r, w))
}

/// A pseudo-terminal `(master, slave)`, both close-on-exec, echo off on the slave; with `raw`
/// the slave is in raw mode (no line editing, no CR/LF translation, no signals from bytes), so
/// binary data crosses unchanged.
pub fn openpty(raw: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::os::fd::IntoRawFd;
    // Both ends close-on-exec from the calls that open them (openpty(3) cannot say so).
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let ptm = nix::pty::posix_openpt(flags).map_err(io)?;
    nix::pty::grantpt(&ptm).map_err(io)?;
    nix::pty::unlockpt(&ptm).map_err(io)?;
    let slave_path = nix::pty::ptsname_r(&ptm).map_err(io)?;
    // SAFETY: posix_openpt returned this descriptor, owned by `ptm` until now.
    let master = unsafe { OwnedFd::from_raw_fd(ptm.into_raw_fd()) };
    let slave = nix::fcntl::open(slave_path.as_str(), flags, Mode::empty()).map_err(io)?;
    // SAFETY: open returned this descriptor, owned by no one else.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    let mut t = tcgetattr(&slave).map_err(io)?;
    if raw {
        cfmakeraw(&mut t);
    }
    t.local_flags.remove(LocalFlags::ECHO | LocalFlags::ECHONL);
    tcsetattr(&slave, SetArg::TCSANOW, &t).map_err(io)?;
    Ok((master, slave))
}

/// Whether `fd` is a terminal.
pub fn isatty(fd: BorrowedFd<'_>) -> bool {
    nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false)
}

/// Make `target` refer to what `fd` refers to (`dup2(2)`); the new descriptor is inherited
/// across `exec`. `target` is a standard descriptor (0, 1 or 2) that no `OwnedFd` owns.
pub fn dup2(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    nix::unistd::dup2(fd.as_raw_fd(), target).map(drop).map_err(io)
}

/// Duplicate `fd` to a new close-on-exec descriptor (`F_DUPFD_CLOEXEC`).
pub fn dup_cloexec(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(0)).map_err(io)?;
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Open `/dev/null` read-write, close-on-exec.
pub fn open_devnull() -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(io)?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Borrow standard descriptor `fd` (0, 1 or 2).
pub fn borrow_std(fd: RawFd) -> BorrowedFd<'static> {
    debug_assert!((0..=2).contains(&fd));
    // SAFETY: in a child the standard descriptors are open for the life of the process (the
    // parent provides them) and are only ever replaced with dup2, never closed.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Set or clear `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let old = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io)?);
    let new = if on { old | OFlag::O_NONBLOCK } else { old - OFlag::O_NONBLOCK };
    if new != old {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(new)).map_err(io)?;
    }
    Ok(())
}

/// Set or clear `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let old = FdFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).map_err(io)?);
    let new = if on { old | FdFlag::FD_CLOEXEC } else { old - FdFlag::FD_CLOEXEC };
    if new != old {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(new)).map_err(io)?;
    }
    Ok(())
}

/// Whether `FD_CLOEXEC` is set on `fd`.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = FdFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).map_err(io)?);
    Ok(flags.contains(FdFlag::FD_CLOEXEC))
}

/// Whether `O_NONBLOCK` is set on `fd`.
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = OFlag::from_bits_retain(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io)?);
    Ok(flags.contains(OFlag::O_NONBLOCK))
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd.as_raw_fd(), buf).map_err(io)
}

/// `read(2)` of up to `max` bytes appended to `vec`'s spare capacity (reserving it if needed),
/// without initialising the memory first. libc, not nix: nix reads only into initialised
/// slices, and zeroing every bulk buffer first costs a pass over it.
pub fn read_into_spare(fd: BorrowedFd<'_>, vec: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    vec.reserve(max);
    let spare = vec.spare_capacity_mut();
    let want = spare.len().min(max);
    // SAFETY: `spare` is valid for writes of `want` bytes; read(2) writes at most that many.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: read(2) initialised the first `n` bytes of the spare capacity.
    unsafe { vec.set_len(vec.len() + n as usize) };
    Ok(n as usize)
}

/// `write(2)` from `buf`.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    nix::unistd::write(fd, buf).map_err(io)
}

/// `writev(2)` from `bufs` (at most `IOV_MAX`, 1024, of them are used).
pub fn writev(fd: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    nix::sys::uio::writev(fd, &bufs[..bufs.len().min(1024)]).map_err(io)
}

/// Write `text` to fd 2 with one `write(2)`, taking no lock (std's stderr lock may be held by
/// a thread that does not exist in a forked child).
pub fn write_stderr(text: &str) {
    let _ = write(borrow_std(2), text.as_bytes());
}

/// In a forked child: replace every descriptor from 3 up except `keep` with `/dev/null`, so no
/// copy of the parent's streams (sockets to other children, the poller) keeps a peer from
/// seeing EOF, while every number stays taken: code of the parent's (a logger writing to its
/// file) that still writes to one writes to `/dev/null`, never to a socket the child opens
/// later under the same number. Falls back to closing them when `/proc` is not mounted.
pub fn null_fds_except(keep: RawFd) {
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => return close_fds_except(keep),
    };
    let Ok(null) = open_devnull() else { return close_fds_except(keep) };
    let null_raw = null.as_raw_fd();
    for fd in open.into_iter().filter(|&fd| fd > 2 && fd != keep && fd != null_raw) {
        // Only descriptors still open (the listing's own is closed by now). dup3 replaces the
        // number atomically; every OwnedFd of the parent's that refers to it will only close it.
        if fcntl(fd, FcntlArg::F_GETFD).is_ok() {
            let _ = nix::unistd::dup3(null_raw, fd, OFlag::O_CLOEXEC);
        }
    }
}

/// In a forked child: close every descriptor from 3 up except `keep` (`close_range(2)`, which
/// nix does not wrap).
pub fn close_fds_except(keep: RawFd) {
    // SAFETY: close_range only closes descriptors; the caller owns the process's fd table (a
    // freshly forked child with one thread) and forgets every OwnedFd it cannot vouch for.
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, (keep - 1) as u32, 0u32);
        }
        libc::syscall(libc::SYS_close_range, (keep + 1) as u32, u32::MAX, 0u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_descriptor_is_cloexec_and_nonblocking_as_asked() {
        for nonblocking in [false, true] {
            let (a, b) = socketpair(nonblocking).unwrap();
            let (r, w) = pipe(nonblocking).unwrap();
            for fd in [a.as_fd(), b.as_fd(), r.as_fd(), w.as_fd()] {
                assert!(is_cloexec(fd).unwrap());
                assert_eq!(is_nonblocking(fd).unwrap(), nonblocking);
            }
        }
        let (r, w) = pipe_blocking_write().unwrap();
        assert!(is_nonblocking(r.as_fd()).unwrap() && !is_nonblocking(w.as_fd()).unwrap());
        assert!(is_cloexec(open_devnull().unwrap().as_fd()).unwrap());
        assert!(is_cloexec(dup_cloexec(r.as_fd()).unwrap().as_fd()).unwrap());
        let (master, slave) = openpty(true).unwrap();
        assert!(is_cloexec(master.as_fd()).unwrap() && is_cloexec(slave.as_fd()).unwrap());
        assert!(isatty(slave.as_fd()));
    }

    #[test]
    fn flags_set_and_clear() {
        let (r, _w) = pipe(false).unwrap();
        set_nonblocking(r.as_fd(), true).unwrap();
        assert!(is_nonblocking(r.as_fd()).unwrap());
        set_cloexec(r.as_fd(), false).unwrap();
        assert!(!is_cloexec(r.as_fd()).unwrap());
    }

    #[test]
    fn read_into_spare_appends_without_losing_what_was_there() {
        let (r, w) = pipe(false).unwrap();
        write(w.as_fd(), b"world").unwrap();
        let mut v = b"hello ".to_vec();
        assert_eq!(read_into_spare(r.as_fd(), &mut v, 64).unwrap(), 5);
        assert_eq!(v, b"hello world");
        writev(w.as_fd(), &[io::IoSlice::new(b"a"), io::IoSlice::new(b"bc")]).unwrap();
        let mut buf = [0u8; 8];
        let n = read(r.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"abc");
    }
}
